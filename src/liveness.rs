//! Runner liveness: the one rule by which `run` and `reap` find orphans and `report runners`
//! labels runners. Who a runner is (host, pid, pid start, boot and PID namespace) is recorded
//! when it registers; whether it still lives is judged here, from this host's /proc.

use crate::db::RunnerRecord;

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

/// A runner's label in `report runners`: `stopped` (said so), `dead` (local, process gone or
/// older boot), `suspended` (local, stopped by a signal: it renews nothing), `live`, or
/// `silent` (remote, no heartbeat for two minutes).
pub fn runner_state(r: &RunnerRecord, heartbeat_age_ms: i64) -> &'static str {
    if r.stopped {
        return "stopped";
    }
    match runner_life(&r.host, r.pid, r.pid_start.as_deref(), r.boot_id.as_deref()) {
        RunnerLife::Running => "live",
        RunnerLife::Suspended => "suspended",
        RunnerLife::Gone | RunnerLife::EarlierBoot => "dead",
        RunnerLife::Remote if heartbeat_age_ms < 120_000 => "live",
        RunnerLife::Remote => "silent",
    }
}
