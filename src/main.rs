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
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llmbatch: error: {err:#}");
            ExitCode::from(error::exit_code_for(&err))
        }
    }
}

fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || e.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
            || e.downcast_ref::<csv::Error>().is_some_and(|c| {
                matches!(c.kind(), csv::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}
