//! Signals: which ones stop a runner (and so interrupted, not crashed, a child that died of
//! them), their names, and killing a child's process group or an attempt's leftovers.

use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use super::{Status, StopSignal, WAIT_SLICE};

/// The signals that stop a runner, and that a child stopped along with it died of.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Whether `sig` is one of [`STOP_SIGNALS`].
pub fn is_stop_signal(sig: i32) -> bool {
    STOP_SIGNALS.contains(&sig)
}

/// Whether an exit code is a shell's report of death by a stop signal (128 + signal).
pub fn is_stop_exit(code: i64) -> bool {
    code > 128 && i32::try_from(code - 128).is_ok_and(is_stop_signal)
}

/// The name of a signal (`SIGTERM`), for the ones people meet.
pub fn signal_abbrev(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// How long a child killed by a stop signal waits for the runner's own stop request.
const STOP_SIGNAL_WINDOW: Duration = Duration::from_millis(750);

/// A child killed by SIGTERM / SIGINT / SIGHUP may have been stopped along with the runner
/// (systemd signals the whole cgroup, a terminal the whole session) in any order: if the runner
/// is told to stop within a moment, the attempt was interrupted, not a crash.
pub(super) fn stop_or_crash(status: Status, stop: &StopSignal) -> Status {
    let Status::Signaled(sig) = status else {
        return status;
    };
    if !is_stop_signal(sig) {
        return status;
    }
    let until = Instant::now() + STOP_SIGNAL_WINDOW;
    while Instant::now() < until {
        if stop.level() > 0 {
            return Status::Interrupted;
        }
        thread::sleep(Duration::from_millis(20));
    }
    status
}

/// SIGTERM to the group, SIGKILL after the grace (or at once on a second stop request).
pub(super) fn terminate(child: &mut Child, pgid: i32, grace: Duration, stop: &StopSignal) {
    kill_group(pgid, libc::SIGTERM);
    let until = Instant::now() + grace;
    loop {
        if stop.level() >= StopSignal::KILL {
            break;
        }
        let slice = until
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        if slice.is_zero() {
            break;
        }
        if let Ok(Some(_)) = child.wait_timeout(slice) {
            return;
        }
    }
    kill_group(pgid, libc::SIGKILL);
    // Bounded even for a child stuck in uninterruptible I/O: it is reaped later or by init.
    let _ = child.wait_timeout(Duration::from_secs(5));
}

/// Kills every process whose environment carries `LLMBATCH_RUNNER=token`: what a dead runner's
/// attempts left behind, children and grandchildren alike (the variable is inherited). Returns how
/// many were signalled.
pub fn kill_leftovers(token: &str) -> usize {
    let needle = format!("LLMBATCH_RUNNER={token}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|var| var == needle.as_bytes()) {
            // SAFETY: kill(2) touches no memory.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed += 1;
        }
    }
    killed
}

pub(super) fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, sig);
    }
}
