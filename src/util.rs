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
/// a snapshot of a PostgreSQL queue (whose times are the database's).
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

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The kernel's id of this boot and this PID namespace (`BOOT/NS`): a runner recorded under
/// another boot is dead; one in another PID namespace (a sibling container) cannot be checked
/// by pid and is judged by its lease alone.
pub fn boot_id() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(format!("{}/{ns}", boot.trim()))
}

/// Where a registered runner lives, as seen from this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locality {
    /// This host, boot and PID namespace: its pid can be checked.
    Here,
    /// This host, but a boot that has ended: the runner is dead.
    EarlierBoot,
    /// Another host or PID namespace: only its lease tells.
    Elsewhere,
}

pub fn locality(host: &str, boot: Option<&str>) -> Locality {
    if host != hostname() {
        return Locality::Elsewhere;
    }
    let (Some(theirs), Some(ours)) = (boot, boot_id()) else {
        return Locality::Here;
    };
    let (their_boot, their_ns) = theirs.split_once('/').unwrap_or((theirs, ""));
    let (our_boot, our_ns) = ours.split_once('/').unwrap_or((&ours, ""));
    if their_boot != our_boot {
        Locality::EarlierBoot
    } else if !their_ns.is_empty() && their_ns != our_ns {
        Locality::Elsewhere
    } else {
        Locality::Here
    }
}

/// What can be known from here of a registered runner that has not said it stopped. The one
/// liveness rule: `run` and `reap` find orphans by it, `report runners` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerLife {
    /// On this host, its process runs. Its lease may lapse when another process holds the
    /// write lock past it (the heartbeat waits for the lock), but its jobs are still its own.
    Running,
    /// On this host, its process is stopped (SIGSTOP, a debugger): alive, yet it renews
    /// nothing, so its jobs are free once its lease lapses.
    Suspended,
    /// Its process is gone (exited, pid reused, a zombie).
    Gone,
    /// It ran under a boot of this host that has ended.
    EarlierBoot,
    /// Another host or PID namespace: only its lease and heartbeat tell.
    Remote,
}

impl RunnerLife {
    /// Whether the runner still owns a running job whose lease is `expired` (or not).
    pub fn holds_jobs(self, lease_expired: bool) -> bool {
        match self {
            RunnerLife::Running => true,
            RunnerLife::Gone | RunnerLife::EarlierBoot => false,
            RunnerLife::Suspended | RunnerLife::Remote => !lease_expired,
        }
    }

    pub fn dead(self) -> bool {
        matches!(self, RunnerLife::Gone | RunnerLife::EarlierBoot)
    }
}

/// Judges a runner registered as (host, pid, start, boot).
pub fn runner_life(host: &str, pid: i64, start: Option<&str>, boot: Option<&str>) -> RunnerLife {
    match locality(host, boot) {
        Locality::EarlierBoot => RunnerLife::EarlierBoot,
        Locality::Elsewhere => RunnerLife::Remote,
        Locality::Here if !process_alive(pid, start) => RunnerLife::Gone,
        Locality::Here if process_state(pid).is_some_and(|s| s == 'T' || s == 't') => {
            RunnerLife::Suspended
        }
        Locality::Here => RunnerLife::Running,
    }
}

/// `PID.START` of a process: put in every attempt's environment as `LLMBATCH_RUNNER`, so the
/// processes a dead runner left behind can be found and killed.
pub fn runner_token(pid: i64, start: Option<&str>) -> String {
    format!("{pid}.{}", start.unwrap_or("0"))
}

/// This process's runner token.
pub fn own_runner_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let pid = std::process::id() as i64;
        runner_token(pid, pid_start(pid).as_deref())
    })
}

/// A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), so a pid
/// reused by another process is not mistaken for the runner that held it.
pub fn pid_start(pid: i64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_string)
}

/// The state letter of a process (field 3 of /proc/PID/stat): R, S, D, T, Z, X…
fn process_state(pid: i64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether the process that registered as (pid, start) on this boot is still alive. A zombie
/// (killed, not yet waited for by its parent) is dead: it will never renew a lease again.
pub fn process_alive(pid: i64, start: Option<&str>) -> bool {
    if process_state(pid).is_some_and(|s| s == 'Z' || s == 'X') {
        return false;
    }
    match (pid_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
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
