//! `report throughput`: per model jobs done per hour over a window, in flight, pending and
//! the ETA of the pending work at that rate — and a warning when the pipeline has stalled
//! (work pending, no live runner) or drained (runners live, nothing pending). A model paced by
//! `--rpm` / `--tpm` cannot go faster than its pace: the ETA counts with the slower of the two.

use anyhow::Result;
use serde_json::{json, Value};

use super::render::Table;
use super::Query;
use crate::db::{ModelFlow, Store};
use crate::util::human_secs;

/// The window when no --since is given.
pub const DEFAULT_WINDOW_MS: i64 = 3_600_000;

pub fn throughput(store: &dyn Store, q: &Query) -> Result<Table> {
    let now = store.clock()?;
    let since = q.since_ms.unwrap_or(now - DEFAULT_WINDOW_MS);
    let rows = store.flow(&q.filter, since)?;
    let window_s = (now - since) as f64 / 1000.0;
    let mut t = Table::new(
        "throughput",
        &format!("Throughput over the last {}", human_secs(window_s)),
        &[
            "model",
            "window_s",
            "done",
            "per_hour",
            "paced_per_hour",
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
        let paced = paced_per_hour(&store.model(&model)?, &row);
        let rate = paced.map_or(per_hour, |p| p.min(per_hour));
        let eta =
            (row.pending > 0 && rate > 0.0).then(|| (row.pending as f64 / rate * 3600.0).round());
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
            paced.map_or(Value::Null, |p| json!((p * 10.0).round() / 10.0)),
            json!(row.running),
            json!(row.pending),
            eta.map_or(Value::Null, |e| json!(e)),
        ]);
    }
    let live = super::sections::live_runners(store)?;
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

/// The most jobs an hour the model's `--rpm` / `--tpm` allow one runner (the tokens per job
/// from the done jobs of the window); None when it is not paced (or no job shows its tokens).
fn paced_per_hour(m: &crate::models::ModelConfig, row: &ModelFlow) -> Option<f64> {
    let by_requests = m.rpm.map(|n| n as f64 * 60.0);
    let by_tokens = m
        .tpm
        .filter(|_| row.done > 0 && row.tokens > 0)
        .map(|n| n as f64 * 60.0 / (row.tokens as f64 / row.done as f64));
    match (by_requests, by_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
