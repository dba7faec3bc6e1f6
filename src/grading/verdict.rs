//! Reading a grader's answer back: JSON objects or `KEY: value` lines, each field checked
//! against the rubric (pass words, score within the scale).

use serde_json::{Map, Value};

use super::{normalize_key, Rubric};
use crate::exec::template;

/// (KEY, value) pairs in the order they appear.
type Pairs = Vec<(String, String)>;

/// Parses a grader's answer: JSON objects anywhere (fenced or not) first, then `KEY: value`
/// lines with markdown decoration; `<think>` blocks are ignored. For each field the last
/// readable value wins, so an answer that first repeats the instructions still reads.
pub fn parse_verdict(rubric: &Rubric, text: &str) -> std::result::Result<Value, String> {
    let (answer, _) = crate::text::split_thinking(text);
    let sources = [json_pairs(&answer), line_pairs(&answer)];
    let pick =
        |field: &str, read: &dyn Fn(&str) -> Option<Value>| -> Result<(Value, String), String> {
            let mut seen = None;
            for pairs in &sources {
                for (k, v) in pairs.iter().rev() {
                    if k == field {
                        if let Some(x) = read(v) {
                            return Ok((x, v.clone()));
                        }
                        seen.get_or_insert_with(|| v.clone());
                    }
                }
            }
            Err(match seen {
                Some(v) => format!("{field} is {v:?}"),
                None => format!("no {field} field"),
            })
        };
    let mut out = Map::new();
    let mut fields = Map::new();
    let mut problems = Vec::new();
    if let Some(pf) = &rubric.pass_field {
        match pick(pf, &|v| verdict_word(v).map(Value::Bool)) {
            Ok((pass, raw)) => {
                out.insert("pass".into(), pass);
                fields.insert(pf.clone(), Value::String(raw));
            }
            Err(e) => problems.push(format!("{e}, not YES or NO")),
        }
    }
    if let Some(sf) = &rubric.score_field {
        match pick(sf, &|v| {
            score_value(v, rubric.scale).map(|s| serde_json::json!(s))
        }) {
            Ok((score, raw)) => {
                out.insert("score".into(), score);
                fields.insert(sf.clone(), Value::String(raw));
            }
            Err(e) => problems.push(match rubric.scale {
                Some((lo, hi)) => format!("{e}, not a score from {lo} to {hi}"),
                None => format!("{e}, not a number"),
            }),
        }
    }
    let strict = rubric.pass_field.is_none() && rubric.score_field.is_none();
    let text_of = |v: &str| (!v.trim().is_empty()).then(|| Value::String(v.trim().to_string()));
    for f in &rubric.fields {
        if fields.contains_key(f) {
            continue;
        }
        match pick(f, &text_of) {
            Ok((v, _)) => {
                fields.insert(f.clone(), v);
            }
            Err(e) if strict => problems.push(e),
            Err(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    // Anything else a JSON answer said is kept too.
    for (k, v) in &sources[0] {
        fields
            .entry(k.clone())
            .or_insert_with(|| Value::String(v.clone()));
    }
    let reason = ["REASON", "EXPLANATION", "RATIONALE", "JUSTIFICATION"]
        .iter()
        .find_map(|k| pick(k, &text_of).ok());
    if let Some((reason, _)) = reason {
        out.insert("reason".into(), reason);
    }
    out.insert("fields".into(), Value::Object(fields));
    Ok(Value::Object(out))
}

/// Every top-level JSON object in the text, flattened to (KEY, text) pairs.
fn json_pairs(text: &str) -> Pairs {
    let mut pairs = Vec::new();
    let mut start = 0;
    let mut tries = 0;
    while let Some(i) = text[start..].find('{') {
        tries += 1;
        if tries > 200 {
            break;
        }
        let from = start + i;
        let mut stream = serde_json::Deserializer::from_str(&text[from..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(Value::Object(m))) => {
                for (k, v) in m {
                    if !v.is_object() && !v.is_array() {
                        pairs.push((normalize_key(&k), template::value_text(&v)));
                    }
                }
                start = from + stream.byte_offset().max(1);
            }
            _ => start = from + 1,
        }
    }
    pairs
}

/// `KEY: value` lines, with list markers, bold, italics and code marks removed.
fn line_pairs(text: &str) -> Pairs {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let mut clean = line
            .trim()
            .trim_start_matches(['-', '*', '+', '#', '>', ' ']);
        // A numbered list item: `1. KEY: value` or `2) KEY: value`.
        let digits = clean.len() - clean.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 && clean[digits..].starts_with(['.', ')']) {
            clean = clean[digits + 1..].trim_start();
        }
        let Some((k, v)) = clean.split_once(':') else {
            continue;
        };
        let key = normalize_key(k);
        let value = v
            .trim()
            .trim_matches(['*', '_', '`', ' '])
            .trim()
            .to_string();
        if !key.is_empty()
            && key.len() <= 64
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            pairs.push((key, value));
        }
    }
    pairs
}

/// yes/no, true/false, pass/fail (any case, decorated). `YES or NO` — the instructions
/// repeated back — is no verdict.
fn verdict_word(raw: &str) -> Option<bool> {
    if raw.to_ascii_lowercase().contains("n/a") {
        return None;
    }
    let words: Vec<String> = raw
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_lowercase)
        .collect();
    let polarity = |w: &str| match w {
        "yes" | "y" | "true" | "pass" | "passed" | "passes" | "1" => Some(true),
        "no" | "n" | "false" | "fail" | "failed" | "fails" | "0" => Some(false),
        _ => None,
    };
    let first = polarity(words.first()?)?;
    if words[1..].iter().any(|w| polarity(w) == Some(!first)) {
        return None;
    }
    Some(first)
}

/// `7`, `7.5`, `7/10`, `7 out of 10`, `seven`; the number must open the value, so
/// `a whole number from 1 to 10` is no score. Out of the scale (or over another scale's
/// maximum, like `3/5` on 1-10) is rejected.
fn score_value(raw: &str, scale: Option<(f64, f64)>) -> Option<f64> {
    let t = raw.trim().trim_matches(['*', '_', '`', '"', ' ']).trim();
    // A decimal comma right after the digits: `7,5` is 7.5.
    let comma = t.find(',').filter(|&i| {
        i > 0
            && t[..i].chars().all(|c| c.is_ascii_digit())
            && t[i + 1..].starts_with(|c: char| c.is_ascii_digit())
    });
    let owned;
    let t = match comma {
        Some(i) => {
            owned = format!("{}.{}", &t[..i], &t[i + 1..]);
            owned.as_str()
        }
        None => t,
    };
    let end = t
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(end);
    let v: f64 = match num.trim_end_matches('.').parse::<f64>() {
        Ok(v) => v,
        Err(_) => {
            let word: String = t
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_lowercase();
            let n = [
                "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten",
            ]
            .iter()
            .position(|w| *w == word)?;
            return score_value(&format!("{n}{}", &t[word.len()..]), scale);
        }
    };
    if !v.is_finite() {
        return None;
    }
    let rest = rest.trim_start();
    // A range (`7-8`, `7 to 8`) is no single score.
    let after = rest
        .strip_prefix(['-', '–'])
        .or_else(|| rest.strip_prefix("to "))
        .map(str::trim_start);
    if after.is_some_and(|a| a.starts_with(|c: char| c.is_ascii_digit())) {
        return None;
    }
    let denominator = rest
        .strip_prefix('/')
        .or_else(|| rest.strip_prefix("out of"))
        .map(|d| {
            let d = d.trim_start();
            let n: String = d
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            n.trim_end_matches('.').parse::<f64>().ok()
        });
    match (denominator, scale) {
        (Some(None), _) => return None,
        (Some(Some(d)), Some((_, hi))) if d != hi => return None,
        (Some(Some(d)), None) if v > d => return None,
        _ => {}
    }
    match scale {
        Some((lo, hi)) if v < lo || v > hi => None,
        _ => Some(v),
    }
}
