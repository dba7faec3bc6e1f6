//! llmbatch: batches of LLM prompts × models, run as killable child processes, recorded in
//! one SQLite file. The binary is a thin shell over these modules.

pub mod attempt;
pub mod backends;
pub mod cli;
pub mod commands;
pub mod db;
pub mod error;
pub mod exec;
pub mod grading;
pub mod ids;
pub mod logging;
pub mod models;
pub mod report;
pub mod runner;
pub mod text;
pub mod timeouts;
pub mod util;
