//! `enqueue`: prompts (CSV or JSONL, file or stdin) × models into jobs, in one transaction.
//! Idempotent: a (batch, item, model) already queued is counted, not added again.

use anyhow::Result;
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::cli::{EnqueueArgs, Format, InputFormat};
use crate::db::{Enqueue, NewItem, Store};
use crate::exec::template;
use crate::report::render::{render, Table};
use crate::usage;

/// One input record: where it came from, its id and variables.
struct Record {
    line: u64,
    id: String,
    vars: Map<String, Value>,
}

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
    let mut reader = BufReader::new(reader);
    let format = match a.input_format {
        Some(f) => f,
        None => detect_format(&a.input, &mut reader)?,
    };
    let batch = a.batch.clone().unwrap_or_else(|| default_batch(&a.input));
    if batch.trim().is_empty() {
        usage!("the batch name is empty: pass --batch NAME");
    }

    let mut tx = db.enqueue()?;
    let mut counts = Counts::default();
    {
        let mut sink = Sink::new(&mut *tx, &batch, &a.models, template.as_deref(), &name)?;
        sink.format = format;
        {
            let mut each = |rec: Record| sink.add(rec, &mut counts);
            read_records(reader, format, &name, &mut each)?;
        }
        sink.flush(&mut counts)?;
    }
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

    let mut out = std::io::stdout().lock();
    match a.format.format {
        Format::Table => writeln!(
            out,
            "batch {batch}: {} new, {} already queued ({} items × {} models)",
            counts.new,
            counts.existing,
            counts.items,
            a.models.len()
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
                &["batch", "new", "existing", "items", "models"],
            );
            t.push(vec![
                json!(batch),
                json!(counts.new),
                json!(counts.existing),
                json!(counts.items),
                json!(a.models.join(",")),
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

/// By extension; for stdin or an unknown extension, by the first character (`{` = JSONL).
fn detect_format(input: &str, reader: &mut BufReader<Box<dyn Read>>) -> Result<InputFormat> {
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
        each(Record { line, id, vars })?;
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
        })?;
    }
    Ok(())
}

/// Records written per statement: one multi-row INSERT per chunk keeps SQLite's cursors open
/// across rows (a row per statement cost half the time of a million-prompt enqueue).
const CHUNK: usize = 128;

/// Writes items and jobs in chunks, counting new and existing ones.
struct Sink<'a> {
    tx: &'a mut dyn Enqueue,
    batch: &'a str,
    models: &'a [String],
    template: Option<&'a str>,
    name: &'a str,
    /// Records waiting for the next chunk, with their rendered prompt and variables JSON.
    pending: Vec<(Record, String, String)>,
    format: InputFormat,
}

impl<'a> Sink<'a> {
    fn new(
        tx: &'a mut dyn Enqueue,
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
            pending: Vec::with_capacity(CHUNK),
            format: InputFormat::Csv,
        })
    }

    fn add(&mut self, rec: Record, counts: &mut Counts) -> Result<()> {
        let prompt = self.prompt(&rec)?;
        let vars = serde_json::to_string(&rec.vars)?;
        self.pending.push((rec, prompt, vars));
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
            .map(|(rec, prompt, vars)| NewItem {
                id: &rec.id,
                prompt,
                vars,
            })
            .collect();
        if let Some(stored) = self.tx.add_items(self.batch, &items)? {
            // Some ids were there already (or twice in this input): an item never changes
            // once queued, so each must come again exactly as stored.
            for ((rec, prompt, vars), old) in self.pending.iter().zip(stored) {
                let differs = differences(&old.prompt, &old.vars, prompt, vars, &rec.vars);
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
        let jobs = n * self.models.len();
        let ids: Vec<&str> = self
            .pending
            .iter()
            .map(|(rec, _, _)| rec.id.as_str())
            .collect();
        let new = self.tx.add_jobs(self.batch, &ids, self.models)?;
        counts.new += new;
        counts.existing += jobs as u64 - new;
        self.pending.clear();
        Ok(())
    }

    fn prompt(&self, rec: &Record) -> Result<String> {
        match self.template {
            Some(t) => template::render(t, &template::vars_lookup(&rec.vars)).map_err(|e| {
                crate::error::UsageError(format!(
                    "{} line {}: {e} (fields: {})",
                    self.name,
                    rec.line,
                    rec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
                .into()
            }),
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
                    "{} line {}: no `prompt` field (give one, or a --template using the fields {})",
                    self.name,
                    rec.line,
                    rec.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            },
        }
    }
}

/// What differs between a stored item and a record: `prompt` and the names of changed fields.
fn differences(
    old_prompt: &str,
    old_vars: &str,
    prompt: &str,
    vars_text: &str,
    vars: &Map<String, Value>,
) -> Vec<String> {
    let mut out = Vec::new();
    if old_prompt != prompt {
        out.push("prompt".to_string());
    }
    if old_vars != vars_text {
        let old: Map<String, Value> = serde_json::from_str(old_vars).unwrap_or_default();
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
