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
pub mod worker;

use anyhow::Result;

use crate::cli::{Cli, Command, ModelsCommand, ScopeArgs};
use crate::db::{self, Access, Db, Filter, QueueStore};

pub fn dispatch(cli: &Cli) -> Result<u8> {
    if let Command::Worker = cli.command {
        return worker::run();
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
    let db_text = cli.db.to_string_lossy();
    if db::postgres::is_url(&db_text) {
        return on_postgres(cli, &db_text, access);
    }
    let mut db = Db::open(&cli.db, access)?;
    let code = match &cli.command {
        Command::Models(a) => models::run(a, &mut db)?,
        Command::Enqueue(a) => enqueue::run(a, &mut db)?,
        Command::Run(a) => run::run(a, &db, cli)?,
        Command::Reap(a) => reap::run(a, cli.quiet, &db)?,
        Command::Resume(a) => resume::run(a, &db)?,
        Command::Grade(a) => grade::run(a, &db)?,
        Command::Report(a) => report::run(a, &mut db)?,
        Command::Export(a) => export::run(a, &mut db)?,
        Command::Worker => unreachable!("handled in dispatch"),
    };
    // Creating commands publish before they print; this only catches one that did not.
    db.publish()?;
    Ok(code)
}

/// Every command on a PostgreSQL database through the same store traits; the reports (which
/// read SQL directly for now) read a consistent snapshot of it with the SQLite code, so they
/// give the same numbers.
fn on_postgres(cli: &Cli, url: &str, access: Access) -> Result<u8> {
    let mut store = db::postgres::open(url, access == Access::Create)?;
    match &cli.command {
        Command::Models(a) => models::run(a, &mut store),
        Command::Enqueue(a) => enqueue::run(a, &mut store),
        Command::Run(a) => run::run(a, &store, cli),
        Command::Reap(a) => reap::run(a, cli.quiet, &store),
        Command::Resume(a) => resume::run(a, &store),
        Command::Grade(a) => grade::run(a, &store),
        Command::Report(a) => report::run(a, &mut Db::in_memory(store.snapshot()?)),
        Command::Export(a) => export::run(a, &mut Db::in_memory(store.snapshot()?)),
        Command::Worker => unreachable!("handled in dispatch"),
    }
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

pub fn iso_time_ms(ms: i64) -> String {
    let base = iso_time(ms);
    format!("{}.{:03}Z", base.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// ISO-8601 UTC for a millisecond timestamp.
pub fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
