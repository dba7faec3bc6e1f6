//! One file per subcommand, each `run(args, &mut Connection) -> Result<u8>` (the exit code);
//! those that may create the database take the `Db` instead, to publish it when committed.
//! The database is opened once here, as each command needs it, and handed in.

pub mod enqueue;
pub mod export;
pub mod grade;
pub mod models;
pub mod reap;
pub mod report;
pub mod resume;
pub mod run;
pub mod shell;
pub mod worker;

use anyhow::Result;

use crate::cli::{Cli, Command, ModelsCommand, ScopeArgs};
use crate::db::{self, Access, Filter, QueueStore};

pub fn dispatch(cli: &Cli) -> Result<u8> {
    // These touch no database.
    match &cli.command {
        Command::Worker => return worker::run(),
        Command::Completions(a) => return shell::completions(a),
        Command::Man(a) => return shell::man(a),
        _ => {}
    }
    let result = run_command(cli);
    if db::postgres::is_url(&cli.db.to_string_lossy()) {
        return result;
    }
    result.map_err(|e| db::explain_busy(e, &cli.db))
}

fn run_command(cli: &Cli) -> Result<u8> {
    // Commands that record new work may create the database (on a draft published when they
    // commit); reports never write; the others need it to exist (grade too: there is nothing
    // to grade in a new database).
    let access = match &cli.command {
        Command::Models(ModelsCommand::Set(_)) | Command::Enqueue(_) => Access::Create,
        Command::Models(ModelsCommand::List(_)) | Command::Report(_) | Command::Export(_) => {
            Access::Read
        }
        _ => Access::Write,
    };
    // The engine the database calls for: a postgres:// URL or an SQLite file.
    let mut db = db::open(&cli.db, access)?;
    let db = &mut *db;
    let code = match &cli.command {
        Command::Models(a) => models::run(a, db)?,
        Command::Enqueue(a) => enqueue::run(a, db)?,
        Command::Run(a) => run::run(a, db, cli)?,
        Command::Reap(a) => reap::run(a, cli.quiet, db)?,
        Command::Resume(a) => resume::run(a, db)?,
        Command::Grade(a) => grade::run(a, db)?,
        Command::Report(a) => report::run(a, db)?,
        Command::Export(a) => export::run(a, db)?,
        Command::Worker | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled in dispatch")
        }
    };
    // Creating commands publish before they print; this only catches one that did not.
    db.publish()?;
    Ok(code)
}

/// The jobs `--batch`, `--model` and `--ids-file` select; an id naming no job is bad input.
pub fn scope_filter(scope: &ScopeArgs, store: &dyn QueueStore) -> Result<Filter> {
    let ids = match &scope.ids_file {
        Some(source) => {
            let ids = crate::ids::read(source)?;
            let unknown = store.unknown_ids(&ids)?;
            if !unknown.is_empty() {
                let shown: Vec<String> = unknown.iter().take(20).map(i64::to_string).collect();
                let more = if unknown.len() > 20 {
                    format!(" and {} more", unknown.len() - 20)
                } else {
                    String::new()
                };
                crate::usage!(
                    "{} unknown job id(s) in the ids file: {}{more}",
                    unknown.len(),
                    shown.join(", ")
                );
            }
            Some(ids)
        }
        None => None,
    };
    Ok(Filter {
        batch: scope.batch.clone(),
        models: scope.models.clone(),
        ids,
    })
}
