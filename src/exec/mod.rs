//! One attempt as a child process: its own process group, pipes drained on threads into bounded
//! buffers, a hard deadline, then SIGTERM to the group and SIGKILL after a grace.

pub mod template;

mod polled;
mod signals;
mod threaded;

use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use polled::{pidfd_open, run_polled};
pub use signals::{is_stop_exit, is_stop_signal, kill_leftovers, signal_abbrev, STOP_SIGNALS};
use threaded::run_threaded;

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

/// Spawn errors that say the system is short of processes, files or memory right now, not
/// that the command is wrong.
fn system_limit(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    )
}

fn classify(exit: ExitStatus) -> Status {
    match (exit.code(), exit.signal()) {
        (Some(code), _) => Status::Exited(code),
        (None, Some(sig)) => Status::Signaled(sig),
        (None, None) => Status::Exited(-1),
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
