//! One attempt as a child process: its own process group, pipes drained on threads into bounded
//! buffers, a hard deadline, then SIGTERM to the group and SIGKILL after a grace.

pub mod template;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

/// Output kept from a child's stdout; the rest is read and dropped so the child never blocks.
pub const MAX_STDOUT: usize = 16 * 1024 * 1024;
/// The tail of stderr kept for the attempt record.
pub const MAX_STDERR: usize = 8 * 1024;
/// How often a waiting attempt looks at the stop request of the runner.
const WAIT_SLICE: Duration = Duration::from_millis(200);
/// Prompts up to this size are written without a thread: PIPE_BUF, which fits even the
/// one-page pipes Linux makes for a user over `pipe-user-pages-soft`.
const INLINE_STDIN: usize = 4096;

pub struct ChildSpec {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub kill_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Exited(i32),
    Signaled(i32),
    /// Killed by us at the deadline.
    TimedOut,
    /// Killed by us because the runner is stopping.
    Interrupted,
    /// Could not be started at all.
    SpawnFailed(String),
    /// Could not be started for now: the system is out of processes, files or memory.
    SpawnBusy(String),
}

#[derive(Debug)]
pub struct ChildOutcome {
    pub status: Status,
    pub stdout: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_tail: Vec<u8>,
    pub duration: Duration,
}

/// The runner's request to its attempts: 0 carry on, 1 terminate (with grace), 2 kill now.
#[derive(Default)]
pub struct StopSignal(AtomicU8);

impl StopSignal {
    pub const TERMINATE: u8 = 1;
    pub const KILL: u8 = 2;

    pub fn request(&self, level: u8) {
        self.0.fetch_max(level, Ordering::SeqCst);
    }

    pub fn level(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs one child to completion, timeout or stop. Never waits without a deadline.
pub fn run(spec: &ChildSpec, stop: &StopSignal) -> ChildOutcome {
    let started = Instant::now();
    let failed = |msg: String| ChildOutcome {
        status: Status::SpawnFailed(msg),
        stdout: Vec::new(),
        stdout_truncated: false,
        stderr_tail: Vec::new(),
        duration: started.elapsed(),
    };
    let Some((program, args)) = spec.argv.split_first() else {
        return failed("empty command".into());
    };
    if stop.level() > 0 {
        // Queued before the stop request: never start it.
        return ChildOutcome {
            status: Status::Interrupted,
            ..failed(String::new())
        };
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if system_limit(&e) => {
            return ChildOutcome {
                status: Status::SpawnBusy(format!(
                    "cannot start {program:?} now: {e} (a system limit; will retry)"
                )),
                ..failed(String::new())
            }
        }
        Err(e) => return failed(format!("cannot start {program:?}: {e}")),
    };
    if let Some(pidfd) = pidfd_open(child.id()).filter(|_| !force_threads()) {
        feed_stdin(&mut child, &spec.stdin);
        return run_polled(child, pidfd, spec, stop, started);
    }
    run_threaded(child, spec, stop, started)
}

/// Tests take the fallback path for kernels without pidfd (before 5.3) on purpose.
fn force_threads() -> bool {
    cfg!(test) && THREADED.with(|t| t.get())
}

thread_local! {
    static THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The fallback without pidfd: the pipes drained on threads, the exit awaited with
/// `wait_timeout`, the same limits and kill rules as the poll loop.
fn run_threaded(
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

/// Spawn errors that say the system is short of processes, files or memory right now, not
/// that the command is wrong.
fn system_limit(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

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
fn stop_or_crash(status: Status, stop: &StopSignal) -> Status {
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

/// A pidfd for the child (Linux 5.3+): readable once it has exited, so one `poll` waits for
/// its output and its exit together, with no thread or SIGCHLD handler per attempt.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
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
fn run_polled(
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
        let mut fds = Vec::with_capacity(3);
        for fd in [out.fd(), err.fd()].into_iter().flatten() {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let watch_exit = exit.is_none();
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
            continue; // timeout or EINTR: look at the clock and the stop request again
        }
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

fn classify(exit: ExitStatus) -> Status {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => Status::Exited(code),
        (None, Some(sig)) => Status::Signaled(sig),
        (None, None) => Status::Exited(-1),
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

/// SIGTERM to the group, SIGKILL after the grace (or at once on a second stop request).
fn terminate(child: &mut Child, pgid: i32, grace: Duration, stop: &StopSignal) {
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

fn kill_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is touched.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn feed_stdin(child: &mut Child, input: &[u8]) {
    let Some(mut stdin) = child.stdin.take() else {
        return;
    };
    if input.len() <= INLINE_STDIN {
        // Fits the pipe buffer: never blocks. A child that exits early gives EPIPE: ignored.
        let _ = stdin.write_all(input);
    } else {
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
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

/// Appends `data`, keeping the first (or, with `tail`, the last) `limit` bytes.
fn keep(kept: &mut Vec<u8>, truncated: &mut bool, data: &[u8], limit: usize, tail: bool) {
    kept.extend_from_slice(data);
    if kept.len() > limit {
        *truncated = true;
        if tail {
            kept.drain(..kept.len() - limit);
        } else {
            kept.truncate(limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], timeout_ms: u64) -> ChildSpec {
        ChildSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: b"hello".to_vec(),
            env: vec![],
            timeout: Duration::from_millis(timeout_ms),
            kill_grace: Duration::from_millis(300),
        }
    }

    #[test]
    fn echoes_stdin() {
        let out = run(&spec(&["cat"], 5000), &StopSignal::default());
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(out.stdout, b"hello");
    }

    #[test]
    fn kills_at_deadline() {
        let out = run(
            &spec(&["sh", "-c", "trap '' TERM; sleep 30"], 300),
            &StopSignal::default(),
        );
        assert_eq!(out.status, Status::TimedOut);
        assert!(out.duration < Duration::from_secs(10));
    }

    #[test]
    fn the_threaded_fallback_keeps_output_a_escaped_process_holds_open() {
        THREADED.with(|t| t.set(true));
        let out = run(
            &spec(&["sh", "-c", "setsid sleep 3 & sleep 0.3; echo hi"], 10_000),
            &StopSignal::default(),
        );
        let hung = run(
            &spec(&["sh", "-c", "trap '' TERM; sleep 30"], 300),
            &StopSignal::default(),
        );
        THREADED.with(|t| t.set(false));
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(hung.status, Status::TimedOut);
    }

    #[test]
    fn escaped_process_holding_the_pipe_is_abandoned() {
        // setsid leaves our process group, so the group kill misses it; it keeps stdout open.
        let out = run(
            // The pause lets setsid run before the group kill that follows the leader's exit.
            &spec(&["sh", "-c", "setsid sleep 3 & sleep 0.3; echo hi"], 10_000),
            &StopSignal::default(),
        );
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(out.stdout, b"hi\n");
        assert!(
            out.duration < Duration::from_millis(2500),
            "{:?}",
            out.duration
        );
    }

    #[test]
    fn stdout_is_capped_and_stderr_keeps_its_tail() {
        let script = "head -c 17000000 /dev/zero; i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo line$i >&2; done";
        let out = run(&spec(&["sh", "-c", script], 30_000), &StopSignal::default());
        assert_eq!(out.status, Status::Exited(0));
        assert!(out.stdout_truncated);
        assert_eq!(out.stdout.len(), MAX_STDOUT);
        assert!(out.stderr_tail.len() <= MAX_STDERR);
        assert!(String::from_utf8_lossy(&out.stderr_tail).ends_with("line2000\n"));
    }

    #[test]
    fn stop_request_interrupts() {
        let stop = std::sync::Arc::new(StopSignal::default());
        let s = stop.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            s.request(StopSignal::TERMINATE);
        });
        let out = run(&spec(&["sleep", "30"], 60_000), &stop);
        t.join().unwrap();
        assert_eq!(out.status, Status::Interrupted);
        assert!(out.duration < Duration::from_secs(10));
    }

    #[test]
    fn missing_program_is_spawn_failure() {
        let out = run(&spec(&["/no/such/program"], 1000), &StopSignal::default());
        assert!(matches!(out.status, Status::SpawnFailed(_)));
    }

    #[test]
    fn system_limits_are_told_apart_from_bad_commands() {
        for errno in [libc::EAGAIN, libc::EMFILE, libc::ENFILE, libc::ENOMEM] {
            assert!(system_limit(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOENT, libc::EACCES, libc::ENOEXEC] {
            assert!(!system_limit(&std::io::Error::from_raw_os_error(errno)));
        }
    }
}
