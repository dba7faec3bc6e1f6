//! Opening the one database file: pragmas on every open, migrations by `PRAGMA user_version`.

pub mod jobs;

use anyhow::{Context, Result};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

use crate::error::UsageError;

/// Migrations in order. Never remove or edit an entry once shipped: add a new file.
const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../sql/001_init.sql")),
    ("002_grades", include_str!("../../sql/002_grades.sql")),
    (
        "003_report_indexes",
        include_str!("../../sql/003_report_indexes.sql"),
    ),
    ("008_sweeps", include_str!("../../sql/008_sweeps.sql")),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The longest `LLMBATCH_BUSY_TIMEOUT` taken.
const BUSY_TIMEOUT_MAX: Duration = Duration::from_secs(86400);

/// How long a writer waits for another to finish before giving up: 30 s, or
/// `LLMBATCH_BUSY_TIMEOUT` (a duration such as `2m`, at most 24h).
pub fn busy_timeout() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        let default = Duration::from_secs(30);
        let Ok(text) = std::env::var("LLMBATCH_BUSY_TIMEOUT") else {
            return default;
        };
        // A bad value must not stop a cron job that worked yesterday: say so, use the default.
        // SQLite counts the wait in i32 milliseconds; a day is already far beyond any use.
        let wait = crate::util::parse_duration(&text).and_then(|d| {
            if d > BUSY_TIMEOUT_MAX {
                anyhow::bail!("{text:?} is longer than the limit of 24h");
            }
            Ok(d)
        });
        wait.unwrap_or_else(|e| {
            log::warn!("warning: LLMBATCH_BUSY_TIMEOUT: {e:#}; using the default 30s");
            default
        })
    })
}

/// Opens (creating when `create`) and migrates the database at `path`.
pub fn open(path: &Path, create: bool) -> Result<Connection> {
    if !create && !path.exists() {
        return Err(UsageError(format!(
            "no database at {} — enqueue some work first (llmbatch enqueue), or point --db / LLMBATCH_DB at the right file",
            path.display()
        ))
        .into());
    }
    let mut conn = Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot configure database {}", path.display()))?;
    migrate(&mut conn).with_context(|| format!("cannot migrate database {}", path.display()))?;
    Ok(conn)
}

/// Opens an already-migrated database for a helper thread (heartbeat).
pub fn open_again(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(busy_timeout())?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(UsageError(format!(
            "database schema version {version} is newer than this llmbatch understands ({SCHEMA_VERSION}); upgrade llmbatch"
        ))
        .into());
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // A migration may rebuild a table (SQLite changes a CHECK no other way): foreign keys are
    // off meanwhile, as SQLite's own procedure says, and checked as a whole before the commit.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (name, sql) in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)
            .with_context(|| format!("migration {name} failed"))?;
    }
    let broken: Option<String> = tx
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .optional()?;
    if let Some(table) = broken {
        anyhow::bail!("the migrated schema breaks a foreign key of table {table}");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Whether an error is SQLite's "database is locked / busy" (after the busy timeout).
pub fn is_busy(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy || f.code == rusqlite::ErrorCode::DatabaseLocked
        )
    })
}

/// Adds to a "database is locked" error who holds the file: the live runners on it.
pub fn explain_busy(err: anyhow::Error, path: &Path) -> anyhow::Error {
    if !is_busy(&err) {
        return err;
    }
    let holders = Connection::open(path)
        .and_then(|c| {
            let mut stmt = c.prepare(
                "SELECT host || ':' || pid FROM runners WHERE stopped_at IS NULL ORDER BY id DESC LIMIT 10",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    let who = if holders.is_empty() {
        "another process (no llmbatch runner is registered as live)".to_string()
    } else {
        format!(
            "another process; runners registered as live: {}",
            holders.join(", ")
        )
    };
    err.context(format!(
        "{} stayed locked for {}s by {who}",
        path.display(),
        busy_timeout().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open(&path, true).unwrap());
        let conn = open(&path, true).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open(&path, true).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open(&path, false).unwrap_err();
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }
}
