//! Jobs done per interval per model over the report's window, for the page's throughput
//! chart: the window is `--since` up to now, else the span of the finished attempts in scope,
//! cut into at most [`MAX_BUCKETS`] intervals of a round length.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::json;

use super::render::Table;
use super::Query;
use crate::util::{human_secs, now_ms};

pub const MAX_BUCKETS: i64 = 48;

/// Round interval lengths, in seconds.
const STEPS: [i64; 17] = [
    1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800,
];

pub fn timeline(conn: &Connection, q: &Query) -> Result<Table> {
    let (cond, args) = q.filter.sql_on("a", "job_id");
    let mut t = Table::new(
        "throughput_timeline",
        "Jobs done per interval",
        &["model", "interval_start", "offset_s", "interval_s", "done"],
    );
    let (lo, hi) = match q.since_ms {
        Some(since) => (since, now_ms()),
        None => {
            let sql = format!(
                "SELECT MIN(a.finished_at), MAX(a.finished_at) FROM attempts a
                 WHERE a.outcome = 'ok'{cond}"
            );
            let span: (Option<i64>, Option<i64>) =
                conn.query_row(&sql, params_from_iter(args.clone()), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            match span {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => return Ok(t),
            }
        }
    };
    let span_s = ((hi - lo) / 1000).max(1);
    let step = STEPS
        .into_iter()
        .find(|s| span_s / s < MAX_BUCKETS)
        .unwrap_or(STEPS[STEPS.len() - 1]);
    // Buckets start on a multiple of the step (UTC), so their times read round.
    let start = lo.div_euclid(step * 1000) * step * 1000;
    let sql = format!(
        "SELECT a.model, (a.finished_at - ?) / ? AS bucket, COUNT(*)
         FROM attempts a INDEXED BY attempts_finished
         WHERE a.finished_at >= ? AND a.finished_at <= ? AND a.outcome = 'ok'{cond}
         GROUP BY a.model, bucket ORDER BY a.model, bucket"
    );
    let mut all = vec![
        SqlValue::Integer(start),
        SqlValue::Integer(step * 1000),
        SqlValue::Integer(lo),
        SqlValue::Integer(hi),
    ];
    all.extend(args);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(all))?;
    while let Some(r) = rows.next()? {
        let bucket: i64 = r.get(1)?;
        let at = start + bucket * step * 1000;
        t.push(vec![
            json!(r.get::<_, String>(0)?),
            json!(crate::commands::iso_time(at)),
            json!(bucket * step),
            json!(step),
            json!(r.get::<_, i64>(2)?),
        ]);
    }
    t.notes.push(format!(
        "from {} to {}, per {}",
        crate::commands::iso_time(start),
        crate::commands::iso_time(hi),
        human_secs(step as f64)
    ));
    Ok(t)
}
