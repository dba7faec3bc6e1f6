//! Lease renewal on its own thread and connection: no model call can block it. On PostgreSQL
//! the renewal is the server's time (`now()` + lease) and a lost connection is reopened with
//! a growing pause. The coordinator asks [`Heartbeat::stale_for`] before claiming: a runner
//! whose heartbeat could not be renewed for a lease may have been reaped elsewhere.

use anyhow::Result;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::db::Store;

/// What the heartbeat thread last managed.
struct Pulse {
    /// The last renewal that went through.
    renewed: Instant,
    /// Why the last one failed, when it did.
    trouble: Option<String>,
}

pub struct Heartbeat {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
    pulse: Arc<Mutex<Pulse>>,
}

impl Heartbeat {
    /// Renews the runner's leases through `store`, a handle of its own.
    pub fn start(store: Box<dyn Store>, runner_id: i64, lease: Duration) -> Result<Heartbeat> {
        let (stop, rx) = mpsc::channel::<()>();
        let every = (lease / 3).max(Duration::from_millis(100));
        let lease_ms = lease.as_millis() as i64;
        let pulse = Arc::new(Mutex::new(Pulse {
            renewed: Instant::now(),
            trouble: None,
        }));
        let shared = pulse.clone();
        let handle = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    let result = store.renew_leases(runner_id, lease_ms);
                    let Ok(mut p) = shared.lock() else { return };
                    match result {
                        Ok(()) => {
                            p.renewed = Instant::now();
                            p.trouble = None;
                        }
                        Err(e) => {
                            log::warn!("heartbeat of runner {runner_id} failed: {e:#}");
                            p.trouble = Some(format!("{e:#}"));
                        }
                    }
                }
            })?;
        Ok(Heartbeat {
            stop,
            handle: Some(handle),
            pulse,
        })
    }

    /// Why the heartbeat has not been renewed for over `lease`, if it has not.
    pub fn stale_for(&self, lease: Duration) -> Option<String> {
        let p = self.pulse.lock().ok()?;
        (p.renewed.elapsed() > lease)
            .then(|| p.trouble.clone().unwrap_or_else(|| "no renewal".into()))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
