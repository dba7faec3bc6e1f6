//! Storage: the store traits (the seam every engine implements) and the engines behind them.
//! Only this directory holds SQL text or driver types.

#[cfg(test)]
pub mod conformance;
pub mod export;
pub mod postgres;
pub mod report;
pub mod sqlite;
pub mod store;

use anyhow::Result;
use std::path::Path;

pub use export::*;
pub use sqlite::{busy_timeout, explain_busy, is_busy, Db};
pub use store::*;

/// What a command may do to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only: never writes, never creates (SQLite leaves no `-wal`/`-shm` behind).
    Read,
    /// Reads and writes a database that must exist.
    Write,
    /// Writes, creating the database if missing (enqueue, models set): see [`Db`].
    Create,
}

/// Opens the database named by `--db` with the engine it calls for: a `postgres://` or
/// `postgresql://` URL is PostgreSQL, anything else an SQLite file.
pub fn open(target: &Path, access: Access) -> Result<Box<dyn Store>> {
    let text = target.to_string_lossy();
    if postgres::is_url(&text) {
        let store = postgres::open(&text, access == Access::Create)?;
        if access == Access::Read {
            store.hold_snapshot()?;
        }
        return Ok(Box::new(store));
    }
    Ok(Box::new(Db::open(target, access)?))
}

/// Whether an error may pass if the work is tried again later: a busy SQLite file, a
/// PostgreSQL connection lost (a restart).
pub fn is_transient(err: &anyhow::Error) -> bool {
    is_busy(err) || postgres::is_disconnect(err)
}
