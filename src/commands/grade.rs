//! `grade`: queue one grade job per (generated job, grader).

use anyhow::Result;
use rusqlite::Connection;

use crate::cli::GradeArgs;

pub fn run(_a: &GradeArgs, _conn: &mut Connection) -> Result<u8> {
    crate::usage!("grade is not available yet")
}
