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
use crate::db::{self, jobs::Filter, Access, Db};

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
    let db_text = cli.db.to_string_lossy();
    if db::postgres::is_url(&db_text) {
        return on_postgres(cli, &db_text);
    }
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
    let mut db = Db::open(&cli.db, access)?;
    let code = match &cli.command {
        Command::Models(a) => models::run(a, &mut db)?,
        Command::Enqueue(a) => enqueue::run(a, &mut db)?,
        Command::Run(a) => run::run(a, &mut db.conn, cli)?,
        Command::Reap(a) => reap::run(a, cli.quiet, &mut db.conn)?,
        Command::Resume(a) => resume::run(a, &mut db.conn)?,
        Command::Grade(a) => grade::run(a, &mut db.conn)?,
        Command::Report(a) => report::run(a, &mut db.conn)?,
        Command::Export(a) => export::run(a, &mut db.conn)?,
        Command::Worker => unreachable!("handled in dispatch"),
    };
    // Creating commands publish before they print; this only catches one that did not.
    db.publish()?;
    Ok(code)
}

/// Every command on a PostgreSQL database. Reads work on a consistent snapshot with the same
/// code as on SQLite; commands that record new work publish a draft; the rest (run, reap,
/// resume, grade) use the engine's own SQL.
fn on_postgres(cli: &Cli, url: &str) -> Result<u8> {
    use db::postgres::{self as pg, session::Session};
    let target = pg::Target::parse(url)?;
    let creates = matches!(
        cli.command,
        Command::Models(ModelsCommand::Set(_)) | Command::Enqueue(_)
    );
    let mut client = target.connect()?;
    pg::migrate(&mut client, &target.shown, creates)?;
    match &cli.command {
        Command::Models(a @ ModelsCommand::Set(_)) => {
            let mut db = Db::postgres_draft(target, client)?;
            models::run(a, &mut db)
        }
        Command::Enqueue(a) => {
            let mut db = Db::postgres_draft(target, client)?;
            enqueue::run(a, &mut db)
        }
        Command::Models(a @ ModelsCommand::List(_)) => {
            let mut db = Db::in_memory(pg::snapshot::snapshot(&mut client, &target.shown)?);
            models::run(a, &mut db)
        }
        Command::Report(a) => {
            let mut conn = pg::snapshot::snapshot(&mut client, &target.shown)?;
            report::run(a, &mut conn)
        }
        Command::Export(a) => {
            let mut conn = pg::snapshot::snapshot(&mut client, &target.shown)?;
            export::run(a, &mut conn)
        }
        Command::Run(a) => {
            let mut session = Session::with_client(target.clone(), client);
            let ids = match &a.scope.ids_file {
                Some(source) => Some(crate::ids::read(source)?),
                None => None,
            };
            let filter = Filter {
                batch: a.scope.batch.clone(),
                models: a.scope.models.clone(),
                ids: ids.is_some(),
            };
            if let Some(ids) = ids {
                session.install_ids(ids)?;
            }
            let mut store = db::runner_store::Postgres { session };
            let hb = crate::runner::heartbeat::Target::Postgres(Box::new(target));
            run::run_on(a, &mut store, filter, hb, cli)
        }
        Command::Reap(a) => reap::run_pg(a, cli.quiet, &mut client),
        Command::Resume(a) => resume::run_pg(a, &mut client),
        Command::Grade(a) => grade::run_pg(a, &mut client),
        Command::Worker => unreachable!("handled in dispatch"),
    }
}

/// `--batch/--model/--ids-file` as a filter on PostgreSQL, the ids loaded into the connection.
pub fn scope_filter_pg(scope: &ScopeArgs, client: &mut ::postgres::Client) -> Result<Filter> {
    let ids = match &scope.ids_file {
        Some(source) => {
            let ids = crate::ids::read(source)?;
            db::postgres::queue::install_ids(client, &ids)?;
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
