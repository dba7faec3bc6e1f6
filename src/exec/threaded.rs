//! The fallback without pidfd: each pipe drained on a thread of its own, the exit awaited
//! with `wait_timeout`.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

use super::signals::{kill_group, stop_or_crash, terminate};
use super::{
    classify, feed_stdin, keep, ChildOutcome, ChildSpec, Status, StopSignal, MAX_STDERR,
    MAX_STDOUT, WAIT_SLICE,
};

/// The fallback without pidfd: the pipes drained on threads, the exit awaited with
/// `wait_timeout`, the same limits and kill rules as the poll loop.
pub(super) fn run_threaded(
    mut child: Child,
    spec: &ChildSpec,
    stop: &StopSignal,
    started: Instant,
) -> ChildOutcome {
    let pgid = child.id() as i32;
    let out_rx = drain(child.stdout.take(), MAX_STDOUT, false);
    let err_rx = drain(child.stderr.take(), MAX_STDERR, true);
    feed_stdin(&mut child, &spec.stdin);

    let deadline = started + spec.timeout;
    let (status, exit) = wait_until(&mut child, pgid, deadline, spec.kill_grace, stop);
    // Whatever the leader did, nothing of its group may outlive the attempt.
    kill_group(pgid, libc::SIGKILL);
    let grace = spec.kill_grace.max(Duration::from_millis(500));
    let (stdout, stdout_truncated) = out_rx.take(grace);
    let (stderr_tail, _) = err_rx.take(grace);
    let status =
        status.unwrap_or_else(|| classify(exit.expect("exit status when not killed by us")));
    let status = stop_or_crash(status, stop);
    ChildOutcome {
        status,
        stdout,
        stdout_truncated,
        stderr_tail,
        duration: started.elapsed(),
    }
}

/// Waits for the child; at the deadline or on a stop request kills its group. Returns our
/// verdict when we killed it, else its exit status.
fn wait_until(
    child: &mut Child,
    pgid: i32,
    deadline: Instant,
    grace: Duration,
    stop: &StopSignal,
) -> (Option<Status>, Option<ExitStatus>) {
    loop {
        let now = Instant::now();
        let slice = deadline.saturating_duration_since(now).min(WAIT_SLICE);
        match child.wait_timeout(slice) {
            Ok(Some(exit)) => return (None, Some(exit)),
            Ok(None) => {}
            Err(_) => {
                let _ = child.wait();
                return (None, Some(ExitStatus::from_raw(-1)));
            }
        }
        let verdict = if stop.level() > 0 {
            Status::Interrupted
        } else if Instant::now() >= deadline {
            Status::TimedOut
        } else {
            continue;
        };
        terminate(child, pgid, grace, stop);
        return (Some(verdict), None);
    }
}

/// Output read so far by a pipe's reader thread, shared so that a pipe held open by an escaped
/// process still yields what arrived before the caller stopped waiting.
type Shared = Arc<Mutex<(Vec<u8>, bool)>>;

/// A pipe read to its end on a thread, keeping the first (or, with `tail`, the last) `limit`
/// bytes.
struct Drain {
    shared: Shared,
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// What was read: all of it when the pipe closes within `grace`, else what came so far
    /// (the reader thread is abandoned, stuck on a pipe an escaped process holds).
    fn take(self, grace: Duration) -> (Vec<u8>, bool) {
        let _ = self.done.recv_timeout(grace);
        let mut kept = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut kept.0), kept.1)
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>, limit: usize, tail: bool) -> Drain {
    let (tx, done) = mpsc::channel();
    let shared: Shared = Arc::default();
    let Some(mut pipe) = pipe else {
        let _ = tx.send(());
        return Drain { shared, done };
    };
    let into = shared.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut kept = into.lock().unwrap_or_else(|e| e.into_inner());
            let (bytes, truncated) = &mut *kept;
            keep(bytes, truncated, &buf[..n], limit, tail);
        }
        let _ = tx.send(());
    });
    Drain { shared, done }
}
