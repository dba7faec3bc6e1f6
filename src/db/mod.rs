//! Storage: the store traits (the seam every engine implements) and the engines behind them.
//! Only this directory holds SQL text or driver types.

#[cfg(test)]
pub mod conformance;
pub mod export;
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

/// Opens the database named by `--db` with the engine it calls for.
pub fn open(target: &Path, access: Access) -> Result<Box<dyn Store>> {
    Ok(Box::new(Db::open(target, access)?))
}
