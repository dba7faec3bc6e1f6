//! Thin entry: parse, set up logging, dispatch, print an error once, exit with its code.

use clap::Parser;
use std::process::ExitCode;

use llmbatch::cli::Cli;
use llmbatch::{commands, error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    llmbatch::logging::init(&cli);
    match commands::dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`| head`): nothing more to say, as for any Unix filter.
        Err(err) if error::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llmbatch: error: {err:#}");
            ExitCode::from(error::exit_code_for(&err))
        }
    }
}
