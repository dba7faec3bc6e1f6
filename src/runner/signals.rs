//! SIGINT / SIGTERM: the first stops claiming and terminates attempts with their grace; the
//! second kills them at once and, if the runner is still busy after a moment, exits.

use signal_hook::consts::{SIGINT, SIGTERM};
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
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
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

pub fn exit_code(sig: i32) -> i32 {
    128 + sig
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
