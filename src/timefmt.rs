//! How times are written for people and files: UTC, ISO 8601, computed by jiff.

use jiff::Timestamp;

/// `2026-11-30T05:16:30Z` for a time in ms since the epoch (whole seconds, rounded down).
pub fn iso_time(ms: i64) -> String {
    match Timestamp::from_second(ms.div_euclid(1000)) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("@{ms}ms"),
    }
}

/// `2026-11-30T05:16:30.123Z`: the same with milliseconds.
pub fn iso_time_ms(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => format!("@{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_in_utc() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(iso_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time_ms(1_700_000_000_007), "2023-11-14T22:13:20.007Z");
        assert_eq!(iso_time_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
