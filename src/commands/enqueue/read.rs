//! Reading input records: CSV/TSV, JSONL and OpenAI Batch API files, each line checked and
//! turned into a [`Record`] with the line it came from.

use anyhow::Result;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use crate::cli::InputFormat;
use crate::usage;

/// One input record: where it came from, its id and variables; for chat items their messages,
/// and from a Batch API file the request options and the model the line names.
#[derive(Default)]
pub(super) struct Record {
    pub(super) line: u64,
    pub(super) id: String,
    pub(super) vars: Map<String, Value>,
    pub(super) messages: Option<Vec<Value>>,
    pub(super) options: Option<Map<String, Value>>,
    pub(super) model: Option<String>,
}

pub(super) fn read_records(
    reader: impl BufRead,
    format: InputFormat,
    name: &str,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    match format {
        InputFormat::Csv => read_csv(reader, b',', name, each),
        InputFormat::Tsv => read_csv(reader, b'\t', name, each),
        InputFormat::Jsonl => read_jsonl(reader, name, each),
        InputFormat::OpenaiBatch => read_openai_batch(reader, name, each),
    }
}

/// The line of the first record with `id` in the input file `name`, read again from the
/// start: only on the error path, so an enqueue needs no memory per item. None for stdin and
/// pipes, which cannot be read twice.
pub(super) fn first_line_of(name: &str, format: InputFormat, id: &str) -> Option<u64> {
    if name == "stdin" || !std::fs::metadata(name).is_ok_and(|m| m.is_file()) {
        return None;
    }
    let file = BufReader::new(std::fs::File::open(name).ok()?);
    let mut found = None;
    let _ = read_records(file, format, name, &mut |rec: Record| {
        if rec.id == id {
            found = Some(rec.line);
            anyhow::bail!("found");
        }
        Ok(())
    });
    found
}

fn read_csv(
    reader: impl Read,
    delimiter: u8,
    name: &str,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .delimiter(delimiter)
        .from_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .map_err(|e| crate::error::UsageError(format!("{name}: cannot read the CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        usage!("{name}: no records in the input (expected a header row such as id,prompt, then one row per prompt)");
    }
    if headers[0].starts_with('{') {
        usage!("{name} line 1: this looks like JSONL, not CSV: use --input-format jsonl");
    }
    if let Some(dup) = headers
        .iter()
        .enumerate()
        .find(|(i, h)| headers[..*i].contains(h))
    {
        usage!("{name} line 1: column {:?} appears twice", dup.1);
    }
    let mut row = csv::StringRecord::new();
    let mut number = 0u64;
    loop {
        let more = csv.read_record(&mut row).map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            crate::error::UsageError(format!("{name} line {line}: {}", csv_problem(&e)))
        })?;
        if !more {
            return Ok(());
        }
        number += 1;
        let line = row.position().map(|p| p.line()).unwrap_or(number + 1);
        let vars: Map<String, Value> = headers
            .iter()
            .zip(row.iter())
            .map(|(h, v)| (h.clone(), Value::String(v.to_string())))
            .collect();
        let id = match vars.get("id").and_then(Value::as_str) {
            Some(id) if !id.trim().is_empty() => id.trim().to_string(),
            Some(_) => usage!("{name} line {line}: field `id` is empty"),
            None => number.to_string(),
        };
        each(Record {
            line,
            id,
            vars,
            ..Record::default()
        })?;
    }
}

fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("expected {expected_len} fields like the header, found {len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        _ => e.to_string(),
    }
}

fn read_jsonl(
    reader: impl BufRead,
    name: &str,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut number = 0u64;
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let mut text =
            line.map_err(|e| crate::error::UsageError(format!("{name} line {line_no}: {e}")))?;
        if i == 0 && text.starts_with('\u{feff}') {
            // A byte-order mark, as some Windows tools write: not part of the JSON.
            text.drain(..3);
        }
        if text.trim().is_empty() {
            continue;
        }
        number += 1;
        let vars = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => usage!("{name} line {line_no}: expected a JSON object"),
            Err(e) => usage!("{name} line {line_no}: invalid JSON: {e}"),
        };
        let id = match vars.get("id") {
            None | Some(Value::Null) => number.to_string(),
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                usage!("{name} line {line_no}: field `id` must be a string or number, not {other}")
            }
        };
        each(Record {
            line: line_no,
            id,
            vars,
            ..Record::default()
        })?;
    }
    Ok(())
}
/// The OpenAI Batch API's input: `{custom_id, method, url, body}` per line. Every line is
/// checked before anything is stored (the transaction rolls back on the first bad one), so a
/// bad file enqueues nothing, as the Batch API rejects it whole.
fn read_openai_batch(
    reader: impl BufRead,
    name: &str,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut seen = HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i as u64 + 1;
        let text =
            line.map_err(|e| crate::error::UsageError(format!("{name} line {line_no}: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let rec = batch_request(&text)
            .map_err(|why| crate::error::UsageError(format!("{name} line {line_no}: {why}")))?;
        if !seen.insert(rec.id.clone()) {
            usage!(
                "{name} line {line_no}: custom_id {:?} appears twice (each request needs its own)",
                rec.id
            );
        }
        each(Record {
            line: line_no,
            ..rec
        })?;
    }
    Ok(())
}

/// One Batch API request line as a record, or what is wrong with it.
fn batch_request(text: &str) -> std::result::Result<Record, String> {
    let line = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("expected a JSON object".into()),
        Err(e) => return Err(format!("invalid JSON: {e}")),
    };
    let id = match line.get("custom_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(format!(
                "`custom_id` must be a non-empty string, not {other}"
            ))
        }
        None => return Err("no `custom_id`".into()),
    };
    match line.get("method").and_then(Value::as_str) {
        None | Some("POST") => {}
        Some(m) => return Err(format!("method {m:?}: only POST requests are batched")),
    }
    let url = line.get("url").and_then(Value::as_str).unwrap_or("");
    let Some(Value::Object(body)) = line.get("body") else {
        return Err(format!(
            "custom_id {id:?}: no `body` object with the request"
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Some(m.trim().to_string()),
        None => None,
        Some(other) => {
            return Err(format!(
                "custom_id {id:?}: body.model must be text, not {other}"
            ))
        }
    };
    let mut rec = Record {
        id: id.clone(),
        vars: Map::from_iter([("custom_id".to_string(), json!(id))]),
        model,
        ..Record::default()
    };
    let content_key = match url {
        "/v1/chat/completions" => {
            let messages = body.get("messages").ok_or_else(|| {
                format!("custom_id {id:?}: body.messages is missing (url {url})")
            })?;
            rec.messages = Some(
                crate::chat::check(messages).map_err(|why| format!("custom_id {id:?}: {why}"))?,
            );
            "messages"
        }
        "/v1/completions" => match body.get("prompt") {
            Some(Value::String(p)) if !p.trim().is_empty() => {
                rec.vars.insert("prompt".into(), json!(p));
                "prompt"
            }
            _ => return Err(format!("custom_id {id:?}: body.prompt must be text (url {url})")),
        },
        other => {
            return Err(format!(
                "custom_id {id:?}: url {other:?} is not batched: use /v1/chat/completions (or /v1/completions with a prompt)"
            ))
        }
    };
    // The rest are request options over the model's; streaming is llmbatch's own business.
    let options: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "model" | "stream" | "stream_options") && *k != content_key
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    rec.options = (!options.is_empty()).then_some(options);
    Ok(rec)
}
