//! The core sections: status, latency, failures, jobs, runners.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::render::{secs, Table};
use super::{rank, Query};
use crate::db::ReportSource;
use crate::domain::Outcome;
use crate::liveness::runner_state;
use crate::util::now_ms;

/// Per model: jobs in each state, grade jobs waiting on their parent, the oldest running age.
/// With --since: the jobs enqueued within the window.
pub fn status(src: &dyn ReportSource, q: &Query) -> Result<Vec<Table>> {
    let (models, now) = src.status(&q.scope())?;
    let mut t = Table::new(
        "status",
        "Status",
        &[
            "model",
            "pending",
            "waiting",
            "running",
            "done",
            "failed",
            "cancelled",
            "oldest_running_s",
        ],
    );
    let mut pending_total = 0;
    for (model, m) in models {
        pending_total += m.counts[0];
        let mut row = vec![json!(model)];
        row.extend(m.counts.iter().map(|n| json!(n)));
        row.push(secs(m.oldest_running.map(|s| (now - s).max(0) as f64)));
        t.push(row);
    }
    let running = running_jobs(src, q)?;
    if pending_total > 0 && !running.rows.is_empty() {
        t.notes.push(format!(
            "{} job(s) running now (see below).",
            running.rows.len()
        ));
    }
    let mut out = vec![t];
    if !running.rows.is_empty() {
        out.push(running);
    }
    Ok(out)
}

/// Each running job with the true age of its attempt, computed now.
fn running_jobs(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let mut t = Table::new(
        "running",
        "Running now",
        &[
            "id",
            "model",
            "batch",
            "item",
            "attempt",
            "runner",
            "age_s",
            "lease_left_s",
        ],
    );
    for j in src.running_jobs(&q.scope(), 200)? {
        let (host, pid) = j.runner.unwrap_or_default();
        t.push(vec![
            json!(j.id),
            json!(j.model),
            json!(j.batch),
            json!(j.item_id),
            json!(j.attempt),
            json!(format!("{host}:{pid}")),
            secs(Some((j.now - j.started_at).max(0) as f64)),
            secs(j.lease_expires_at.map(|l| (l - j.now) as f64)),
        ]);
    }
    Ok(t)
}

/// Per group, over `ok` attempts: n, nearest-rank p50/p95/p99, max and mean, in seconds.
/// Two passes (counts, then one ordered stream) keep memory flat in the number of attempts.
pub fn latency(conn: &Connection, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let keys: Vec<&str> = cols.iter().map(|c| c.1).collect();
    let key_list = keys.join(", ");
    let (cond, args) = q.attempt_sql("a");
    let counts_sql = format!(
        "SELECT {key_list}, COUNT(*), AVG(duration_ms), MAX(duration_ms) FROM attempts a
         WHERE a.outcome = 'ok'{cond} GROUP BY {key_list} ORDER BY {key_list}"
    );
    let mut groups: BTreeMap<Vec<String>, (i64, f64, i64)> = BTreeMap::new();
    if keys == ["model"] {
        // One aggregate per model range of the index beats one GROUP BY over all of it.
        let sql = format!(
            "SELECT COUNT(*), AVG(duration_ms), MAX(duration_ms) FROM attempts a
             WHERE a.model = ? AND a.outcome = 'ok'{cond}"
        );
        let mut stmt = conn.prepare(&sql)?;
        for model in super::skip_scan(conn, "attempts", "")? {
            let mut all = vec![SqlValue::Text(model.clone())];
            all.extend(args.iter().cloned());
            let (n, mean, max): (i64, Option<f64>, Option<i64>) = stmt
                .query_row(params_from_iter(all), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            if n > 0 {
                groups.insert(vec![model], (n, mean.unwrap_or(0.0), max.unwrap_or(0)));
            }
        }
    } else {
        let mut stmt = conn.prepare(&counts_sql)?;
        let mut rows = stmt.query(params_from_iter(args.clone()))?;
        while let Some(r) = rows.next()? {
            let key = super::group_key(r, keys.len())?;
            groups.insert(
                key,
                (
                    r.get(keys.len())?,
                    r.get(keys.len() + 1)?,
                    r.get(keys.len() + 2)?,
                ),
            );
        }
    }
    let mut picks: BTreeMap<Vec<String>, [i64; 3]> = BTreeMap::new();
    if keys == ["model"] {
        // By model (the default): the (model, outcome, duration_ms, …) index is in order, so
        // each percentile is one OFFSET step inside SQLite — p95/p99 counted from the top.
        let sql = format!(
            "SELECT duration_ms FROM attempts a WHERE a.model = ? AND a.outcome = 'ok'{cond}
             ORDER BY duration_ms LIMIT 1 OFFSET ?"
        );
        let sql_desc = sql.replace("ORDER BY duration_ms", "ORDER BY duration_ms DESC");
        let mut up = conn.prepare(&sql)?;
        let mut down = conn.prepare(&sql_desc)?;
        for (key, (n, _, _)) in &groups {
            let mut entry = [0; 3];
            for (slot, p) in [0.50, 0.95, 0.99].iter().enumerate() {
                let r = rank(*p, *n);
                let (stmt, offset) = if r * 2 <= *n {
                    (&mut up, r - 1)
                } else {
                    (&mut down, n - r)
                };
                let mut all = vec![SqlValue::Text(key[0].clone())];
                all.extend(args.iter().cloned());
                all.push(SqlValue::Integer(offset));
                entry[slot] = stmt.query_row(params_from_iter(all), |r| r.get(0))?;
            }
            picks.insert(key.clone(), entry);
        }
    } else {
        let stream_sql = format!(
            "SELECT {key_list}, duration_ms FROM attempts a WHERE a.outcome = 'ok'{cond}
             ORDER BY {key_list}, duration_ms"
        );
        let mut stmt = conn.prepare(&stream_sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut current: Option<Vec<String>> = None;
        let mut i = 0i64;
        while let Some(r) = rows.next()? {
            let key = super::group_key(r, keys.len())?;
            if current.as_ref() != Some(&key) {
                current = Some(key.clone());
                i = 0;
            }
            i += 1;
            let d: i64 = r.get(keys.len())?;
            let n = groups.get(&key).map(|g| g.0).unwrap_or(0);
            let entry = picks.entry(key).or_insert([0; 3]);
            for (slot, p) in [0.50, 0.95, 0.99].iter().enumerate() {
                if i == rank(*p, n) {
                    entry[slot] = d;
                }
            }
        }
    }
    let mut header: Vec<&str> = cols.iter().map(|c| c.0).collect();
    header.extend(["n", "p50_s", "p95_s", "p99_s", "max_s", "mean_s"]);
    let mut t = Table::new(
        "latency",
        "Latency of successful attempts (seconds)",
        &header,
    );
    for (key, (n, mean, max)) in groups {
        let p = picks.get(&key).copied().unwrap_or([0; 3]);
        let mut row: Vec<Value> = key.into_iter().map(Value::String).collect();
        row.extend([
            json!(n),
            secs(Some(p[0] as f64)),
            secs(Some(p[1] as f64)),
            secs(Some(p[2] as f64)),
            secs(Some(max as f64)),
            secs(Some(mean)),
        ]);
        t.push(row);
    }
    Ok(t)
}

/// Per group: attempts, failed attempts, fail rate and one column per failure outcome.
/// Counted per (group, outcome) from the latency index, truncated answers from their own
/// partial index: no attempt row (nor its timings JSON) is read.
pub fn failures(conn: &Connection, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let k = cols.len();
    let key_list = cols.iter().map(|c| c.1).collect::<Vec<_>>().join(", ");
    let (cond, args) = q.attempt_sql("a");
    let kinds: Vec<Outcome> = Outcome::ALL
        .into_iter()
        .filter(|o| *o != Outcome::Ok)
        .collect();
    // Per group: count per outcome (index of Outcome::ALL), truncated.
    let mut groups: BTreeMap<Vec<String>, ([i64; Outcome::ALL.len()], i64)> = BTreeMap::new();
    if cols.len() == 1 && cols[0].0 == "model" {
        // By model: one COUNT per (model, outcome) range of the latency index.
        let sql =
            format!("SELECT COUNT(*) FROM attempts a WHERE a.model = ? AND a.outcome = ?{cond}");
        let mut count = conn.prepare(&sql)?;
        for model in super::skip_scan(conn, "attempts", "")? {
            for (i, o) in Outcome::ALL.iter().enumerate() {
                let mut all = vec![
                    SqlValue::Text(model.clone()),
                    SqlValue::Text(o.as_str().to_string()),
                ];
                all.extend(args.iter().cloned());
                let n: i64 = count.query_row(params_from_iter(all), |r| r.get(0))?;
                if n > 0 {
                    groups.entry(vec![model.clone()]).or_default().0[i] += n;
                }
            }
        }
    }
    if !(cols.len() == 1 && cols[0].0 == "model") {
        let sql = format!(
            "SELECT {key_list}, a.outcome, COUNT(*) FROM attempts a
             WHERE a.outcome IS NOT NULL{cond} GROUP BY {key_list}, a.outcome"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.clone()))?;
        while let Some(r) = rows.next()? {
            let key = super::group_key(r, k)?;
            let outcome: String = r.get(k)?;
            let n: i64 = r.get(k + 1)?;
            if let Some(i) = Outcome::ALL.iter().position(|o| o.as_str() == outcome) {
                groups.entry(key).or_default().0[i] += n;
            }
        }
    }
    let sql = format!(
        "SELECT {key_list}, COUNT(*) FROM attempts a
         WHERE json_extract(a.timings, '$.done_reason') = 'length'{cond} GROUP BY {key_list}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let key = super::group_key(r, k)?;
        groups.entry(key).or_default().1 = r.get(k)?;
    }
    let mut header: Vec<&str> = cols.iter().map(|c| c.0).collect();
    header.extend(["attempts", "failed_attempts", "fail_rate"]);
    header.extend(kinds.iter().map(|o| o.as_str()));
    header.push("truncated");
    let mut t = Table::new("failures", "Failures by kind", &header);
    for (key, (counts, truncated)) in groups {
        let attempts: i64 = counts.iter().sum();
        // A server that was down or a runner that was stopped is not the model failing.
        let failed: i64 = Outcome::ALL
            .iter()
            .zip(counts.iter())
            .filter(|(o, _)| **o != Outcome::Ok && o.charged())
            .map(|(_, n)| n)
            .sum();
        let mut row: Vec<Value> = key.into_iter().map(Value::String).collect();
        row.push(json!(attempts));
        row.push(json!(failed));
        row.push(json!(if attempts > 0 {
            (failed as f64 / attempts as f64 * 1000.0).round() / 1000.0
        } else {
            0.0
        }));
        row.extend(counts[1..].iter().map(|n| json!(n)));
        row.push(json!(truncated));
        t.push(row);
    }
    Ok(t)
}

/// Single jobs, for looking at and for `--format ids` pipelines.
pub fn jobs(
    conn: &Connection,
    q: &Query,
    state: Option<&str>,
    outcome: Option<Outcome>,
) -> Result<Table> {
    let (mut cond, mut args) = q.filter.sql("j");
    if let Some(s) = state {
        const STATES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];
        if !STATES.contains(&s) {
            crate::usage!("--state {s:?}: expected one of {}", STATES.join(", "));
        }
        cond.push_str(" AND j.state = ?");
        args.push(SqlValue::Text(s.to_string()));
    }
    if let Some(o) = outcome {
        cond.push_str(" AND j.last_outcome = ?");
        args.push(SqlValue::Text(o.as_str().to_string()));
    }
    if let Some(since) = q.since_ms {
        cond.push_str(" AND j.updated_at >= ?");
        args.push(SqlValue::Integer(since));
    }
    let sql = format!(
        "SELECT j.id, j.batch, j.item_id, j.model, j.kind, j.state, j.attempts, j.last_outcome,
                j.last_error, j.updated_at
         FROM jobs j WHERE 1 = 1{cond} ORDER BY j.id"
    );
    let now = now_ms();
    let mut t = Table::new(
        "jobs",
        "Jobs",
        &[
            "id",
            "batch",
            "item",
            "model",
            "kind",
            "state",
            "attempts",
            "last_outcome",
            "last_error",
            "age_s",
        ],
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let err: Option<String> = r.get(8)?;
        t.push(vec![
            json!(r.get::<_, i64>(0)?),
            json!(r.get::<_, String>(1)?),
            json!(r.get::<_, String>(2)?),
            json!(r.get::<_, String>(3)?),
            json!(r.get::<_, String>(4)?),
            json!(r.get::<_, String>(5)?),
            json!(r.get::<_, i64>(6)?),
            json!(r.get::<_, Option<String>>(7)?),
            json!(err),
            secs(Some((now - r.get::<_, i64>(9)?).max(0) as f64)),
        ]);
    }
    Ok(t)
}

/// Every runner (with --since: those not stopped before then): where, since when, last
/// heartbeat, jobs held, live or stopped.
pub fn runners(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let mut t = Table::new(
        "runners",
        "Runners",
        &[
            "id",
            "host",
            "pid",
            "started",
            "heartbeat_age_s",
            "jobs_held",
            "state",
            "stop_reason",
        ],
    );
    for r in src.runners(q.since_ms, Some(50))? {
        let age = r.now - r.heartbeat_at;
        t.push(vec![
            json!(r.record.id),
            json!(r.record.host),
            json!(r.record.pid),
            json!(crate::commands::iso_time(r.started_at)),
            secs(Some(age.max(0) as f64)),
            json!(r.jobs_held),
            json!(runner_state(&r.record, age)),
            json!(r.stop_reason),
        ]);
    }
    Ok(t)
}

/// How many runners are live now.
pub fn live_runners(src: &dyn ReportSource) -> Result<i64> {
    let open = src.runners(Some(i64::MAX), None)?;
    Ok(open
        .iter()
        .filter(|r| runner_state(&r.record, r.now - r.heartbeat_at) == "live")
        .count() as i64)
}
