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
pub mod worker;

use anyhow::Result;
use std::io::Write;

use crate::cli::{Cli, Command, ScopeArgs};
use crate::db::{self, jobs::Filter};

pub fn dispatch(cli: &Cli) -> Result<u8> {
    // Commands that record new work may create the database; the others need it to exist.
    let creates = matches!(
        cli.command,
        Command::Models(_) | Command::Enqueue(_) | Command::Grade(_)
    );
    if let Command::Worker = cli.command {
        return worker::run();
    }
    let mut conn = db::open(&cli.db, creates)?;
    match &cli.command {
        Command::Models(a) => models::run(a, &mut conn),
        Command::Enqueue(a) => enqueue::run(a, &mut conn),
        Command::Run(a) => run::run(a, &mut conn, cli),
        Command::Reap(a) => reap::run(a, &mut conn),
        Command::Resume(a) => resume::run(a, &mut conn),
        Command::Grade(a) => grade::run(a, &mut conn),
        Command::Report(a) => report::run(a, &mut conn),
        Command::Export(a) => export::run(a, &mut conn),
        Command::Worker => unreachable!("handled above"),
    }
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

/// Logs go to stderr (and `--log-file`); stdout carries only results.
pub fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => log::LevelFilter::Error,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let file = cli.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("llmbatch: cannot open log file {}: {e}", p.display()))
            .ok()
    });
    // -q quiets stderr, not the log file: a cron job's log keeps its info lines.
    let stderr_level = level;
    let level = if file.is_some() {
        level.max(log::LevelFilter::Info)
    } else {
        level
    };
    let file = file.map(std::sync::Mutex::new);
    let mut builder = env_logger::Builder::new();
    builder
        .filter_module("llmbatch", level)
        .filter_level(log::LevelFilter::Warn);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format(move |buf, record| {
        let line = format!(
            "{} {:<5} {}",
            chrono_like_now(),
            record.level(),
            record.args()
        );
        if let Some(f) = &file {
            if let Ok(mut f) = f.lock() {
                let _ = writeln!(f, "{line}");
            }
        }
        if record.level() <= stderr_level {
            writeln!(buf, "llmbatch: {}", record.args())?;
        }
        Ok(())
    });
    let _ = builder.try_init();
}

/// UTC timestamp for log files, without a date crate.
fn chrono_like_now() -> String {
    let ms = crate::util::now_ms();
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
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
