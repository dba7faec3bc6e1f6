//! The latency distribution of successful attempts per model, as points of its empirical CDF
//! (nearest-rank quantiles 1 %, 2 %, … 100 %, or every sample when there are fewer), for the
//! page's chart. One ordered stream per model over the latency index: memory stays flat.

use anyhow::Result;
use serde_json::json;

use super::models::cell;
use super::render::{secs, Table};
use super::Query;
use crate::db::ReportSource;

/// Points per model at most.
pub const POINTS: i64 = 100;

/// `latency` is the by-model latency table: its `n` says how many samples each model has.
pub fn cdf(src: &dyn ReportSource, q: &Query, latency: &Table) -> Result<Table> {
    let scope = q.scope();
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
        let positions: Vec<i64> = (1..=points)
            .map(|k| (k * n + points - 1) / points)
            .collect();
        let found = src.ok_durations_at(&scope, model, &positions)?;
        for (k, d) in (1..=points).zip(found) {
            t.push(vec![
                json!(model),
                json!((k as f64 / points as f64 * 1000.0).round() / 1000.0),
                secs(Some(d as f64)),
            ]);
        }
    }
    Ok(t)
}
