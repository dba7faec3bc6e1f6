//! `export`: outputs and grades as JSONL, CSV or a GNU parallel joblog.

use anyhow::Result;
use rusqlite::Connection;

use crate::cli::ExportArgs;

pub fn run(_a: &ExportArgs, _conn: &mut Connection) -> Result<u8> {
    crate::usage!("export is not available yet")
}
