//! Rubrics and verdicts: the prompt a grader answers, and reading its answer back.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};

use crate::db::jobs::{Claim, Finish, Outcome};
use crate::exec::template;

/// The built-in joke rubric.
pub const JOKE: &str = include_str!("../fixtures/rubrics/joke.txt");

#[derive(Debug, Clone)]
pub struct Rubric {
    pub id: i64,
    pub name: String,
    pub body: String,
    pub pass_field: Option<String>,
    pub score_field: Option<String>,
    pub scale: Option<(f64, f64)>,
    pub fields: Vec<String>,
}

impl Rubric {
    /// Reads a rubric file: optional header lines `pass: FIELD`, `score: FIELD`,
    /// `scale: MIN-MAX`, `fields: A, B`, then a line `---`, then the template.
    pub fn parse(name: &str, text: &str) -> Result<Rubric> {
        let (header, body) = match text.split_once("\n---\n") {
            Some((h, b)) if h.lines().all(|l| l.trim().is_empty() || l.contains(':')) => (h, b),
            _ => ("", text),
        };
        let mut r = Rubric {
            id: 0,
            name: name.to_string(),
            body: body.to_string(),
            pass_field: None,
            score_field: None,
            scale: None,
            fields: Vec::new(),
        };
        for (i, line) in header.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(':')
                .context(format!("rubric {name} line {}: expected KEY: value", i + 1))?;
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "pass" => r.pass_field = Some(v.to_ascii_uppercase()),
                "score" => r.score_field = Some(v.to_ascii_uppercase()),
                "scale" => {
                    let (lo, hi) = v
                        .split_once('-')
                        .context(format!("rubric {name}: scale must be MIN-MAX, e.g. 1-10"))?;
                    r.scale = Some((lo.trim().parse()?, hi.trim().parse()?));
                }
                "fields" => {
                    r.fields = v
                        .split(',')
                        .map(|f| f.trim().to_ascii_uppercase())
                        .filter(|f| !f.is_empty())
                        .collect()
                }
                other => {
                    anyhow::bail!("rubric {name} line {}: unknown header key {other:?}", i + 1)
                }
            }
        }
        for f in [&r.pass_field, &r.score_field].into_iter().flatten() {
            if !r.fields.contains(f) {
                r.fields.push(f.clone());
            }
        }
        if r.fields.is_empty() {
            anyhow::bail!("rubric {name} names no fields: add a header such as `pass: VERDICT` and `score: SCORE`, then `---`");
        }
        let names = template::placeholders(&r.body);
        if !names.iter().any(|n| n == "output") {
            anyhow::bail!("rubric {name} never shows the output to grade: put {{output}} in it");
        }
        Ok(r)
    }

    pub fn load(conn: &Connection, id: i64) -> Result<Rubric> {
        conn.query_row(
            "SELECT name, body, pass_field, score_field, scale_min, scale_max, fields FROM rubrics WHERE id = ?1",
            [id],
            |r| {
                let lo: Option<f64> = r.get(4)?;
                let hi: Option<f64> = r.get(5)?;
                let fields: String = r.get(6)?;
                Ok(Rubric {
                    id,
                    name: r.get(0)?,
                    body: r.get(1)?,
                    pass_field: r.get(2)?,
                    score_field: r.get(3)?,
                    scale: lo.zip(hi),
                    fields: serde_json::from_str(&fields).unwrap_or_default(),
                })
            },
        )
        .with_context(|| format!("rubric {id} is missing"))
    }

    /// Stores the rubric (once per name and body) and returns its id.
    pub fn save(&self, conn: &Connection) -> Result<i64> {
        let existing: Option<i64> = conn
            .query_row(
                "SELECT id FROM rubrics WHERE name = ?1 AND body = ?2",
                params![self.name, self.body],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        conn.execute(
            "INSERT INTO rubrics (name, body, pass_field, score_field, scale_min, scale_max, fields)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                self.name,
                self.body,
                self.pass_field,
                self.score_field,
                self.scale.map(|s| s.0),
                self.scale.map(|s| s.1),
                serde_json::to_string(&self.fields)?
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }
}

/// The grader's prompt: the rubric filled with the item's prompt, the output and variables.
pub fn grade_prompt(rubric: &Rubric, claim: &Claim) -> Result<String> {
    let output = claim.parent_output.clone().unwrap_or_default();
    let lookup = |name: &str| match name {
        "prompt" => Some(claim.prompt.clone()),
        "output" => Some(output.clone()),
        _ => claim.vars.get(name).map(template::value_text),
    };
    template::render(&rubric.body, &lookup).with_context(|| format!("rubric {}", rubric.name))
}

/// Reads the verdict from an `ok` grader answer into `finish.timings["grade"]`; an unreadable
/// answer turns the attempt into `parse` (retried within the budget, raw text kept).
pub fn judge(rubric: &Rubric, finish: &mut Finish) {
    let text = finish.output.clone().unwrap_or_default();
    match parse_verdict(rubric, &text) {
        Ok(v) => {
            let timings = finish
                .timings
                .get_or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = timings {
                m.insert("grade".into(), v);
            }
        }
        Err(e) => {
            finish.outcome = Outcome::Parse;
            finish.error = Some(format!("unreadable verdict: {e}"));
        }
    }
}

/// Stores the verdict of a finished grade job.
pub fn record(tx: &Transaction, claim: &Claim, finish: &Finish) -> Result<()> {
    let v = finish
        .timings
        .as_ref()
        .and_then(|t| t.get("grade"))
        .cloned()
        .unwrap_or(Value::Null);
    tx.execute(
        "INSERT OR REPLACE INTO grades (job_id, graded_job_id, attempt_id, grader, pass, score, reason, fields)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            claim.job_id,
            claim.parent_id,
            claim.attempt_id,
            claim.model,
            v.get("pass").and_then(Value::as_bool).map(i64::from),
            v.get("score").and_then(Value::as_f64),
            v.get("reason").and_then(Value::as_str),
            v.get("fields").map(Value::to_string).unwrap_or_else(|| "{}".into()),
        ],
    )?;
    Ok(())
}

/// Parses a grader's answer: a JSON object anywhere (fenced or not), else `KEY: value` lines
/// with markdown decoration; `<think>` blocks are ignored.
pub fn parse_verdict(rubric: &Rubric, text: &str) -> std::result::Result<Value, String> {
    let (answer, _) = crate::text::split_thinking(text);
    let fields = json_fields(&answer).unwrap_or_else(|| line_fields(&answer));
    let mut out = Map::new();
    let mut all = Map::new();
    for (k, v) in &fields {
        all.insert(k.clone(), Value::String(v.clone()));
    }
    if let Some(pf) = &rubric.pass_field {
        let raw = fields.get(pf).ok_or_else(|| format!("no {pf} field"))?;
        let pass = verdict_word(raw).ok_or_else(|| format!("{pf} is {raw:?}, not yes/no"))?;
        out.insert("pass".into(), Value::Bool(pass));
    }
    if let Some(sf) = &rubric.score_field {
        let raw = fields.get(sf).ok_or_else(|| format!("no {sf} field"))?;
        let score = score_value(raw, rubric.scale)
            .ok_or_else(|| format!("{sf} is {raw:?}, not a score in scale"))?;
        out.insert("score".into(), serde_json::json!(score));
    }
    if let Some(reason) = fields.get("REASON") {
        out.insert("reason".into(), Value::String(reason.clone()));
    }
    if rubric.pass_field.is_none() && rubric.score_field.is_none() {
        let missing: Vec<&String> = rubric
            .fields
            .iter()
            .filter(|f| !fields.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing fields {missing:?}"));
        }
    }
    out.insert("fields".into(), Value::Object(all));
    Ok(Value::Object(out))
}

fn json_fields(text: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut start = 0;
    while let Some(i) = text[start..].find('{') {
        let from = start + i;
        let mut stream = serde_json::Deserializer::from_str(&text[from..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(m))) = stream.next() {
            return Some(
                m.into_iter()
                    .map(|(k, v)| {
                        (
                            k.trim().to_ascii_uppercase().replace(' ', "_"),
                            template::value_text(&v),
                        )
                    })
                    .collect(),
            );
        }
        start = from + 1;
    }
    None
}

fn line_fields(text: &str) -> std::collections::BTreeMap<String, String> {
    let mut fields = std::collections::BTreeMap::new();
    for line in text.lines() {
        let clean: String = line
            .trim()
            .trim_start_matches(['-', '*', '#', '>', ' '])
            .to_string();
        let Some((k, v)) = clean.split_once(':') else {
            continue;
        };
        let key = k
            .trim()
            .trim_matches(['*', '_', '`', ' '])
            .to_ascii_uppercase()
            .replace(' ', "_");
        let value = v
            .trim()
            .trim_matches(['*', '_', '`', ' '])
            .trim()
            .to_string();
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            fields.entry(key).or_insert(value);
        }
    }
    fields
}

fn verdict_word(raw: &str) -> Option<bool> {
    let w = raw
        .trim()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()?
        .to_ascii_lowercase();
    match w.as_str() {
        "yes" | "y" | "true" | "pass" | "passed" | "1" => Some(true),
        "no" | "n" | "false" | "fail" | "failed" | "0" => Some(false),
        _ => None,
    }
}

fn score_value(raw: &str, scale: Option<(f64, f64)>) -> Option<f64> {
    let t = raw.trim();
    let num: String = t
        .chars()
        .skip_while(|c| !c.is_ascii_digit() && *c != '-')
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    let v: f64 = num.trim_end_matches('.').parse().ok()?;
    match scale {
        Some((lo, hi)) if v < lo || v > hi => None,
        _ => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joke() -> Rubric {
        Rubric::parse("joke", JOKE).unwrap()
    }

    #[test]
    fn reads_decorated_lines() {
        let v = parse_verdict(
            &joke(),
            "<think>hm</think>\n**IS_JOKE:** yes\n- **Quality:** 7/10\n- Reason: puns",
        )
        .unwrap();
        assert_eq!(v["pass"], Value::Bool(true));
        assert_eq!(v["score"], serde_json::json!(7.0));
        assert_eq!(v["reason"], Value::String("puns".into()));
    }

    #[test]
    fn reads_fenced_json() {
        let v = parse_verdict(
            &joke(),
            "Sure!\n```json\n{\"is_joke\": \"NO\", \"quality\": 2, \"reason\": \"flat\"}\n```",
        )
        .unwrap();
        assert_eq!(v["pass"], Value::Bool(false));
    }

    #[test]
    fn rejects_out_of_scale() {
        assert!(parse_verdict(&joke(), "IS_JOKE: YES\nQUALITY: 42\nREASON: x").is_err());
        assert!(parse_verdict(&joke(), "no idea").is_err());
    }
}
