//! Jobs done per interval per model over the report's window, for the page's throughput
//! chart: the window is `--since` up to now, else the span of the finished attempts in scope,
//! cut into at most [`MAX_BUCKETS`] intervals of a round length.

use anyhow::Result;
use serde_json::json;

use super::render::Table;
use super::Query;
use crate::db::ReportSource;
use crate::util::{human_secs, now_ms};

pub const MAX_BUCKETS: i64 = 48;

/// Round interval lengths, in seconds.
const STEPS: [i64; 17] = [
    1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800,
];

pub fn timeline(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let mut t = Table::new(
        "throughput_timeline",
        "Jobs done per interval",
        &["model", "interval_start", "offset_s", "interval_s", "done"],
    );
    let (lo, hi) = match q.since_ms {
        Some(since) => (since, now_ms()),
        None => match src.done_span(&q.filter)? {
            Some(span) => span,
            None => return Ok(t),
        },
    };
    let span_s = ((hi - lo) / 1000).max(1);
    let step = STEPS
        .into_iter()
        .find(|s| span_s / s < MAX_BUCKETS)
        .unwrap_or(STEPS[STEPS.len() - 1]);
    // Buckets start on a multiple of the step (UTC), so their times read round.
    let start = lo.div_euclid(step * 1000) * step * 1000;
    for row in src.done_per_interval(&q.filter, start, step * 1000, (lo, hi))? {
        let at = start + row.bucket * step * 1000;
        t.push(vec![
            json!(row.model),
            json!(crate::timefmt::iso_time(at)),
            json!(row.bucket * step),
            json!(step),
            json!(row.done),
        ]);
    }
    t.notes.push(format!(
        "from {} to {}, per {}",
        crate::timefmt::iso_time(start),
        crate::timefmt::iso_time(hi),
        human_secs(step as f64)
    ));
    Ok(t)
}
