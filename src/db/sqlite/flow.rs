//! Throughput and latency-breakdown rows from SQLite.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeMap;

use crate::db::report::{AttemptScope, GroupKey, ModelFlow, PhaseSample};
use crate::db::store::Filter;

/// Per model: jobs done since `since` (their ok attempts, through the finished_at index) and
/// open work now (the claim index leads with state, so only open jobs are read).
pub fn flow(conn: &Connection, filter: &Filter, since: i64) -> Result<BTreeMap<String, ModelFlow>> {
    let mut rows: BTreeMap<String, ModelFlow> = BTreeMap::new();
    let (cond, args) = filter.sql_on("a", "job_id");
    let sql = format!(
        "SELECT a.model, COUNT(*), MIN(a.started_at),
                SUM(COALESCE(json_extract(a.timings, '$.prompt_tokens'), json_extract(a.timings, '$.prompt_eval_count'), 0)
                    + COALESCE(json_extract(a.timings, '$.completion_tokens'), json_extract(a.timings, '$.eval_count'), 0))
         FROM attempts a INDEXED BY attempts_finished
         WHERE a.finished_at >= ? AND a.outcome = 'ok'{cond} GROUP BY a.model"
    );
    let mut all = vec![SqlValue::Integer(since)];
    all.extend(args);
    let mut stmt = conn.prepare(&sql)?;
    let mut r = stmt.query(params_from_iter(all))?;
    while let Some(r) = r.next()? {
        let row = rows.entry(r.get(0)?).or_default();
        row.done = r.get(1)?;
        row.first_start = r.get(2)?;
        row.tokens = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
    }
    let (cond, args) = filter.sql("j");
    let sql = format!(
        "SELECT j.model, SUM(j.state = 'pending'), SUM(j.state = 'running') FROM jobs j
         WHERE j.state IN ('pending', 'running'){cond} GROUP BY j.model"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut r = stmt.query(params_from_iter(args))?;
    while let Some(r) = r.next()? {
        let row = rows.entry(r.get(0)?).or_default();
        row.pending = r.get(1)?;
        row.running = r.get(2)?;
    }
    Ok(rows)
}

/// SQL of each phase's value in ms: load, prompt evaluation, generation, client overhead.
const PHASES: [&str; 4] = [
    "json_extract(a.timings, '$.load_duration') / 1e6",
    "json_extract(a.timings, '$.prompt_eval_duration') / 1e6",
    "json_extract(a.timings, '$.eval_duration') / 1e6",
    "a.duration_ms - json_extract(a.timings, '$.total_duration') / 1e6",
];

/// One pass over the attempts with timings (their own partial index, in its order: model, id,
/// which PostgreSQL's engine follows so sums add up in the same order); json_extract reads each
/// timings text once per field.
pub fn phase_samples(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
    cold_load_ms: f64,
) -> Result<Vec<PhaseSample>> {
    let k = by.len();
    let key_select: String = by.iter().map(|key| format!("{}, ", key.expr())).collect();
    let (cond, args) = scope.sql("a");
    let metrics: String = PHASES.iter().map(|expr| format!(", {expr}")).collect();
    let sql = format!(
        "SELECT {key_select}
                COALESCE(json_extract(a.timings, '$.load_duration'), 0) / 1e6 > {cold_load_ms},
                json_extract(a.timings, '$.eval_count'),
                json_extract(a.timings, '$.eval_duration'){metrics}
         FROM attempts a
         WHERE a.outcome = 'ok' AND a.timings IS NOT NULL
           AND json_extract(a.timings, '$.total_duration') IS NOT NULL{cond}
         ORDER BY a.model, a.id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        let key = (0..k)
            .map(|i| r.get::<_, String>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut phases_ms = [None; 4];
        for (i, p) in phases_ms.iter_mut().enumerate() {
            *p = r.get(k + 3 + i)?;
        }
        Ok(PhaseSample {
            key,
            cold: r.get(k)?,
            eval_tokens: r.get(k + 1)?,
            eval_ns: r.get(k + 2)?,
            phases_ms,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
