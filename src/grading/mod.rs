//! Rubrics and verdicts: the prompt a grader answers, and reading its answer back.

use anyhow::{Context, Result};
use serde_json::{Map, Value};

use crate::domain::{Claim, Finish, Outcome};
use crate::exec::template;

mod verdict;

pub use verdict::parse_verdict;

/// The built-in joke rubric.
pub const JOKE: &str = include_str!("../../fixtures/rubrics/joke.txt");

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
    /// The rubric `--rubric` names: a built-in (`joke`) or a file. A file that cannot be read
    /// or parsed is bad input (exit 2), with the reason.
    pub fn resolve(spec: &str) -> Result<Rubric> {
        let parsed = if spec == "joke" && !std::path::Path::new(spec).exists() {
            Rubric::parse("joke", JOKE)
        } else {
            let text = std::fs::read_to_string(spec).map_err(|e| {
                crate::error::UsageError(format!(
                    "cannot read rubric {spec}: {e} (give a rubric file, or the built-in `joke`)"
                ))
            })?;
            let name = std::path::Path::new(spec)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.to_string());
            Rubric::parse(&name, &text)
        };
        parsed.map_err(|e| crate::error::UsageError(format!("{e:#}")).into())
    }

    /// Reads a rubric file: optional header lines `pass: FIELD`, `score: FIELD`,
    /// `scale: MIN-MAX`, `fields: A, B`, then a line `---`, then the template.
    pub fn parse(name: &str, text: &str) -> Result<Rubric> {
        let text = text.trim_start_matches('\u{feff}').replace("\r\n", "\n");
        let (header, body) = split_header(&text);
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
            let at = format!("rubric {name} line {}", i + 1);
            let (k, v) = line
                .split_once(':')
                .with_context(|| format!("{at}: expected KEY: value, found {line:?}"))?;
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "pass" => r.pass_field = Some(field_name(v, &at)?),
                "score" => r.score_field = Some(field_name(v, &at)?),
                "scale" => r.scale = Some(parse_scale(v).with_context(|| at.clone())?),
                "fields" => {
                    for f in v.split(',').filter(|f| !f.trim().is_empty()) {
                        let f = field_name(f, &at)?;
                        if !r.fields.contains(&f) {
                            r.fields.push(f);
                        }
                    }
                }
                other => {
                    anyhow::bail!(
                        "{at}: unknown header key {other:?} (known: pass, score, scale, fields)"
                    )
                }
            }
        }
        if r.scale.is_some() && r.score_field.is_none() {
            anyhow::bail!("rubric {name}: `scale:` is given but no `score:` field to apply it to");
        }
        // With `fields:` given, it is the whole list the grader is asked for: a verdict or
        // score field missing from it could never be read back.
        let listed = !r.fields.is_empty();
        for (key, f) in [("score", &r.score_field), ("pass", &r.pass_field)] {
            let Some(f) = f else { continue };
            if listed && !r.fields.contains(f) {
                anyhow::bail!(
                    "rubric {name}: `{key}: {f}` is not among `fields: {}`: add it there",
                    r.fields.join(", ")
                );
            }
            if !r.fields.contains(f) {
                r.fields.insert(0, f.clone());
            }
        }
        if r.fields.is_empty() {
            anyhow::bail!("rubric {name} names no fields: start it with a header such as `pass: VERDICT` and `score: SCORE`, then a line `---`");
        }
        let names = template::placeholders(&r.body);
        if !names.iter().any(|n| n == "output") {
            anyhow::bail!("rubric {name} never shows the output to grade: put {{output}} in it");
        }
        Ok(r)
    }

    /// The placeholders the items must fill: all but `{prompt}` and `{output}`, each once.
    pub fn item_variables(&self) -> Vec<String> {
        let mut names: Vec<String> = template::placeholders(&self.body)
            .into_iter()
            .filter(|n| n != "prompt" && n != "output")
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Ollama structured output for this rubric: an object with every field required, the
    /// verdict as YES/NO and the score as a number within the scale.
    pub fn json_schema(&self) -> Value {
        let mut props = Map::new();
        for f in &self.fields {
            let schema = if Some(f) == self.pass_field.as_ref() {
                serde_json::json!({"type": "string", "enum": ["YES", "NO"]})
            } else if Some(f) == self.score_field.as_ref() {
                let mut s = serde_json::json!({"type": "number"});
                if let Some((lo, hi)) = self.scale {
                    s["minimum"] = serde_json::json!(lo);
                    s["maximum"] = serde_json::json!(hi);
                }
                s
            } else {
                serde_json::json!({"type": "string"})
            };
            props.insert(f.clone(), schema);
        }
        serde_json::json!({
            "type": "object",
            "properties": props,
            "required": self.fields,
        })
    }
}

/// The grader's prompt: the rubric filled with the item's prompt, the output and variables.
pub fn grade_prompt(rubric: &Rubric, claim: &Claim) -> Result<String> {
    let output = claim.parent_output.clone().unwrap_or_default();
    let lookup = |name: &str| match name {
        "prompt" => Some(claim.prompt.clone()),
        "output" => Some(output.clone()),
        "repeat" => Some(claim.repeat.to_string()),
        _ => claim.vars.get(name).map(template::value_text),
    };
    template::render(&rubric.body, &lookup).with_context(|| format!("rubric {}", rubric.name))
}

/// Reads the verdict from an `ok` grader answer into `finish.verdict`; an unreadable
/// answer turns the attempt into `parse` (retried within the budget, raw text kept).
pub fn judge(rubric: &Rubric, finish: &mut Finish) {
    let text = finish.output.clone().unwrap_or_default();
    match parse_verdict(rubric, &text) {
        Ok(v) => finish.verdict = Some(v),
        Err(e) => {
            finish.outcome = Outcome::Parse;
            finish.error = Some(format!("unreadable verdict: {e}"));
        }
    }
}

/// Splits `header --- body`. A header is there only when the file opens with one of the
/// known keys before a line `---`; otherwise the whole text is the template.
fn split_header(text: &str) -> (&str, &str) {
    let mut offset = 0;
    let mut first_key = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t == "---" {
            let known = first_key.is_some_and(|k: &str| {
                matches!(
                    k.trim().to_ascii_lowercase().as_str(),
                    "pass" | "score" | "scale" | "fields"
                )
            });
            if known {
                return (&text[..offset], &text[offset + line.len()..]);
            }
            break;
        }
        if first_key.is_none() && !t.is_empty() && !t.starts_with('#') {
            first_key = Some(t.split(':').next().unwrap_or(""));
        }
        offset += line.len();
    }
    ("", text)
}

/// A field name as stored: upper case, spaces and dashes as `_`.
fn field_name(raw: &str, at: &str) -> Result<String> {
    let name = normalize_key(raw);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!("{at}: {raw:?} is not a field name (letters, digits and _ only)");
    }
    Ok(name)
}

fn normalize_key(raw: &str) -> String {
    raw.trim()
        .trim_matches(['*', '_', '`', '"', '\'', ' '])
        .trim()
        .to_ascii_uppercase()
        .replace([' ', '-'], "_")
}

/// `1-10`, `0 - 1`, `1..10` or `1 to 10`.
fn parse_scale(v: &str) -> Result<(f64, f64)> {
    let bad = || anyhow::anyhow!("scale must be MIN-MAX, e.g. 1-10, not {v:?}");
    let t = v.trim();
    let (lo, hi) = t
        .split_once("..")
        .or_else(|| t.split_once(" to "))
        .or_else(|| {
            // Skip a leading minus sign so `-5-5` splits at the second dash.
            let from = usize::from(t.starts_with('-'));
            t[from..]
                .find('-')
                .map(|i| (&t[..from + i], &t[from + i + 1..]))
        })
        .ok_or_else(bad)?;
    let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        anyhow::bail!("scale {v:?}: MIN must be below MAX");
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joke() -> Rubric {
        Rubric::parse("joke", JOKE).unwrap()
    }

    fn pass_score(text: &str) -> (Option<bool>, Option<f64>) {
        let v = parse_verdict(&joke(), text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        (v["pass"].as_bool(), v["score"].as_f64())
    }

    #[test]
    fn joke_rubric_header() {
        let r = joke();
        assert_eq!(r.pass_field.as_deref(), Some("IS_JOKE"));
        assert_eq!(r.score_field.as_deref(), Some("QUALITY"));
        assert_eq!(r.scale, Some((1.0, 10.0)));
        assert_eq!(r.fields, ["IS_JOKE", "QUALITY", "REASON"]);
        assert!(!r.body.contains("pass:"));
    }

    #[test]
    fn reads_decorated_lines() {
        let v = parse_verdict(
            &joke(),
            "<think>IS_JOKE: NO\nQUALITY: 1</think>\n**IS_JOKE:** yes\n- **Quality:** 7/10\n- Reason: puns",
        )
        .unwrap();
        assert_eq!(v["pass"], Value::Bool(true));
        assert_eq!(v["score"], serde_json::json!(7.0));
        assert_eq!(v["reason"], Value::String("puns".into()));
        assert_eq!(v["fields"]["QUALITY"], Value::String("7/10".into()));
    }

    #[test]
    fn reads_case_lists_and_headings() {
        assert_eq!(
            pass_score("is joke: True\nquality: 7.5\nreason: ok"),
            (Some(true), Some(7.5))
        );
        assert_eq!(
            pass_score("1. IS_JOKE: PASS\n2. QUALITY: 3"),
            (Some(true), Some(3.0))
        );
        assert_eq!(
            pass_score("### Is-Joke: **No**\n* `QUALITY`: 2 out of 10"),
            (Some(false), Some(2.0))
        );
        assert_eq!(
            pass_score("IS_JOKE: fail.\nQUALITY: seven"),
            (Some(false), Some(7.0))
        );
    }

    #[test]
    fn instructions_repeated_back_are_skipped() {
        let text = "IS_JOKE: YES or NO\nQUALITY: a whole number from 1 (awful) to 10\n\nIS_JOKE: NO\nQUALITY: 2\nREASON: no punchline";
        assert_eq!(pass_score(text), (Some(false), Some(2.0)));
        assert!(parse_verdict(&joke(), "IS_JOKE: YES or NO\nQUALITY: 5").is_err());
    }

    #[test]
    fn reads_fenced_and_bare_json() {
        let v = parse_verdict(
            &joke(),
            "Sure! Here you go {not json}\n```json\n{\"is_joke\": \"NO\", \"quality\": 2, \"reason\": \"flat\", \"extra\": true}\n```\nHope it helps.",
        )
        .unwrap();
        assert_eq!(v["pass"], Value::Bool(false));
        assert_eq!(v["score"], serde_json::json!(2.0));
        assert_eq!(v["reason"], Value::String("flat".into()));
        assert_eq!(v["fields"]["EXTRA"], Value::String("true".into()));
        assert_eq!(
            pass_score(r#"{"IS_JOKE": true, "QUALITY": "8/10"}"#),
            (Some(true), Some(8.0))
        );
    }

    #[test]
    fn rejects_out_of_scale_and_garbage() {
        for bad in [
            "IS_JOKE: YES\nQUALITY: 42\nREASON: x",
            "IS_JOKE: YES\nQUALITY: 0",
            "IS_JOKE: YES\nQUALITY: 3/5",
            "IS_JOKE: maybe\nQUALITY: 5",
            "IS_JOKE: YES",
            "no idea",
            "<think>IS_JOKE: YES\nQUALITY: 5</think>",
        ] {
            assert!(parse_verdict(&joke(), bad).is_err(), "{bad:?} was accepted");
        }
        let e = parse_verdict(&joke(), "IS_JOKE: YES\nQUALITY: 42").unwrap_err();
        assert!(e.contains("QUALITY is \"42\""), "{e}");
    }

    #[test]
    fn odd_but_readable_and_unreadable_values() {
        assert_eq!(
            pass_score("IS_JOKE: y\nQUALITY: 7,5 — nice"),
            (Some(true), Some(7.5))
        );
        assert_eq!(
            pass_score("IS_JOKE: No, not really\nQUALITY: 2 (weak)"),
            (Some(false), Some(2.0))
        );
        for bad in [
            "IS_JOKE: N/A\nQUALITY: 5",
            "IS_JOKE: yes\nQUALITY: N/A",
            "IS_JOKE: yes\nQUALITY: 7-8",
        ] {
            assert!(parse_verdict(&joke(), bad).is_err(), "{bad:?} was accepted");
        }
        let bom = Rubric::parse("b", "\u{feff}pass: OK\r\n---\r\n{output}\r\n").unwrap();
        assert_eq!(bom.fields, ["OK"]);
    }

    #[test]
    fn rubric_headers_are_checked() {
        let r = Rubric::parse(
            "s",
            "pass: Faithful\nscore: coverage\nscale: 0..5\n---\n{output}",
        )
        .unwrap();
        assert_eq!(r.fields, ["FAITHFUL", "COVERAGE"]);
        assert_eq!(r.scale, Some((0.0, 5.0)));
        assert!(Rubric::parse("s", "pass: A\nscale: 10-1\n---\n{output}").is_err());
        assert!(Rubric::parse("s", "pass: A\nscore: B\nscale: ten\n---\n{output}").is_err());
        assert!(Rubric::parse("s", "pass: A\nwhat: B\n---\n{output}").is_err());
        assert!(Rubric::parse("s", "pass: A\n---\nno placeholder").is_err());
        assert!(Rubric::parse("s", "Grade this: {output}").is_err());
        // With `fields:` listed, the verdict and score fields must be among them.
        let e = Rubric::parse("s", "pass: OK\nfields: GOOD, REASON\n---\n{output}").unwrap_err();
        assert!(format!("{e}").contains("`pass: OK` is not among `fields: GOOD, REASON`"));
        assert!(Rubric::parse("s", "score: Q\nfields: OK\n---\n{output}").is_err());
        // No header: a `---` rule in the template stays in the template.
        let e = Rubric::parse("s", "Note: be fair\n---\n{output}").unwrap_err();
        assert!(format!("{e}").contains("names no fields"));
    }

    #[test]
    fn no_verdict_field_means_every_field_is_required() {
        let r = Rubric::parse("t", "fields: TONE, LENGTH\n---\n{output}").unwrap();
        let v = parse_verdict(&r, "TONE: dry\nLENGTH: short").unwrap();
        assert_eq!(v["fields"]["TONE"], Value::String("dry".into()));
        assert!(v.get("pass").is_none());
        assert!(parse_verdict(&r, "TONE: dry").is_err());
    }

    #[test]
    fn schema_names_every_field() {
        let s = joke().json_schema();
        assert_eq!(s["type"], "object");
        assert_eq!(
            s["required"],
            serde_json::json!(["IS_JOKE", "QUALITY", "REASON"])
        );
        assert_eq!(
            s["properties"]["IS_JOKE"]["enum"],
            serde_json::json!(["YES", "NO"])
        );
        assert_eq!(s["properties"]["QUALITY"]["type"], "number");
        assert_eq!(
            s["properties"]["QUALITY"]["minimum"],
            serde_json::json!(1.0)
        );
        assert_eq!(
            s["properties"]["QUALITY"]["maximum"],
            serde_json::json!(10.0)
        );
        assert_eq!(s["properties"]["REASON"]["type"], "string");
        // An answer shaped by the schema reads back.
        let answer = r#"{"IS_JOKE": "YES", "QUALITY": 6, "REASON": "a pun"}"#;
        assert_eq!(pass_score(answer), (Some(true), Some(6.0)));
    }
}
