//! One file per subcommand, each `run(args, &mut Connection) -> Result<u8>` (the exit code).
//! The database is opened once here and handed in.

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

use crate::cli::{Cli, Command, ScopeArgs};
use crate::db::{self, jobs::Filter};

pub fn dispatch(cli: &Cli) -> Result<u8> {
    // Commands that record new work may create the database; the others need it to exist
    // (grade too: there is nothing to grade in a new database).
    let creates = matches!(cli.command, Command::Models(_) | Command::Enqueue(_));
    // These touch no database.
    match &cli.command {
        Command::Worker => return worker::run(),
        Command::Completions(a) => return shell::completions(a),
        Command::Man(a) => return shell::man(a),
        _ => {}
    }
    let fresh = creates && !cli.db.exists();
    let mut conn = db::open(&cli.db, creates)?;
    let result = match &cli.command {
        Command::Models(a) => models::run(a, &mut conn),
        Command::Enqueue(a) => enqueue::run(a, &mut conn),
        Command::Run(a) => run::run(a, &mut conn, cli),
        Command::Reap(a) => reap::run(a, cli.quiet, &mut conn),
        Command::Resume(a) => resume::run(a, &mut conn),
        Command::Grade(a) => grade::run(a, &mut conn),
        Command::Report(a) => report::run(a, &mut conn),
        Command::Export(a) => export::run(a, &mut conn),
        Command::Worker | Command::Completions(_) | Command::Man(_) => {
            unreachable!("handled above")
        }
    };
    // A reader that went away (`| true`) is no failure of the command: its work is committed.
    let failed = result
        .as_ref()
        .is_err_and(|e| !crate::error::is_broken_pipe(e));
    if failed && fresh {
        // The first command failed on bad input: leave no empty database behind.
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = cli.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
    result.map_err(|e| db::explain_busy(e, &cli.db))
}

/// Turns `--batch/--model/--ids-file` into a filter, loading the ids into the connection.
pub fn scope_filter(scope: &ScopeArgs, conn: &rusqlite::Connection) -> Result<Filter> {
    let ids = match &scope.ids_file {
        Some(source) => {
            let ids = crate::ids::read(source)?;
            crate::db::jobs::install_ids(conn, &ids)?;
            true
        }
        None => false,
    };
    Ok(Filter {
        batch: scope.batch.clone(),
        models: scope.models.clone(),
        ids,
    })
}

/// ISO-8601 UTC with milliseconds, for log files.
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
