//! `enqueue`: prompts (CSV, TSV, JSONL or an OpenAI Batch API file; file or stdin) × models
//! into jobs, in one transaction. Idempotent: a (batch, item, model) already queued is counted,
//! not added again.

use anyhow::Result;
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::cli::{EnqueueArgs, Format, InputFormat};
use crate::db::{Enqueue, NewItem, Store};
use crate::exec::template;
use crate::report::render::{render, Table};
use crate::usage;

/// One input record: where it came from, its id and variables; for chat items their messages,
/// and from a Batch API file the request options and the model the line names.
#[derive(Default)]
struct Record {
    line: u64,
    id: String,
    vars: Map<String, Value>,
    messages: Option<Vec<Value>>,
    options: Option<Map<String, Value>>,
    model: Option<String>,
}

/// How much of the input is looked at to recognise a Batch API file: a line of one request.
const SNIFF_BYTES: usize = 1 << 20;

#[derive(Default)]
struct Counts {
    items: u64,
    new: u64,
    existing: u64,
}

pub fn run(a: &EnqueueArgs, db: &mut dyn Store) -> Result<u8> {
    let template = match &a.template {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            crate::error::UsageError(format!("cannot read template {}: {e}", path.display()))
        })?),
        None => None,
    };
    let (name, reader) = open_input(&a.input)?;
    let mut reader = BufReader::with_capacity(SNIFF_BYTES, reader);
    let format = match a.input_format {
        Some(f) => f,
        None => detect_format(&a.input, &mut reader)?,
    };
    if a.models.is_empty() && format != InputFormat::OpenaiBatch {
        usage!("give at least one --model (only an openai-batch file names its own models)");
    }
    let batch = a.batch.clone().unwrap_or_else(|| default_batch(&a.input));
    if batch.trim().is_empty() {
        usage!("the batch name is empty: pass --batch NAME");
    }

    let tx = db.enqueue()?;
    let mut counts = Counts::default();
    let models = {
        let mut sink = Sink::new(&*tx, &batch, &a.models, template.as_deref(), &name)?;
        sink.repeats = a.repeat;
        sink.format = format;
        {
            let mut each = |rec: Record| sink.add(rec, &mut counts);
            read_records(reader, format, &name, &mut each)?;
        }
        sink.flush(&mut counts)?;
        std::mem::take(&mut sink.models_seen)
    };
    if counts.items == 0 {
        // One rule for every input: no records is a mistake upstream, never "0 new".
        usage!(
            "{name}: no records in the input (expected {})",
            format.expected()
        );
    }
    let added = tx.commit()?;
    let (mut first_new, mut last_new) = (added.first, added.last);
    if let Some(merged) = db.publish()? {
        // Another enqueue created the database meanwhile: ours was merged into it.
        let jobs = counts.new + counts.existing;
        (first_new, last_new) = (merged.first, merged.last);
        counts.new = (last_new - first_new + 1).max(0) as u64;
        counts.existing = jobs - counts.new;
    }

    // A model the file names but nobody configured runs on Ollama at $OLLAMA_HOST: say which,
    // so a typo or a missing `models set` shows now rather than as failed jobs.
    let mut unconfigured = Vec::new();
    for m in &models {
        if !db.model(m)?.configured {
            unconfigured.push(m.clone());
        }
    }
    if !unconfigured.is_empty() && format == InputFormat::OpenaiBatch {
        eprintln!(
            "llmbatch: not configured, so run on Ollama at {}: {} (`llmbatch models set NAME --backend openai --endpoint URL` for another server)",
            crate::models::ollama_host(),
            unconfigured.join(", ")
        );
    }
    let models: Vec<String> = models.into_iter().collect();
    let mut out = std::io::stdout().lock();
    match a.format.format {
        Format::Table if format == InputFormat::OpenaiBatch => writeln!(
            out,
            "batch {batch}: {} new, {} already queued ({} requests; models: {})",
            counts.new,
            counts.existing,
            counts.items,
            models.join(", ")
        )?,
        Format::Table => writeln!(
            out,
            "batch {batch}: {} new, {} already queued ({} items × {} models{})",
            counts.new,
            counts.existing,
            counts.items,
            models.len(),
            if a.repeat > 1 {
                format!(" × {} repeats", a.repeat)
            } else {
                String::new()
            }
        )?,
        Format::Ids => {
            for id in first_new..=last_new {
                writeln!(out, "{id}")?;
            }
        }
        f => {
            let mut t = Table::new(
                "enqueue",
                "Enqueued",
                &["batch", "new", "existing", "items", "models", "repeat"],
            );
            t.push(vec![
                json!(batch),
                json!(counts.new),
                json!(counts.existing),
                json!(counts.items),
                json!(models.join(",")),
                json!(a.repeat),
            ]);
            render(&[t], f, &mut out)?;
        }
    }
    Ok(0)
}

fn open_input(input: &str) -> Result<(String, Box<dyn Read>)> {
    if input == "-" {
        return Ok(("stdin".into(), Box::new(std::io::stdin())));
    }
    if Path::new(input).is_dir() {
        usage!("cannot read {input}: it is a directory (give a CSV or JSONL file, or - for stdin)");
    }
    let file = std::fs::File::open(input)
        .map_err(|e| crate::error::UsageError(format!("cannot read {input}: {e}")))?;
    Ok((input.to_string(), Box::new(file)))
}

/// A Batch API file by its first line (an object with `custom_id` and `body`); otherwise by
/// extension; for stdin or an unknown extension, by the first character (`{` = JSONL).
fn detect_format(input: &str, reader: &mut BufReader<Box<dyn Read>>) -> Result<InputFormat> {
    let head = reader.fill_buf()?;
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let first_line = head
        .split(|b| *b == b'\n')
        .find(|l| !l.trim_ascii().is_empty());
    if let Some(Ok(Value::Object(first))) = first_line.map(serde_json::from_slice::<Value>) {
        if first.contains_key("custom_id") && first.contains_key("body") {
            return Ok(InputFormat::OpenaiBatch);
        }
    }
    let ext = Path::new(input)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("jsonl" | "ndjson" | "json") => return Ok(InputFormat::Jsonl),
        Some("csv") => return Ok(InputFormat::Csv),
        Some("tsv" | "tab") => return Ok(InputFormat::Tsv),
        _ => {}
    }
    let head = reader.fill_buf()?;
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let first = head.iter().find(|b| !b.is_ascii_whitespace());
    Ok(if first == Some(&b'{') {
        InputFormat::Jsonl
    } else {
        InputFormat::Csv
    })
}

fn default_batch(input: &str) -> String {
    if input == "-" {
        return "stdin".into();
    }
    Path::new(input)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "default".into())
}

fn read_records(
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
fn first_line_of(name: &str, format: InputFormat, id: &str) -> Option<u64> {
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

/// Records written per statement: one multi-row insert per chunk keeps the database cursors open
/// across rows (a row per statement cost half the time of a million-prompt enqueue).
const CHUNK: usize = 128;

/// Writes items and jobs in chunks, counting new and existing ones.
struct Sink<'a> {
    tx: &'a dyn Enqueue,
    batch: &'a str,
    models: &'a [String],
    template: Option<&'a str>,
    name: &'a str,
    /// Jobs per item and model (`--repeat`), numbered 1..repeats.
    repeats: i64,
    /// Records waiting for the next chunk, with their rendered prompt and stored columns.
    pending: Vec<(Record, Stored)>,
    format: InputFormat,
    /// Every model a job was queued for (or found queued).
    models_seen: BTreeSet<String>,
}

/// An item's columns as stored: the prompt (for a chat item, the rendered conversation) and
/// the JSON texts of its variables, messages and options.
struct Stored {
    prompt: String,
    vars: String,
    messages: Option<String>,
    options: Option<String>,
}

impl<'a> Sink<'a> {
    fn new(
        tx: &'a dyn Enqueue,
        batch: &'a str,
        models: &'a [String],
        template: Option<&'a str>,
        name: &'a str,
    ) -> Result<Sink<'a>> {
        if let Some(m) = models.iter().find(|m| m.trim().is_empty()) {
            usage!("--model {m:?}: a model name cannot be empty");
        }
        Ok(Sink {
            tx,
            batch,
            models,
            template,
            name,
            repeats: 1,
            pending: Vec::with_capacity(CHUNK),
            format: InputFormat::Csv,
            models_seen: BTreeSet::new(),
        })
    }

    fn add(&mut self, mut rec: Record, counts: &mut Counts) -> Result<()> {
        self.take_messages(&mut rec)?;
        if self.models.is_empty() && rec.model.is_none() {
            usage!(
                "{} line {}: the request names no body.model: add one, or give --model",
                self.name,
                rec.line
            );
        }
        let prompt = match rec.messages.as_mut() {
            Some(messages) => {
                if let Some(t) = self.template {
                    let text = self.render(t, &rec.vars, rec.line)?;
                    crate::chat::set_last_user(messages, text);
                }
                crate::chat::render(messages)
            }
            None => self.prompt(&rec)?,
        };
        let stored = Stored {
            prompt,
            vars: serde_json::to_string(&rec.vars)?,
            messages: rec
                .messages
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            options: rec
                .options
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        };
        self.pending.push((rec, stored));
        if self.pending.len() >= CHUNK {
            self.flush(counts)?;
        }
        Ok(())
    }

    /// Writes the pending records: items (an item already there must have the same prompt),
    /// then one job per item and model, in input order.
    fn flush(&mut self, counts: &mut Counts) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        let items: Vec<NewItem> = self
            .pending
            .iter()
            .map(|(rec, st)| NewItem {
                id: &rec.id,
                prompt: &st.prompt,
                vars: &st.vars,
                messages: st.messages.as_deref(),
                options: st.options.as_deref(),
            })
            .collect();
        if let Some(found) = self.tx.add_items(self.batch, &items)? {
            // Some ids were there already (or twice in this input): an item never changes
            // once queued, so each must come again exactly as stored.
            for ((rec, st), old) in self.pending.iter().zip(found) {
                let old = Stored {
                    prompt: old.prompt,
                    vars: old.vars,
                    messages: old.messages,
                    options: old.options,
                };
                let differs = differences(&old, st, &rec.vars);
                if differs.is_empty() {
                    continue;
                }
                let what = differs.join(", ");
                if self.tx.queued_before(self.batch, &rec.id)? {
                    usage!(
                        "{} line {}: item {:?} is already in batch {:?} with a different {what}; a queued item never changes (its outputs were made from it): enqueue the changed input under another --batch",
                        self.name, rec.line, rec.id, self.batch
                    );
                }
                let first = match first_line_of(self.name, self.format, &rec.id) {
                    Some(line) => format!("line {line}"),
                    None => "an earlier record".to_string(),
                };
                usage!(
                    "{} line {}: item {:?} repeats {first} with a different {what}: ids must be unique within an input",
                    self.name, rec.line, rec.id
                );
            }
        }
        counts.items += n as u64;
        // An explicit --model list overrides the model a Batch API line names.
        let pairs: Vec<(&Record, &String)> = self
            .pending
            .iter()
            .flat_map(|(rec, _)| {
                match (&rec.model, self.models.is_empty()) {
                    (Some(own), true) => std::slice::from_ref(own).iter(),
                    _ => self.models.iter(),
                }
                .map(move |m| (rec, m))
            })
            .collect();
        for (_, m) in &pairs {
            if !self.models_seen.contains(*m) {
                self.models_seen.insert(m.to_string());
            }
        }
        // Repeats of one item and model are adjacent, so a sweep runs item by item.
        let mut keys: Vec<(&str, &str, i64)> = Vec::new();
        for (rec, model) in &pairs {
            for repeat in 1..=self.repeats {
                keys.push((&rec.id, model, repeat));
            }
        }
        let jobs = keys.len();
        let new = self.tx.add_jobs(self.batch, &keys)?;
        counts.new += new;
        counts.existing += jobs as u64 - new;
        self.pending.clear();
        Ok(())
    }

    /// A `messages` field or column (JSON text in a CSV) makes a chat item.
    fn take_messages(&self, rec: &mut Record) -> Result<()> {
        let Some(raw) = rec.vars.remove("messages") else {
            return Ok(());
        };
        let value = match raw {
            Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                crate::error::UsageError(format!(
                    "{} line {}: field `messages` is not JSON: {e}",
                    self.name, rec.line
                ))
            })?,
            other => other,
        };
        let messages = crate::chat::check(&value).map_err(|why| {
            crate::error::UsageError(format!("{} line {}: {why}", self.name, rec.line))
        })?;
        rec.messages = Some(messages);
        Ok(())
    }

    fn render(&self, t: &str, vars: &Map<String, Value>, line: u64) -> Result<String> {
        template::render(t, &template::vars_lookup(vars)).map_err(|e| {
            crate::error::UsageError(format!(
                "{} line {}: {e} (fields: {})",
                self.name,
                line,
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
            .into()
        })
    }

    fn prompt(&self, rec: &Record) -> Result<String> {
        match self.template {
            Some(t) => self.render(t, &rec.vars, rec.line),
            None => match rec.vars.get("prompt") {
                Some(Value::String(p)) if !p.trim().is_empty() => Ok(p.clone()),
                Some(Value::String(_)) => {
                    usage!("{} line {}: field `prompt` is empty", self.name, rec.line)
                }
                Some(other) => usage!(
                    "{} line {}: field `prompt` must be text, not {other}",
                    self.name,
                    rec.line
                ),
                None => usage!(
                    "{} line {}: no `prompt` or `messages` field (give one, or a --template using the fields {})",
                    self.name,
                    rec.line,
                    rec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
}

/// What differs between a stored item and a record: `prompt`, `messages`, `options` and the
/// names of changed fields.
fn differences(old: &Stored, new: &Stored, vars: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    if old.prompt != new.prompt {
        out.push("prompt".to_string());
    }
    if old.messages != new.messages {
        out.push("messages".to_string());
    }
    if old.options != new.options {
        out.push("request options".to_string());
    }
    if old.vars != new.vars {
        let old: Map<String, Value> = serde_json::from_str(&old.vars).unwrap_or_default();
        let mut keys: Vec<&String> = old.keys().chain(vars.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if k != "prompt" && old.get(k) != vars.get(k) {
                out.push(format!("field `{k}`"));
            }
        }
        if out.is_empty() && old != *vars {
            out.push("fields".to_string());
        }
    }
    out
}
