//! `export`: outputs and grades as JSONL, CSV or a GNU parallel joblog. One record per
//! generated job (joblog: one row per attempt), streamed row by row so memory stays flat.

use anyhow::Result;
use rusqlite::{params_from_iter, Connection, Statement};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use crate::cli::{ExportArgs, ExportFormat};
use crate::db::Filter;

/// Token counts under the names the backends use (normalized, Ollama native, OpenAI usage).
const PROMPT_TOKENS: &str = "CASE WHEN json_valid(a.timings) THEN COALESCE(
    json_extract(a.timings, '$.prompt_tokens'), json_extract(a.timings, '$.prompt_eval_count'),
    json_extract(a.timings, '$.usage.prompt_tokens')) END";
const OUTPUT_TOKENS: &str = "CASE WHEN json_valid(a.timings) THEN COALESCE(
    json_extract(a.timings, '$.output_tokens'), json_extract(a.timings, '$.completion_tokens'),
    json_extract(a.timings, '$.eval_count'), json_extract(a.timings, '$.usage.completion_tokens')) END";

pub fn run(a: &ExportArgs, db: &mut crate::db::Db) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, db)?;
    let conn = &db.conn;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = match a.format {
        ExportFormat::Jsonl => jsonl(conn, &filter, a.with_grades, &mut out),
        ExportFormat::Csv => csv_records(conn, &filter, a.with_grades, &mut out),
        ExportFormat::Joblog => joblog(conn, &filter, &mut out),
    }
    .and_then(|n| {
        out.flush()?;
        Ok(n)
    })?;
    log::debug!("exported {written} record(s)");
    Ok(0)
}

/// One generated job as exported.
struct Record {
    job_id: i64,
    batch: String,
    item_id: String,
    model: String,
    vars: Value,
    prompt: String,
    output: Option<String>,
    reasoning: Option<String>,
    state: String,
    attempts: i64,
    last_outcome: Option<String>,
    error: Option<String>,
    latency_ms: Option<i64>,
    /// Streamed answers: time to first token and per output token (ms).
    ttft_ms: Option<f64>,
    tpot_ms: Option<f64>,
    finished_at: Option<i64>,
    prompt_tokens: Option<i64>,
    output_tokens: Option<i64>,
    /// The answer was cut at a length (the model's limit, or llmbatch's 16 MiB capture bound).
    truncated: bool,
}

/// Streams the generated jobs in scope, in id order, to `each`.
fn each_record(
    conn: &Connection,
    filter: &Filter,
    each: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<u64> {
    let (cond, args) = filter.sql("j");
    let sql = format!(
        "SELECT j.id, j.batch, j.item_id, j.model, i.vars, i.prompt, j.state, j.attempts,
                j.last_outcome, COALESCE(j.last_error, a.error), a.output, a.reasoning,
                a.duration_ms, a.finished_at, {PROMPT_TOKENS}, {OUTPUT_TOKENS},
                CASE WHEN json_valid(a.timings)
                     THEN json_extract(a.timings, '$.done_reason') = 'length' ELSE 0 END,
                a.ttft_ms, a.tpot_ms
         FROM jobs j JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
              LEFT JOIN attempts a ON a.id = j.attempt_id AND j.state = 'done'
         WHERE j.kind = 'generate'{cond} ORDER BY j.id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let vars: String = r.get(4)?;
        each(Record {
            job_id: r.get(0)?,
            batch: r.get(1)?,
            item_id: r.get(2)?,
            model: r.get(3)?,
            vars: serde_json::from_str(&vars).unwrap_or(Value::Object(Map::new())),
            prompt: r.get(5)?,
            state: r.get(6)?,
            attempts: r.get(7)?,
            last_outcome: r.get(8)?,
            error: r.get(9)?,
            output: r.get(10)?,
            reasoning: r.get(11)?,
            latency_ms: r.get(12)?,
            finished_at: r.get(13)?,
            prompt_tokens: r.get(14)?,
            output_tokens: r.get(15)?,
            truncated: r.get::<_, Option<bool>>(16)?.unwrap_or(false),
            ttft_ms: r.get(17)?,
            tpot_ms: r.get(18)?,
        })?;
        n += 1;
    }
    Ok(n)
}

/// One grade of an output (a grade job, graded or not yet).
struct Grade {
    grader: String,
    rubric: String,
    state: String,
    pass: Option<bool>,
    score: Option<f64>,
    reason: Option<String>,
    fields: Value,
}

fn grades_stmt(conn: &Connection) -> Result<Statement<'_>> {
    Ok(conn.prepare(
        "SELECT gj.model, r.name, gj.state, g.pass, g.score, g.reason, g.fields
         FROM jobs gj JOIN rubrics r ON r.id = gj.rubric_id LEFT JOIN grades g ON g.job_id = gj.id
         WHERE gj.kind = 'grade' AND gj.parent_id = ?1 ORDER BY gj.model, r.name, gj.id",
    )?)
}

fn grades_of(stmt: &mut Statement, job_id: i64) -> Result<Vec<Grade>> {
    let rows = stmt.query_map([job_id], |r| {
        let fields: Option<String> = r.get(6)?;
        Ok(Grade {
            grader: r.get(0)?,
            rubric: r.get(1)?,
            state: r.get(2)?,
            pass: r.get::<_, Option<i64>>(3)?.map(|p| p != 0),
            score: r.get(4)?,
            reason: r.get(5)?,
            fields: fields
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or(Value::Null),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn jsonl(
    conn: &Connection,
    filter: &Filter,
    with_grades: bool,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut grades = grades_stmt(conn)?;
    each_record(conn, filter, &mut |rec| {
        let mut obj = json!({
            "job_id": rec.job_id,
            "batch": rec.batch,
            "item_id": rec.item_id,
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
            "finished_at": rec.finished_at.map(super::iso_time),
            "prompt_tokens": rec.prompt_tokens,
            "output_tokens": rec.output_tokens,
            "truncated": rec.truncated,
        });
        if with_grades {
            let list: Vec<Value> = grades_of(&mut grades, rec.job_id)?
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

fn csv_records(
    conn: &Connection,
    filter: &Filter,
    with_grades: bool,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut header: Vec<String> = [
        "job_id",
        "batch",
        "item_id",
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Grades as columns: `<grader>_pass`, `_score`, `_reason` per (grader, rubric) in scope.
    let slots = if with_grades {
        grade_slots(conn, filter)?
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
    let mut grades = grades_stmt(conn)?;
    let n = each_record(conn, filter, &mut |rec| {
        let num = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_default();
        let secs = |v: Option<f64>| {
            v.map(|ms| format!("{:.6}", ms / 1000.0))
                .unwrap_or_default()
        };
        let mut row = vec![
            rec.job_id.to_string(),
            rec.batch,
            rec.item_id,
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
            let mut cells: Vec<String> = vec![String::new(); slots.len() * 3];
            for g in grades_of(&mut grades, rec.job_id)? {
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
            row.extend(cells);
        }
        w.write_record(&row)?;
        Ok(())
    })?;
    w.flush()?;
    Ok(n)
}

/// (grader, rubric) → column prefix: the grader's name, or `grader:rubric` when several rubrics
/// are in scope.
fn grade_slots(conn: &Connection, filter: &Filter) -> Result<BTreeMap<(String, String), String>> {
    let (cond, args) = filter.sql("p");
    let mut stmt = conn.prepare(&format!(
        "SELECT DISTINCT gj.model, r.name FROM jobs gj JOIN jobs p ON p.id = gj.parent_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.kind = 'grade'{cond}"
    ))?;
    let pairs: Vec<(String, String)> = stmt
        .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
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
fn joblog(conn: &Connection, filter: &Filter, out: &mut dyn Write) -> Result<u64> {
    writeln!(
        out,
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    )?;
    let (cond, args) = filter.sql("j");
    let sql = format!(
        "SELECT a.job_id, a.endpoint, a.started_at, a.duration_ms, length(CAST(i.prompt AS BLOB)),
                COALESCE(length(CAST(a.output AS BLOB)), 0), a.outcome, a.exit_code, a.signal,
                j.model, j.batch, j.item_id
         FROM attempts a JOIN jobs j ON j.id = a.job_id
              JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         WHERE j.kind = 'generate' AND a.outcome IS NOT NULL{cond}
         ORDER BY a.started_at, a.id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut n = 0;
    let clean = |s: String| s.replace(['\t', '\n', '\r'], " ");
    while let Some(r) = rows.next()? {
        let endpoint: Option<String> = r.get(1)?;
        let started: i64 = r.get(2)?;
        let duration: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
        let outcome: String = r.get(6)?;
        let exit_code: Option<i64> = r.get(7)?;
        let signal: Option<i64> = r.get(8)?;
        let (exitval, sig) = match outcome.as_str() {
            "ok" => (0, 0),
            "exit" => (exit_code.unwrap_or(1), 0),
            "timeout" => (-1, signal.unwrap_or(15)),
            _ => (-1, signal.unwrap_or(0)),
        };
        writeln!(
            out,
            "{}\t{}\t{}.{:03}\t{}.{:03}\t{}\t{}\t{exitval}\t{sig}\t{}",
            r.get::<_, i64>(0)?,
            clean(
                endpoint
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| ":".into())
            ),
            started.div_euclid(1000),
            started.rem_euclid(1000),
            duration / 1000,
            duration % 1000,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            clean(format!(
                "{} {}/{}",
                r.get::<_, String>(9)?,
                r.get::<_, String>(10)?,
                r.get::<_, String>(11)?
            )),
        )?;
        n += 1;
    }
    Ok(n)
}
