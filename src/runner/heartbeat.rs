//! Lease renewal on its own thread and connection: no model call can block it.

use anyhow::Result;
use rusqlite::params;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::util::now_ms;

pub struct Heartbeat {
    stop: Sender<()>,
    handle: Option<JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(db: &Path, runner_id: i64, lease: Duration) -> Result<Heartbeat> {
        let conn = crate::db::open_again(db)?;
        let (stop, rx) = mpsc::channel::<()>();
        let every = (lease / 3).max(Duration::from_millis(100));
        let lease_ms = lease.as_millis() as i64;
        let handle = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    if let Err(e) = beat(&conn, runner_id, lease_ms) {
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

fn beat(conn: &rusqlite::Connection, runner_id: i64, lease_ms: i64) -> Result<()> {
    let now = now_ms();
    conn.execute(
        "UPDATE runners SET heartbeat_at = ?1 WHERE id = ?2",
        params![now, runner_id],
    )?;
    conn.execute(
        "UPDATE jobs SET lease_expires_at = ?1 WHERE runner_id = ?2 AND state = 'running'",
        params![now + lease_ms, runner_id],
    )?;
    Ok(())
}
