//! `report throughput`: per model jobs done per hour over a window, in flight, pending and
//! the ETA of the pending work at that rate — and a warning when the pipeline has stalled
//! (work pending, no live runner) or drained (runners live, nothing pending).

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::render::Table;
use super::Query;
use crate::util::{human_secs, now_ms};

/// The window when no --since is given.
pub const DEFAULT_WINDOW_MS: i64 = 3_600_000;

#[derive(Default)]
struct Row {
    done: i64,
    first_start: Option<i64>,
    pending: i64,
    running: i64,
}

pub fn throughput(conn: &Connection, q: &Query) -> Result<Table> {
    let now = now_ms();
    let since = q.since_ms.unwrap_or(now - DEFAULT_WINDOW_MS);
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();

    // Jobs done in the window: their ok attempts, found through the finished_at index.
    let (cond, args) = q.filter.sql_on("a", "job_id");
    let sql = format!(
        "SELECT a.model, COUNT(*), MIN(a.started_at) FROM attempts a INDEXED BY attempts_finished
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
    }

    // Open work now (the claim index leads with state, so this reads only open jobs).
    let (cond, args) = q.filter.sql("j");
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

    let window_s = (now - since) as f64 / 1000.0;
    let mut t = Table::new(
        "throughput",
        &format!("Throughput over the last {}", human_secs(window_s)),
        &[
            "model",
            "window_s",
            "done",
            "per_hour",
            "in_flight",
            "pending",
            "eta_s",
        ],
    );
    let (mut pending, mut running, mut stalled) = (0, 0, Vec::new());
    for (model, row) in rows {
        // The rate counts from the first attempt in the window, so a run that began ten
        // minutes ago is not diluted over the whole hour.
        let start = row.first_start.map_or(since, |s| s.max(since));
        let elapsed_s = ((now - start) as f64 / 1000.0).max(1.0);
        let per_hour = row.done as f64 * 3600.0 / elapsed_s;
        let eta = (row.pending > 0 && per_hour > 0.0)
            .then(|| (row.pending as f64 / per_hour * 3600.0).round());
        if row.pending > 0 && row.done == 0 {
            stalled.push(model.clone());
        }
        pending += row.pending;
        running += row.running;
        t.push(vec![
            json!(model),
            json!((elapsed_s * 1000.0).round() / 1000.0),
            json!(row.done),
            json!((per_hour * 10.0).round() / 10.0),
            json!(row.running),
            json!(row.pending),
            eta.map_or(Value::Null, |e| json!(e)),
        ]);
    }
    let live = super::sections::live_runners(conn)?;
    if pending > 0 && live == 0 {
        t.warnings.push(format!(
            "{pending} job(s) pending but no runner is live — start `llmbatch run` (is its cron entry or service running?)"
        ));
    } else if !stalled.is_empty() {
        t.notes.push(format!(
            "note: nothing done in the window for {} (pending work, no ETA)",
            stalled.join(", ")
        ));
    }
    if live > 0 && pending == 0 {
        let tail = if running > 0 {
            format!("; {running} job(s) still in flight")
        } else {
            String::new()
        };
        t.warnings.push(format!(
            "{live} runner(s) live but nothing is pending — the pipeline is drained{tail} (enqueue more work?)"
        ));
    }
    Ok(t)
}
