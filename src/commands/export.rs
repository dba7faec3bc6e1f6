//! `export`: outputs and grades as JSONL, CSV, a GNU parallel joblog or an OpenAI Batch API
//! output file. One record per generated job (joblog: one row per attempt), streamed row by row
//! so memory stays flat.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use crate::cli::{ExportArgs, ExportFormat};
use crate::db::{AttemptRow, BatchResultRow, ExportSource, Filter};

pub fn run(a: &ExportArgs, db: &dyn crate::db::Store) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, db)?;
    let src: &dyn ExportSource = db;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = match a.format {
        ExportFormat::Jsonl => jsonl(src, &filter, a.with_grades, &mut out),
        ExportFormat::Csv => csv_records(src, &filter, a.with_grades, &mut out),
        ExportFormat::Joblog => joblog(src, &filter, &mut out),
        ExportFormat::OpenaiBatch => openai_batch(src, &filter, &mut out),
    }
    .and_then(|n| {
        out.flush()?;
        Ok(n)
    })?;
    log::debug!("exported {written} record(s)");
    Ok(0)
}

fn jsonl(
    src: &dyn ExportSource,
    filter: &Filter,
    with_grades: bool,
    out: &mut dyn Write,
) -> Result<u64> {
    src.each_output(filter, &mut |rec| {
        let mut obj = json!({
            "job_id": rec.job_id,
            "batch": rec.batch,
            "item_id": rec.item_id,
            "repeat": rec.repeat,
            "model": rec.model,
            "vars": rec.vars,
            "prompt": rec.prompt,
            "output": rec.output,
            "reasoning": rec.reasoning,
            "state": rec.state,
            "attempts": rec.attempts,
            "last_outcome": rec.last_outcome,
            "error": rec.error,
            "latency_s": rec.latency_ms.map(|ms| ms as f64 / 1000.0),
            "ttft_s": rec.ttft_ms.map(|ms| ms / 1000.0),
            "tpot_s": rec.tpot_ms.map(|ms| ms / 1000.0),
            "finished_at": rec.finished_at.map(crate::timefmt::iso_time),
            "prompt_tokens": rec.prompt_tokens,
            "output_tokens": rec.output_tokens,
            "truncated": rec.truncated,
        });
        if let Some(messages) = rec.messages {
            obj["messages"] = messages;
        }
        if with_grades {
            let list: Vec<Value> = src
                .grades_of(rec.job_id)?
                .into_iter()
                .map(|g| {
                    json!({
                        "grader": g.grader,
                        "rubric": g.rubric,
                        "state": g.state,
                        "pass": g.pass,
                        "score": g.score,
                        "reason": g.reason,
                        "fields": g.fields,
                    })
                })
                .collect();
            obj["grades"] = Value::Array(list);
        }
        serde_json::to_writer(&mut *out, &obj)?;
        out.write_all(b"\n")?;
        Ok(())
    })
}

/// The CSV columns before the grade columns.
const CSV_COLUMNS: [&str; 18] = [
    "job_id",
    "batch",
    "item_id",
    "repeat",
    "model",
    "state",
    "attempts",
    "last_outcome",
    "latency_s",
    "ttft_s",
    "tpot_s",
    "prompt_tokens",
    "output_tokens",
    "truncated",
    "prompt",
    "output",
    "vars",
    "error",
];

fn csv_records(
    src: &dyn ExportSource,
    filter: &Filter,
    with_grades: bool,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut header: Vec<String> = CSV_COLUMNS.iter().map(|s| s.to_string()).collect();
    // Grades as columns: `<grader>_pass`, `_score`, `_reason` per (grader, rubric) in scope.
    let slots = if with_grades {
        grade_slots(src, filter)?
    } else {
        BTreeMap::new()
    };
    for name in slots.values() {
        for col in ["pass", "score", "reason"] {
            header.push(format!("{name}_{col}"));
        }
    }
    let mut w = csv::Writer::from_writer(out);
    w.write_record(&header)?;
    let n = src.each_output(filter, &mut |rec| {
        let num = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
        let secs = |v: Option<f64>| {
            v.map(|ms| format!("{:.6}", ms / 1000.0))
                .unwrap_or_default()
        };
        let mut row = vec![
            rec.job_id.to_string(),
            rec.batch,
            rec.item_id,
            rec.repeat.to_string(),
            rec.model,
            rec.state,
            rec.attempts.to_string(),
            rec.last_outcome.unwrap_or_default(),
            rec.latency_ms
                .map(|ms| format!("{:.3}", ms as f64 / 1000.0))
                .unwrap_or_default(),
            secs(rec.ttft_ms),
            secs(rec.tpot_ms),
            num(rec.prompt_tokens),
            num(rec.output_tokens),
            (if rec.truncated { "yes" } else { "no" }).to_string(),
            rec.prompt,
            rec.output.unwrap_or_default(),
            rec.vars.to_string(),
            rec.error.unwrap_or_default(),
        ];
        if !slots.is_empty() {
            row.extend(grade_cells(src, &slots, rec.job_id)?);
        }
        w.write_record(&row)?;
        Ok(())
    })?;
    w.flush()?;
    Ok(n)
}

/// A job's grades as `pass`, `score` and `reason` cells, three per grade slot.
fn grade_cells(
    src: &dyn ExportSource,
    slots: &BTreeMap<(String, String), String>,
    job_id: i64,
) -> Result<Vec<String>> {
    let mut cells: Vec<String> = vec![String::new(); slots.len() * 3];
    for g in src.grades_of(job_id)? {
        let Some(i) = slots
            .keys()
            .position(|k| *k == (g.grader.clone(), g.rubric.clone()))
        else {
            continue;
        };
        cells[i * 3] = match g.pass {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => String::new(),
        };
        cells[i * 3 + 1] = g.score.map(|s| s.to_string()).unwrap_or_default();
        cells[i * 3 + 2] = g.reason.unwrap_or_default();
    }
    Ok(cells)
}

/// (grader, rubric) → column prefix: the grader's name, or `grader:rubric` when several rubrics
/// are in scope.
fn grade_slots(
    src: &dyn ExportSource,
    filter: &Filter,
) -> Result<BTreeMap<(String, String), String>> {
    let pairs = src.grade_pairs(filter)?;
    let rubrics: std::collections::BTreeSet<&String> = pairs.iter().map(|p| &p.1).collect();
    let several = rubrics.len() > 1;
    Ok(pairs
        .iter()
        .map(|(g, r)| {
            let name = if several {
                format!("{g}:{r}")
            } else {
                g.clone()
            };
            ((g.clone(), r.clone()), name)
        })
        .collect())
}

/// GNU parallel's `--joblog` layout, one row per finished attempt of the generated jobs in
/// scope. Seq is the job id (retries share it); Host is `:` for a local command, else the
/// endpoint; Exitval is 0 for `ok`, the exit code for `exit`, -1 for any other failure;
/// Signal is the signal that ended the child (15 for a timeout kill).
fn joblog(src: &dyn ExportSource, filter: &Filter, out: &mut dyn Write) -> Result<u64> {
    writeln!(
        out,
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    )?;
    let clean = |s: String| s.replace(['\t', '\n', '\r'], " ");
    src.each_attempt(filter, &mut |r: AttemptRow| {
        let duration = r.duration_ms.unwrap_or(0);
        let (exitval, sig) = match r.outcome.as_str() {
            "ok" => (0, 0),
            "exit" => (r.exit_code.unwrap_or(1), 0),
            "timeout" => (-1, r.signal.unwrap_or(15)),
            _ => (-1, r.signal.unwrap_or(0)),
        };
        writeln!(
            out,
            "{}\t{}\t{}.{:03}\t{}.{:03}\t{}\t{}\t{exitval}\t{sig}\t{}",
            r.job_id,
            clean(
                r.endpoint
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| ":".into())
            ),
            r.started_at.div_euclid(1000),
            r.started_at.rem_euclid(1000),
            duration / 1000,
            duration % 1000,
            r.sent,
            r.received,
            clean(format!("{} {}/{}", r.model, r.batch, r.item_id)),
        )?;
        Ok(())
    })
}

/// The OpenAI Batch API's output file: one line per done or failed generated job, so scripts
/// that read Batch API results work unchanged. The job's item id is the `custom_id`; jobs still
/// pending or running are left out and counted on stderr.
fn openai_batch(src: &dyn ExportSource, filter: &Filter, out: &mut dyn Write) -> Result<u64> {
    let (mut n, mut unfinished) = (0u64, 0u64);
    src.each_batch_result(filter, &mut |r| {
        let line = match r.state.as_str() {
            "done" => batch_success(r),
            "failed" | "cancelled" => batch_error(r),
            _ => {
                unfinished += 1;
                return Ok(());
            }
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        n += 1;
        Ok(())
    })?;
    if unfinished > 0 {
        eprintln!(
            "llmbatch: {unfinished} job(s) not finished yet (pending or running) left out; `llmbatch run` finishes them"
        );
    }
    Ok(n)
}

/// A done job: status 200 and a chat.completion body, as the server would have answered.
fn batch_success(r: BatchResultRow) -> Value {
    let attempt = r.attempt_id.unwrap_or(0);
    let mut message = json!({"role": "assistant", "content": r.output});
    if let Some(reasoning) = r.reasoning {
        message["reasoning_content"] = json!(reasoning);
    }
    let usage = json!({
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.output_tokens,
        "total_tokens": r.prompt_tokens.zip(r.output_tokens).map(|(p, o)| p + o),
    });
    let finish = r.done_reason.unwrap_or_else(|| "stop".into());
    json!({
        "id": format!("llmbatch-{}", r.job_id),
        "custom_id": r.item_id,
        "response": {
            "status_code": 200,
            "request_id": format!("llmbatch-attempt-{attempt}"),
            "body": {
                "id": format!("chatcmpl-llmbatch-{attempt}"),
                "object": "chat.completion",
                "created": r.finished_at.map(|ms| ms.div_euclid(1000)),
                "model": r.model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            },
        },
        "error": null,
    })
}

/// A failed (or cancelled) job: `error` holds the last outcome and its message; `response`
/// only when the server answered with an HTTP status, its body then the error.
fn batch_error(r: BatchResultRow) -> Value {
    let state = &r.state;
    let code = r.last_outcome.unwrap_or_else(|| state.to_string());
    let message = r.error.unwrap_or_else(|| format!("the job was {state}"));
    let response = match r.http_status {
        Some(status) => json!({
            "status_code": status,
            "request_id": format!("llmbatch-attempt-{}", r.attempt_id.unwrap_or(0)),
            "body": {"error": {"message": message, "type": code}},
        }),
        None => Value::Null,
    };
    json!({
        "id": format!("llmbatch-{}", r.job_id),
        "custom_id": r.item_id,
        "response": response,
        "error": {"code": code, "message": message},
    })
}
