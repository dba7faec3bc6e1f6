//! Small shared helpers: clock, durations, host identity, process liveness.

use anyhow::{bail, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the one time unit stored in the database. (On
/// PostgreSQL the database's clock writes every stored time; this host's clock only measures
/// lengths.)
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + clock_skew_ms()
        + CLOCK_OFFSET.load(std::sync::atomic::Ordering::Relaxed)
}

/// How far the database's clock is ahead of this host's, for a reader that computes ages from
/// a PostgreSQL queue (whose times are the database's).
static CLOCK_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn set_clock_offset(ms: i64) {
    CLOCK_OFFSET.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// For tests of hosts whose clocks drift: `LLMBATCH_TEST_CLOCK_SKEW=+10m` (or `-90s`) makes
/// this process's clock read that far off.
fn clock_skew_ms() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        let Ok(text) = std::env::var("LLMBATCH_TEST_CLOCK_SKEW") else {
            return 0;
        };
        let (sign, rest) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.trim_start_matches('+')),
        };
        parse_duration(rest).map_or(0, |d| sign * d.as_millis() as i64)
    })
}

/// The longest duration accepted anywhere: 100 years (36500d). Longer is a typo or an attack,
/// and would overflow the clock arithmetic it feeds (deadlines, lease expiry in ms).
pub const MAX_DURATION_S: f64 = 100.0 * 365.0 * 86400.0;

/// Parses `90s`, `5m`, `2h`, `7d`, `250ms` or a bare number of seconds (fractions allowed),
/// at most [`MAX_DURATION_S`].
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = match num.parse() {
        Ok(v) if num.chars().any(|c| c.is_ascii_digit()) => v,
        _ => bail!("invalid duration {text:?}: expected a number with an optional unit, e.g. 90s, 5m, 2h, 7d"),
    };
    let factor = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" | "day" | "days" => 86400.0,
        other => bail!("invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    if value < 0.0 {
        bail!("invalid duration {text:?}: must not be negative");
    }
    let secs = value * factor;
    if !secs.is_finite() || secs > MAX_DURATION_S {
        bail!("invalid duration {text:?}: longer than the limit of 100 years (36500d)");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// clap value parser for durations.
pub fn duration_arg(text: &str) -> std::result::Result<std::time::Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// Renders seconds the way people read them: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn human_secs(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{}h{:02}m",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_beyond_100_years_are_refused() {
        assert_eq!(parse_duration("36500d").unwrap().as_secs(), 3_153_600_000);
        for absurd in ["36501d", "99999999999999999999s", &"9".repeat(400), "1e300"] {
            assert!(parse_duration(absurd).is_err(), "{absurd}");
        }
    }
}
