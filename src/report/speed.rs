//! Generation speed per model: output tokens per second of generation, from the backend's own
//! timings where it reports them (today Ollama's `eval_count` / `eval_duration`). The one place
//! that decides what "tokens/s" means for the leaderboard and the page.

use anyhow::Result;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeMap;

use super::Query;

/// Per model over successful attempts in scope: Σ output tokens / Σ generation seconds.
/// Models whose backend reports no token timings are absent (unknown, not zero).
pub fn tokens_per_s(conn: &Connection, q: &Query) -> Result<BTreeMap<String, f64>> {
    let (cond, args) = q.attempt_sql("a");
    let sql = format!(
        "SELECT a.model, SUM(json_extract(a.timings, '$.eval_count')),
                SUM(json_extract(a.timings, '$.eval_duration')) / 1e9
         FROM attempts a
         WHERE a.outcome = 'ok' AND a.timings IS NOT NULL
           AND json_extract(a.timings, '$.eval_count') IS NOT NULL
           AND json_extract(a.timings, '$.eval_duration') > 0{cond}
         GROUP BY a.model"
    );
    let mut out = BTreeMap::new();
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let tokens: Option<f64> = r.get(1)?;
        let secs: Option<f64> = r.get(2)?;
        if let (Some(t), Some(s)) = (tokens, secs) {
            if s > 0.0 {
                out.insert(r.get(0)?, (t / s * 10.0).round() / 10.0);
            }
        }
    }
    Ok(out)
}
