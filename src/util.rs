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

/// Parses `90s`, `5m`, `2h`, `7d`, `250ms`, `1.5h` or a bare number of seconds (fractions
/// allowed, whitespace around the unit too), at most [`MAX_DURATION_S`].
///
/// jiff's friendly duration format reads the number and the unit; this wrapper only chooses
/// which of its forms llmbatch accepts (one number and one unit of ms, s, m, h or d: the forms
/// accepted before jiff did the parsing) and says why it refused one.
pub fn parse_duration(text: &str) -> Result<std::time::Duration> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let Some(num) = friendly_number(num) else {
        bail!("invalid duration {text:?}: expected a number with an optional unit, e.g. 90s, 5m, 2h, 7d");
    };
    // jiff reads days only into calendar spans; llmbatch's day is 24 hours, fractions allowed.
    let (label, times) = match unit.trim() {
        "" => ("s", 1),
        "d" | "day" | "days" => ("h", 24),
        u @ ("ms" | "s" | "sec" | "secs" | "m" | "min" | "mins" | "h" | "hr" | "hrs") => (u, 1),
        other => bail!("invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    static PARSER: jiff::fmt::friendly::SpanParser = jiff::fmt::friendly::SpanParser::new();
    // The number and unit are well-formed here: jiff can only refuse a size it cannot hold.
    PARSER
        .parse_unsigned_duration(format!("{num}{label}"))
        .ok()
        .and_then(|d| d.checked_mul(times))
        .filter(|d| d.as_secs_f64() <= MAX_DURATION_S)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "invalid duration {text:?}: longer than the limit of 100 years (36500d)"
            )
        })
}

/// Digits with at most one decimal point, written as jiff's friendly format wants them: a
/// digit before the point (no leading zeros), one after it, and at most nanoseconds (9
/// decimals) of precision.
fn friendly_number(num: &str) -> Option<String> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    // Leading zeros change nothing but would make jiff refuse a number it can hold.
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let frac = &frac[..frac.len().min(9)];
    Some(if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    })
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
    use std::time::Duration;

    #[test]
    fn every_accepted_form_parses() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (text, want) in [
            ("90", s(90)),
            ("0", s(0)),
            ("1.5", ms(1500)),
            ("90s", s(90)),
            ("90 sec", s(90)),
            ("90secs", s(90)),
            ("250ms", ms(250)),
            ("0.5ms", Duration::from_micros(500)),
            ("5m", s(300)),
            ("5min", s(300)),
            ("5 mins", s(300)),
            ("2h", s(7200)),
            ("1.5h", s(5400)),
            ("2hr", s(7200)),
            ("2 hrs", s(7200)),
            ("7d", s(7 * 86400)),
            ("1day", s(86400)),
            ("1.5 days", s(129_600)),
            ("  90s  ", s(90)),
            ("\t5 m\n", s(300)),
            (".5m", s(30)),
            ("5.s", s(5)),
            ("0000000000000000000001s", s(1)),
            ("000.5", ms(500)),
            ("007s", s(7)),
            ("0.0000000001s", s(0)),
            ("36500d", s(3_153_600_000)),
        ] {
            assert_eq!(parse_duration(text).unwrap(), want, "{text:?}");
        }
    }

    #[test]
    fn refusals_say_why_in_the_words_used_before() {
        let refused = |text: &str| parse_duration(text).unwrap_err().to_string();
        let number = |t: &str| {
            format!("invalid duration {t:?}: expected a number with an optional unit, e.g. 90s, 5m, 2h, 7d")
        };
        for text in ["", "   ", "-5s", "+5s", "soon", ".", "1.2.3s", "h"] {
            assert_eq!(refused(text), number(text));
        }
        let unit = |t: &str, u: &str| {
            format!("invalid duration {t:?}: unknown unit {u:?} (use ms, s, m, h or d)")
        };
        assert_eq!(refused("5x"), unit("5x", "x"));
        assert_eq!(refused("1e300"), unit("1e300", "e300"));
        assert_eq!(refused("5m30s"), unit("5m30s", "m30s"));
        assert_eq!(refused("2w"), unit("2w", "w"));
        assert_eq!(refused("5s ago"), unit("5s ago", "s ago"));
        let long = |t: &str| {
            format!("invalid duration {t:?}: longer than the limit of 100 years (36500d)")
        };
        for text in [
            "36501d",
            "36500.001d",
            "3153600001",
            "99999999999999999999s",
            &"9".repeat(400),
        ] {
            assert_eq!(refused(text), long(text));
        }
    }
}
