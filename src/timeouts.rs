//! Timeout advice: 2 × p99 of recent successful attempts, clamped, used by `--timeout auto`.

use anyhow::Result;
use rusqlite::{params, Connection};
use std::time::Duration;

use crate::models::ModelConfig;
use crate::util::now_ms;

pub const ADVICE_WINDOW_MS: i64 = 7 * 86_400_000;
pub const ADVICE_MIN_SAMPLES: i64 = 20;
pub const ADVICE_MIN_S: f64 = 10.0;
pub const ADVICE_MAX_S: f64 = 3600.0;

/// Successful attempts of the model in the advice window: count, nearest-rank p99 and max (ms).
pub fn samples(conn: &Connection, model: &str) -> Result<(i64, Option<i64>, Option<i64>)> {
    let since = now_ms() - ADVICE_WINDOW_MS;
    let (n, max): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), MAX(duration_ms) FROM attempts
         WHERE model = ?1 AND outcome = 'ok' AND started_at >= ?2",
        params![model, since],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if n == 0 {
        return Ok((0, None, None));
    }
    // Nearest-rank p99: the value at rank ceil(0.99 n), counted down from the top so the
    // (model, outcome, duration_ms, started_at) index is read for the last 1 % only.
    let rank = ((n as f64) * 0.99).ceil() as i64;
    let p99_ms: i64 = conn.query_row(
        "SELECT duration_ms FROM attempts WHERE model = ?1 AND outcome = 'ok' AND started_at >= ?2
         ORDER BY duration_ms DESC LIMIT 1 OFFSET ?3",
        params![model, since, n - rank],
        |r| r.get(0),
    )?;
    Ok((n, Some(p99_ms), max))
}

/// The advised timeout in seconds, when there are enough recent successes to judge.
pub fn advice(conn: &Connection, model: &str) -> Result<Option<(f64, i64, f64)>> {
    let (n, p99_ms, _) = samples(conn, model)?;
    Ok(advise(n, p99_ms).map(|a| (a, n, p99_ms.unwrap_or(0) as f64 / 1000.0)))
}

/// The advice for `n` samples with this p99 (ms): 2 × p99 clamped, or None when too few.
pub fn advise(n: i64, p99_ms: Option<i64>) -> Option<f64> {
    let p99 = p99_ms.filter(|_| n >= ADVICE_MIN_SAMPLES)? as f64 / 1000.0;
    Some((2.0 * p99).clamp(ADVICE_MIN_S, ADVICE_MAX_S))
}

/// The timeout an attempt of this model gets now, given the samples of its recent successes
/// (asked for only when the model is on `--timeout auto`).
pub fn effective(
    model: &ModelConfig,
    samples: impl FnOnce() -> Result<(i64, Option<i64>, Option<i64>)>,
) -> Result<Duration> {
    if model.timeout_auto {
        let (n, p99_ms, _) = samples()?;
        if let Some(secs) = advise(n, p99_ms) {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    Ok(Duration::from_secs_f64(model.timeout()))
}
