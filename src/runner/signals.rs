//! SIGINT / SIGTERM / SIGHUP: the first stops claiming and terminates attempts with their
//! grace; the second kills them at once and, if the runner is still busy after a moment, exits.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::exec::StopSignal;

pub struct SignalWatch {
    first: Arc<AtomicI32>,
    handle: Handle,
}

impl SignalWatch {
    pub fn install(stop: Arc<StopSignal>) -> anyhow::Result<SignalWatch> {
        // A SIGCHLD inherited as ignored makes exited children vanish before they are waited
        // for: every attempt would look like it never ended.
        // SAFETY: setting a signal's disposition to the default touches no memory of ours.
        unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        }
        let mut watched = vec![SIGINT, SIGTERM];
        // A closed terminal stops the runner cleanly too, unless it runs under nohup.
        if !ignored(SIGHUP) {
            watched.push(SIGHUP);
        }
        let mut signals = Signals::new(watched)?;
        let handle = signals.handle();
        let first = Arc::new(AtomicI32::new(0));
        let seen = first.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if seen.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                        log::warn!("received {}: stopping; attempts in flight go back to pending (signal again to kill at once)", name(sig));
                        stop.request(StopSignal::TERMINATE);
                    } else {
                        log::warn!("received {} again: killing attempts now", name(sig));
                        stop.request(StopSignal::KILL);
                        let code = exit_code(seen.load(Ordering::SeqCst));
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(3));
                            std::process::exit(code);
                        });
                    }
                }
            })?;
        Ok(SignalWatch { first, handle })
    }

    /// The first signal received, if any.
    pub fn received(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Whether a signal's disposition is "ignore" (as `nohup` leaves SIGHUP).
fn ignored(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current disposition.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

pub fn exit_code(sig: i32) -> i32 {
    128 + sig
}

pub fn name(sig: i32) -> &'static str {
    crate::exec::signal_abbrev(sig).unwrap_or("a signal")
}
