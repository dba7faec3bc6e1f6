//! The child awaited by `poll` on its two pipes and its pidfd (Linux 5.3+), on the calling
//! thread: no thread or SIGCHLD handler per attempt.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

use super::signals::{kill_group, stop_or_crash};
use super::{
    classify, keep, ChildOutcome, ChildSpec, Status, StopSignal, MAX_STDERR, MAX_STDOUT, WAIT_SLICE,
};

/// A pidfd for the child (Linux 5.3+): readable once it has exited, so one `poll` waits for
/// its output and its exit together, with no thread or SIGCHLD handler per attempt.
pub(super) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The child's pipes read and its exit awaited on this thread, by `poll` on the two pipes and
/// the pidfd. Same rules as the threaded path: bounded buffers, SIGTERM to the group at the
/// deadline or on a stop request, SIGKILL after the grace (at once on a second stop), the group
/// killed when the leader ends, and pipes held open by an escaped process abandoned after a
/// bounded wait.
pub(super) fn run_polled(
    mut child: Child,
    pidfd: OwnedFd,
    spec: &ChildSpec,
    stop: &StopSignal,
    started: Instant,
) -> ChildOutcome {
    let pgid = child.id() as i32;
    let mut out = Capture::new(child.stdout.take(), MAX_STDOUT, false);
    let mut err = Capture::new(child.stderr.take(), MAX_STDERR, true);
    let deadline = started + spec.timeout;
    let mut verdict: Option<Status> = None;
    let mut term_until: Option<Instant> = None;
    let mut exit: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if exit.is_none() {
            match term_until {
                None if stop.level() > 0 || now >= deadline => {
                    verdict = Some(if stop.level() > 0 {
                        Status::Interrupted
                    } else {
                        Status::TimedOut
                    });
                    kill_group(pgid, libc::SIGTERM);
                    term_until = Some(now + spec.kill_grace);
                }
                Some(until) if stop.level() >= StopSignal::KILL || now >= until => {
                    kill_group(pgid, libc::SIGKILL);
                    // Bounded even for a child stuck in uninterruptible I/O.
                    let reaped = child.wait_timeout(Duration::from_secs(5)).ok().flatten();
                    exit = Some(reaped.unwrap_or_else(|| ExitStatus::from_raw(-1)));
                }
                _ => {}
            }
        }
        if exit.is_some() && drain_until.is_none() {
            // Whatever the leader did, nothing of its group may outlive the attempt.
            kill_group(pgid, libc::SIGKILL);
            drain_until = Some(Instant::now() + spec.kill_grace.max(Duration::from_millis(500)));
        }
        if let Some(until) = drain_until {
            if (out.done() && err.done()) || Instant::now() >= until {
                break;
            }
        }
        let next = match (drain_until, term_until) {
            (Some(until), _) => until,
            (None, Some(until)) => until,
            (None, None) => deadline,
        };
        let slice = next
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        if let Some(status) = poll_once(
            &mut child,
            &pidfd,
            &mut out,
            &mut err,
            exit.is_none(),
            slice,
        ) {
            exit = Some(status);
        }
    }
    let status =
        verdict.unwrap_or_else(|| classify(exit.expect("exit status when not killed by us")));
    let status = stop_or_crash(status, stop);
    ChildOutcome {
        status,
        stdout: out.kept,
        stdout_truncated: out.truncated,
        stderr_tail: err.kept,
        duration: started.elapsed(),
    }
}

/// One `poll` of at most `slice` on the pipes (and on the pidfd while `watch_exit`): reads what
/// became readable, and returns the exit status once the child has exited.
fn poll_once<O: Read + AsRawFd, E: Read + AsRawFd>(
    child: &mut Child,
    pidfd: &OwnedFd,
    out: &mut Capture<O>,
    err: &mut Capture<E>,
    watch_exit: bool,
    slice: Duration,
) -> Option<ExitStatus> {
    let mut fds = Vec::with_capacity(3);
    for fd in [out.fd(), err.fd()].into_iter().flatten() {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    if watch_exit {
        fds.push(libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Round up, so a sub-millisecond slice does not spin.
    let ms = slice.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    // SAFETY: fds is a valid array of pollfd for its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return None; // timeout or EINTR: look at the clock and the stop request again
    }
    let mut exit = None;
    for fd in &fds {
        if fd.revents == 0 {
            continue;
        }
        if out.fd() == Some(fd.fd) {
            out.read();
        } else if err.fd() == Some(fd.fd) {
            err.read();
        } else if watch_exit {
            if let Ok(Some(status)) = child.try_wait() {
                exit = Some(status);
            }
        }
    }
    exit
}

/// One pipe read as it becomes readable, keeping the first (or, with `tail`, the last)
/// `limit` bytes.
struct Capture<R> {
    pipe: Option<R>,
    limit: usize,
    tail: bool,
    kept: Vec<u8>,
    truncated: bool,
}

impl<R: Read + AsRawFd> Capture<R> {
    fn new(pipe: Option<R>, limit: usize, tail: bool) -> Capture<R> {
        Capture {
            pipe,
            limit,
            tail,
            kept: Vec::new(),
            truncated: false,
        }
    }

    fn fd(&self) -> Option<i32> {
        self.pipe.as_ref().map(|p| p.as_raw_fd())
    }

    fn done(&self) -> bool {
        self.pipe.is_none()
    }

    /// One read (poll said it will not block); end of file or an error closes the pipe.
    fn read(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64 * 1024];
        match pipe.read(&mut buf) {
            Ok(0) => self.pipe = None,
            Ok(n) => keep(
                &mut self.kept,
                &mut self.truncated,
                &buf[..n],
                self.limit,
                self.tail,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }
}
