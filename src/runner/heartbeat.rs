//! Lease renewal on its own thread and connection: no model call can block it.

use anyhow::Result;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::db::Store;

pub struct Heartbeat {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Renews the runner's leases through `store`, a handle of its own.
    pub fn start(store: Box<dyn Store>, runner_id: i64, lease: Duration) -> Result<Heartbeat> {
        let (stop, rx) = mpsc::channel::<()>();
        let every = (lease / 3).max(Duration::from_millis(100));
        let lease_ms = lease.as_millis() as i64;
        let handle = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    if let Err(e) = store.renew_leases(runner_id, lease_ms) {
                        log::warn!("heartbeat of runner {runner_id} failed: {e:#}");
                    }
                }
            })?;
        Ok(Heartbeat {
            stop,
            handle: Some(handle),
        })
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
