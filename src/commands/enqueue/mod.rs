//! `enqueue`: prompts (CSV, TSV, JSONL or an OpenAI Batch API file; file or stdin) × models
//! into jobs, in one transaction. Idempotent: a (batch, item, model) already queued is counted,
//! not added again.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::cli::{EnqueueArgs, Format, InputFormat};
use crate::db::Store;
use crate::report::render::{render, Table};
use crate::usage;

mod read;
mod sink;

use read::{read_records, Record};
use sink::Sink;

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

    warn_unconfigured(db, &models, format)?;
    let models: Vec<String> = models.into_iter().collect();
    print_summary(a, format, &batch, &counts, &models, (first_new, last_new))?;
    Ok(0)
}

/// A model the file names but nobody configured runs on Ollama at $OLLAMA_HOST: say which,
/// so a typo or a missing `models set` shows now rather than as failed jobs.
fn warn_unconfigured(
    db: &mut dyn Store,
    models: &BTreeSet<String>,
    format: InputFormat,
) -> Result<()> {
    let mut unconfigured = Vec::new();
    for m in models {
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
    Ok(())
}

/// What was enqueued, in the chosen format (`ids`: the new job ids).
fn print_summary(
    a: &EnqueueArgs,
    format: InputFormat,
    batch: &str,
    counts: &Counts,
    models: &[String],
    (first_new, last_new): (i64, i64),
) -> Result<()> {
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
    Ok(())
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
