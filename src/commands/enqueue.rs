//! `enqueue`: prompts (CSV or JSONL, file or stdin) × models into jobs, in one transaction.
//! Idempotent: a (batch, item, model) already queued is counted, not added again.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::cli::{EnqueueArgs, Format, InputFormat};
use crate::exec::template;
use crate::usage;
use crate::util::now_ms;

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

pub fn run(a: &EnqueueArgs, conn: &mut Connection) -> Result<u8> {
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

    // Each job's item is written just before it in this same transaction, so the foreign key
    // holds by construction: checking it row by row cost a tenth of a large enqueue. (On an
    // error the transaction rolls back and the command ends; nothing else uses the connection.)
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut counts = Counts::default();
    {
        let mut sink = Sink::new(&tx, &batch, &a.models, template.as_deref(), &name)?;
        sink.repeats = a.repeat;
        {
            let mut each = |rec: Record| sink.add(rec, &mut counts);
            match format {
                InputFormat::Csv => read_csv(reader, &name, &mut each)?,
                InputFormat::Jsonl => read_jsonl(reader, &name, &mut each)?,
            }
        }
        sink.flush(&mut counts)?;
    }
    tx.commit().context("cannot commit the enqueued jobs")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;

    match a.format.format {
        Format::Json => crate::outln!(
            "{}",
            json!({"batch": batch, "new": counts.new, "existing": counts.existing, "items": counts.items, "models": a.models, "repeat": a.repeat})
        )?,
        _ => crate::outln!(
            "batch {batch}: {} new, {} already queued ({} items × {} models{})",
            counts.new,
            counts.existing,
            counts.items,
            a.models.len(),
            if a.repeat > 1 {
                format!(" × {} repeats", a.repeat)
            } else {
                String::new()
            }
        )?,
    }
    Ok(0)
}

fn open_input(input: &str) -> Result<(String, Box<dyn Read>)> {
    if input == "-" {
        return Ok(("stdin".into(), Box::new(std::io::stdin())));
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
        Some("csv" | "tsv") => return Ok(InputFormat::Csv),
        _ => {}
    }
    let head = reader.fill_buf()?;
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

fn read_csv(
    reader: impl Read,
    name: &str,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(reader);
    let headers: Vec<String> = csv
        .headers()
        .map_err(|e| crate::error::UsageError(format!("{name}: cannot read the CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    if headers.iter().all(|h| h.is_empty()) {
        usage!("{name}: the CSV has no header row (expected columns such as id,prompt)");
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
        let text =
            line.map_err(|e| crate::error::UsageError(format!("{name} line {line_no}: {e}")))?;
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
/// Job rows per INSERT: many models or repeats per record make more than one statement.
const JOB_ROWS: usize = 1024;

/// Writes items and jobs in chunks, counting new and existing ones.
struct Sink<'a> {
    tx: &'a rusqlite::Transaction<'a>,
    batch: &'a str,
    models: &'a [String],
    template: Option<&'a str>,
    name: &'a str,
    now: i64,
    /// Jobs per item and model (`--repeat`), numbered 1..repeats.
    repeats: i64,
    /// Records waiting for the next chunk, with their rendered prompt and variables JSON.
    pending: Vec<(Record, String, String)>,
}

impl<'a> Sink<'a> {
    fn new(
        tx: &'a rusqlite::Transaction<'a>,
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
            now: now_ms(),
            repeats: 1,
            pending: Vec::with_capacity(CHUNK),
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
        let rows = vec!["(?, ?, ?, ?)"; n].join(", ");
        let mut items = self.tx.prepare_cached(&format!(
            "INSERT OR IGNORE INTO items (batch, item_id, prompt, vars) VALUES {rows}"
        ))?;
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(n * 4);
        for (rec, prompt, vars) in &self.pending {
            args.extend([&self.batch as &dyn rusqlite::ToSql, &rec.id, prompt, vars]);
        }
        if items.execute(args.as_slice())? < n {
            // Some ids were there already (or twice in this chunk): each must have its prompt.
            let mut stored = self
                .tx
                .prepare_cached("SELECT prompt FROM items WHERE batch = ?1 AND item_id = ?2")?;
            for (rec, prompt, _) in &self.pending {
                let old: Option<String> = stored
                    .query_row(params![self.batch, rec.id], |r| r.get(0))
                    .optional()?;
                if old.as_deref() != Some(prompt.as_str()) {
                    usage!(
                        "{} line {}: item {:?} is already in batch {:?} with a different prompt (a duplicate id, or the input changed: use another --batch)",
                        self.name, rec.line, rec.id, self.batch
                    );
                }
            }
        }
        counts.items += n as u64;
        // Repeats of one item and model are adjacent, so a sweep runs item by item.
        let repeats: Vec<i64> = (1..=self.repeats).collect();
        let mut keys: Vec<(&String, &String, &i64)> = Vec::new();
        for (rec, _, _) in &self.pending {
            for model in self.models {
                for repeat in &repeats {
                    keys.push((&rec.id, model, repeat));
                }
            }
        }
        let jobs = keys.len();
        let mut new = 0u64;
        // Rows per statement stay well under SQLite's limit of bound variables.
        for part in keys.chunks(JOB_ROWS) {
            let rows = vec!["(?, ?, ?, 'generate', ?, ?, ?)"; part.len()].join(", ");
            let mut insert = self.tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO jobs (batch, item_id, model, kind, created_at, updated_at, repeat) VALUES {rows}"
            ))?;
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(part.len() * 6);
            for (id, model, repeat) in part {
                args.extend([
                    &self.batch as &dyn rusqlite::ToSql,
                    *id,
                    *model,
                    &self.now,
                    &self.now,
                    *repeat,
                ]);
            }
            new += insert.execute(args.as_slice())? as u64;
        }
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
