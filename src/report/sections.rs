//! The core sections: status, latency, failures, jobs, runners.

use anyhow::Result;
use serde_json::{json, Value};

use super::render::{secs, Table};
use super::Query;
use crate::db::{ReportSource, StreamMetric};
use crate::domain::{JobState, Outcome};
use crate::liveness::runner_state;

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
    // Jobs answered by `run --cache` are done like any other; say how many, so none is
    // mistaken for a model call.
    let cached = src.cached_done(&q.scope())?;
    if cached > 0 {
        t.notes.push(format!(
            "{cached} of the done jobs were answered from the cache (run --cache): no model call."
        ));
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
pub fn latency(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let by = q.group_keys();
    let scope = q.scope();
    let groups = src.latency(&scope, &by)?;
    let ttft = src.metric_percentiles(&scope, &by, StreamMetric::Ttft, &[0.50, 0.95, 0.99])?;
    let tpot = src.metric_percentiles(&scope, &by, StreamMetric::Tpot, &[0.50, 0.95])?;
    let rates = src.stream_rates(&scope, &by)?;
    let mut header: Vec<&str> = cols.clone();
    header.extend(["n", "p50_s", "p95_s", "p99_s", "max_s", "mean_s"]);
    header.extend(STREAM_COLUMNS);
    let mut t = Table::new(
        "latency",
        "Latency of successful attempts (seconds)",
        &header,
    );
    for g in groups {
        let (key, n, mean, max, p) = (g.key, g.n, g.mean_ms, g.max_ms, g.p50_95_99_ms);
        let ttft = ttft.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let tpot = tpot.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let rate = rates.get(&key).copied();
        let mut row: Vec<Value> = key.into_iter().map(Value::String).collect();
        row.extend([
            json!(n),
            secs(Some(p[0] as f64)),
            secs(Some(p[1] as f64)),
            secs(Some(p[2] as f64)),
            secs(Some(max as f64)),
            secs(Some(mean)),
        ]);
        row.extend((0..3).map(|i| secs(ttft.get(i).copied())));
        row.extend((0..2).map(|i| fine_secs(tpot.get(i).copied())));
        row.push(rate.map_or(Value::Null, |r| json!((r * 100.0).round() / 100.0)));
        t.push(row);
    }
    if t.rows.iter().any(|r| !r[header.len() - 1].is_null()) {
        t.notes.push(STREAM_NOTE.to_string());
    }
    Ok(t)
}

/// The streaming columns of `report latency`, empty where no attempt was streamed.
const STREAM_COLUMNS: [&str; 6] = [
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p95_s",
    "tokens_per_s",
];

const STREAM_NOTE: &str = "ttft = request sent → first chunk with generated text; \
tpot = (e2e − ttft) / (output tokens − 1); tokens_per_s = mean of output tokens / e2e; over \
streamed successful attempts (vLLM's definitions).";

/// Seconds with microsecond precision, for per-token times on fast servers.
fn fine_secs(ms: Option<f64>) -> Value {
    ms.map_or(Value::Null, |ms| json!((ms * 1000.0).round() / 1e6))
}

/// Per group: attempts, failed attempts, fail rate and one column per failure outcome.
/// Counted per (group, outcome) from the latency index, truncated answers from their own
/// partial index: no attempt row (nor its timings JSON) is read.
pub fn failures(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let kinds: Vec<Outcome> = Outcome::ALL
        .into_iter()
        .filter(|o| *o != Outcome::Ok)
        .collect();
    let groups = src.outcome_counts(&q.scope(), &q.group_keys())?;
    let mut header: Vec<&str> = cols.clone();
    header.extend(["attempts", "failed_attempts", "fail_rate"]);
    header.extend(kinds.iter().map(|o| o.as_str()));
    header.push("truncated");
    let mut t = Table::new("failures", "Failures by kind", &header);
    for g in groups {
        let (key, counts, truncated) = (g.key, g.counts, g.truncated);
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
    src: &dyn ReportSource,
    q: &Query,
    state: Option<&str>,
    outcome: Option<Outcome>,
) -> Result<Table> {
    let listing = JobListing::new(src, state, outcome)?;
    let mut t = jobs_header();
    listing.each(src, q, &mut |row| {
        t.push(row);
        Ok(())
    })?;
    Ok(t)
}

/// The columns of the jobs listing, with no rows.
pub fn jobs_header() -> Table {
    let mut t = Table::new(
        "jobs",
        "Jobs",
        &[
            "id",
            "batch",
            "item",
            "repeat",
            "model",
            "kind",
            "state",
            "attempts",
            "last_outcome",
            "last_error",
            "age_s",
            "cache_key",
            "cached_from",
        ],
    );
    // The key explains a cache miss: compare it with the key of the answer expected to match.
    t.pipe_only = vec!["cache_key".into(), "cached_from".into()];
    t
}

/// What a jobs listing selects, checked and with the clock its ages count from: made before
/// anything is written, so a bad `--state` leaves stdout empty.
pub struct JobListing {
    state: Option<JobState>,
    outcome: Option<Outcome>,
    now: i64,
}

impl JobListing {
    pub fn new(
        src: &dyn ReportSource,
        state: Option<&str>,
        outcome: Option<Outcome>,
    ) -> Result<JobListing> {
        let state = match state {
            Some(s) => match JobState::parse(s) {
                Some(state) => Some(state),
                None => {
                    let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                    crate::usage!("--state {s:?}: expected one of {}", names.join(", "));
                }
            },
            None => None,
        };
        Ok(JobListing {
            state,
            outcome,
            now: src.clock()?,
        })
    }

    /// Each job as a row of [`jobs_header`]'s columns, handed over one at a time: a listing
    /// may hold every job of the queue, so it is never all in memory at once.
    pub fn each(
        &self,
        src: &dyn ReportSource,
        q: &Query,
        each: &mut dyn FnMut(Vec<Value>) -> Result<()>,
    ) -> Result<()> {
        let now = self.now;
        src.each_job(&q.scope(), self.state, self.outcome, &mut |j| {
            each(vec![
                json!(j.id),
                json!(j.batch),
                json!(j.item_id),
                json!(j.repeat),
                json!(j.model),
                json!(j.kind),
                json!(j.state),
                json!(j.attempts),
                json!(j.last_outcome),
                json!(j.last_error),
                secs(Some((now - j.updated_at).max(0) as f64)),
                json!(j.cache_key),
                json!(j.cached_from),
            ])
        })
    }
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
            json!(crate::timefmt::iso_time(r.started_at)),
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
