//! The latency distribution of successful attempts per model, as points of its empirical CDF
//! (nearest-rank quantiles 1 %, 2 %, … 100 %, or every sample when there are fewer), for the
//! page's chart. One ordered stream per model over the latency index: memory stays flat.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::json;

use super::models::cell;
use super::render::{secs, Table};
use super::Query;

/// Points per model at most.
pub const POINTS: i64 = 100;

/// `latency` is the by-model latency table: its `n` says how many samples each model has.
pub fn cdf(conn: &Connection, q: &Query, latency: &Table) -> Result<Table> {
    let (cond, args) = q.attempt_sql("a");
    let sql = format!(
        "SELECT duration_ms FROM attempts a WHERE a.model = ? AND a.outcome = 'ok'{cond}
         ORDER BY duration_ms"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut t = Table::new(
        "latency_cdf",
        "Latency distribution (share of successful attempts done within seconds)",
        &["model", "share", "seconds"],
    );
    for row in &latency.rows {
        let (Some(model), Some(n)) = (
            cell(latency, row, "model").as_str(),
            cell(latency, row, "n").as_i64(),
        ) else {
            continue;
        };
        let points = n.min(POINTS);
        // The sample positions (1-based) of the quantiles k/points, k = 1..=points: nearest
        // rank ⌈k·n/points⌉, in integers so 7/100 of 100 is 7, not 8.
        let mut wanted = (1..=points).map(|k| (k, (k * n + points - 1) / points));
        let mut next = wanted.next();
        let mut all = vec![SqlValue::Text(model.to_string())];
        all.extend(args.iter().cloned());
        let mut rows = stmt.query(params_from_iter(all))?;
        let mut i = 0i64;
        while let Some((_, pos)) = next {
            let Some(r) = rows.next()? else { break };
            i += 1;
            if i < pos {
                continue;
            }
            let d: i64 = r.get(0)?;
            // With fewer samples than points, several quantiles can fall on one sample.
            while let Some((k, _)) = next.filter(|(_, pos)| *pos == i) {
                t.push(vec![
                    json!(model),
                    json!((k as f64 / points as f64 * 1000.0).round() / 1000.0),
                    secs(Some(d as f64)),
                ]);
                next = wanted.next();
            }
        }
    }
    Ok(t)
}
