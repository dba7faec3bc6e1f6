//! llmbatch: batches of LLM prompts × models, run as killable child processes, recorded in
//! one SQLite file. The binary is a thin shell over these modules.

// `println!` panics when stdout is a closed pipe (`llmbatch enqueue … | true`); every write to
// stdout goes through `outln!`, which returns the error, and `main` ends a broken pipe quietly.
#![deny(clippy::print_stdout)]

/// `println!` that returns the `io::Error` instead of panicking: a closed stdout is an error
/// value, which `main` turns into a quiet exit 0 like any Unix filter.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub mod attempt;
pub mod backends;
pub mod cache;
pub mod chat;
pub mod cli;
pub mod commands;
pub mod db;
pub mod domain;
pub mod error;
pub mod exec;
pub mod grading;
pub mod ids;
pub mod liveness;
pub mod logging;
pub mod models;
pub mod reaper;
pub mod report;
pub mod runner;
pub mod text;
pub mod timefmt;
pub mod timeouts;
pub mod util;
