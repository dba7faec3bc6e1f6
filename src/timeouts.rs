//! Timeout advice: 2 × p99 of recent successful attempts, clamped, used by `--timeout auto`.

use anyhow::Result;
use std::time::Duration;

use crate::db::{Catalog, DurationSample};
use crate::models::ModelConfig;

pub const ADVICE_WINDOW_MS: i64 = 7 * 86_400_000;
pub const ADVICE_MIN_SAMPLES: i64 = 20;
pub const ADVICE_MIN_S: f64 = 10.0;
pub const ADVICE_MAX_S: f64 = 3600.0;

/// Successful attempts of the model in the advice window: count, nearest-rank p99 and max.
pub fn samples(catalog: &dyn Catalog, model: &str) -> Result<DurationSample> {
    catalog.ok_durations(model, ADVICE_WINDOW_MS)
}

/// The advised timeout in seconds, when there are enough recent successes to judge:
/// (advice, samples, p99 in seconds).
pub fn advice(catalog: &dyn Catalog, model: &str) -> Result<Option<(f64, i64, f64)>> {
    let s = samples(catalog, model)?;
    Ok(advise(s.count, s.p99_ms).map(|a| (a, s.count, s.p99_ms.unwrap_or(0) as f64 / 1000.0)))
}

/// The advice for `n` samples with this p99 (ms): 2 × p99 clamped, or None when too few.
pub fn advise(n: i64, p99_ms: Option<i64>) -> Option<f64> {
    let p99 = p99_ms.filter(|_| n >= ADVICE_MIN_SAMPLES)? as f64 / 1000.0;
    Some((2.0 * p99).clamp(ADVICE_MIN_S, ADVICE_MAX_S))
}

/// The timeout an attempt of this model gets now.
pub fn effective(catalog: &dyn Catalog, model: &ModelConfig) -> Result<Duration> {
    let advice = match model.timeout_auto {
        true => advice(catalog, &model.name)?.map(|a| a.0),
        false => None,
    };
    Ok(Duration::from_secs_f64(effective_secs(model, advice)))
}

/// The one rule: the advice when the model's timeout is `auto` and there is advice, else
/// its configured timeout.
pub fn effective_secs(model: &ModelConfig, advice: Option<f64>) -> f64 {
    match advice {
        Some(a) if model.timeout_auto => a,
        _ => model.timeout(),
    }
}

/// The floor and ceiling of the stall-timeout advice: a few seconds is the least that tells a
/// hung server from a busy one.
pub const STALL_MIN_S: f64 = 5.0;
pub const STALL_MAX_S: f64 = 600.0;

/// Streamed successful attempts of the model in the advice window: count and nearest-rank
/// p99 of each attempt's longest silence between chunks (ms).
pub fn gap_samples(catalog: &dyn Catalog, model: &str) -> Result<(i64, Option<f64>)> {
    catalog.ok_gaps(model, ADVICE_WINDOW_MS)
}

/// The advised `--stall-timeout` in seconds: 2 × the p99 of the longest gaps, clamped, when
/// there are enough streamed successes to judge.
pub fn advise_stall(n: i64, p99_ms: Option<f64>) -> Option<f64> {
    let p99 = p99_ms.filter(|_| n >= ADVICE_MIN_SAMPLES)? / 1000.0;
    Some(((2.0 * p99).clamp(STALL_MIN_S, STALL_MAX_S) * 10.0).ceil() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_advice_is_twice_the_p99_gap_within_bounds() {
        assert_eq!(advise_stall(19, Some(10_000.0)), None, "too few samples");
        assert_eq!(advise_stall(20, Some(10_000.0)), Some(20.0));
        assert_eq!(advise_stall(20, Some(1_000.0)), Some(STALL_MIN_S));
        assert_eq!(advise_stall(500, Some(4_000_000.0)), Some(STALL_MAX_S));
        assert_eq!(advise_stall(20, Some(12_345.0)), Some(24.7));
    }
}
