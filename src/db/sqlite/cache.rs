//! `run --cache` in SQLite: the walk over runnable jobs, the lookup by request hash, and
//! answering a job from an earlier attempt.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use crate::db::store::Filter;
use crate::domain::{Claim, Finish, JobKind, Metrics, Outcome};
use crate::util::now_ms;

/// The walk goes by job id (the `+` keeps SQLite off the claim index, which would read and
/// sort every pending job per page), so the pages of one pass read each job once.
pub fn runnable(
    conn: &Connection,
    model: &str,
    filter: &Filter,
    after: i64,
    limit: usize,
) -> Result<Vec<Claim>> {
    let (cond, args) = filter.sql("j");
    let sql = format!(
        "SELECT j.id, j.kind, j.batch, j.item_id, i.prompt, i.vars, j.charged, j.max_attempts,
                j.parent_id, j.rubric_id, pa.output, j.repeat, i.messages, i.options
         FROM jobs j
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         LEFT JOIN jobs p ON p.id = j.parent_id
         LEFT JOIN attempts pa ON pa.id = p.attempt_id
         WHERE +j.state = 'pending' AND +j.model = ? AND j.id > ?
           AND (j.parent_id IS NULL OR p.state = 'done'){cond}
         ORDER BY j.id LIMIT ?"
    );
    let mut all = vec![SqlValue::Text(model.to_string()), SqlValue::Integer(after)];
    all.extend(args);
    all.push(SqlValue::Integer(limit as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(all), |r| {
        Ok(Claim {
            job_id: r.get(0)?,
            attempt_id: 0,
            number: 0,
            token: 0,
            started_at: 0,
            kind: JobKind::parse(&r.get::<_, String>(1)?).unwrap_or(JobKind::Generate),
            batch: r.get(2)?,
            item_id: r.get(3)?,
            repeat: r.get(11)?,
            model: model.to_string(),
            endpoint: String::new(),
            prompt: r.get(4)?,
            vars: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            messages: r
                .get::<_, Option<String>>(12)?
                .and_then(|m| serde_json::from_str(&m).ok()),
            options: r
                .get::<_, Option<String>>(13)?
                .and_then(|o| serde_json::from_str(&o).ok())
                .unwrap_or_default(),
            charged: r.get(6)?,
            max_attempts: r.get(7)?,
            parent_id: r.get(8)?,
            rubric_id: r.get(9)?,
            parent_output: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The newest `ok` attempt answered under `key`, as a `cached` finish.
pub fn cached_answer(conn: &Connection, key: &str) -> Result<Option<Finish>> {
    let row = conn
        .prepare_cached(
            "SELECT id, output, reasoning, raw_output, timings, output_tokens FROM attempts
             WHERE cache_key = ?1 AND outcome = 'ok' ORDER BY id DESC LIMIT 1",
        )?
        .query_row([key], |r| {
            let mut f = Finish::new(Outcome::Cached, 0);
            f.cached_from = Some(r.get(0)?);
            f.output = r.get(1)?;
            f.reasoning = r.get(2)?;
            f.raw_output = r.get(3)?;
            f.timings = r
                .get::<_, Option<String>>(4)?
                .and_then(|t| serde_json::from_str(&t).ok());
            f.cache_key = Some(key.to_string());
            // The same token counts; no latency of its own (no call was made).
            f.metrics = Some(Metrics {
                output_tokens: r.get(5)?,
                ..Metrics::default()
            });
            Ok(f)
        })
        .optional()?;
    Ok(row)
}

/// One job answered from the cache, fenced by its still being pending.
pub fn answer_cached(
    tx: &Transaction,
    runner_id: i64,
    claim: &Claim,
    f: &Finish,
) -> Result<Option<(i64, i64)>> {
    let now = now_ms();
    let number: Option<i64> = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'done', attempts = attempts + 1, not_before = 0,
                    last_outcome = 'cached', last_error = NULL, updated_at = ?1
             WHERE id = ?2 AND state = 'pending' RETURNING attempts",
        )?
        .query_row(params![now, claim.job_id], |r| r.get(0))
        .optional()?;
    let Some(number) = number else {
        return Ok(None);
    };
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, number, model, batch, runner_id, started_at, finished_at,
                duration_ms, outcome, charged, output, reasoning, raw_output, timings, cache_key,
                cached_from, output_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, 'cached', 0, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        claim.job_id,
        number,
        claim.model,
        claim.batch,
        runner_id,
        now,
        f.output,
        f.reasoning,
        f.raw_output,
        f.stored_timings().as_ref().map(Value::to_string),
        f.cache_key,
        f.cached_from,
        f.metrics.as_ref().and_then(|m| m.output_tokens),
    ])?;
    let attempt_id = tx.last_insert_rowid();
    tx.prepare_cached("UPDATE jobs SET attempt_id = ?1 WHERE id = ?2")?
        .execute(params![attempt_id, claim.job_id])?;
    if claim.kind == JobKind::Grade {
        let mut answered = claim.clone();
        answered.attempt_id = attempt_id;
        answered.number = number;
        super::jobs::record_grade(tx, &answered, f)?;
    }
    Ok(Some((attempt_id, number)))
}
