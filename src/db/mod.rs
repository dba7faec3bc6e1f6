//! Opening the one database file: pragmas on every open, migrations by `PRAGMA user_version`.

pub mod jobs;

use anyhow::{Context, Result};
use rusqlite::Connection;
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
    ("007_streaming", include_str!("../../sql/007_streaming.sql")),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a writer waits for another to finish before giving up: 30 s, or
/// `LLMBATCH_BUSY_TIMEOUT` (a duration such as `2m`).
pub fn busy_timeout() -> Duration {
    static WAIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *WAIT.get_or_init(|| {
        std::env::var("LLMBATCH_BUSY_TIMEOUT")
            .ok()
            .and_then(|v| crate::util::parse_duration(&v).ok())
            .unwrap_or(Duration::from_secs(30))
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
    // A migration that rebuilds a table (to change a CHECK) drops the referenced original:
    // foreign keys stay off while they run and are checked before the commit (SQLite's
    // documented procedure; the pragma has no effect inside a transaction).
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let applied = apply(conn, version);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    applied
}

fn apply(conn: &mut Connection, version: i64) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (name, sql) in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)
            .with_context(|| format!("migration {name} failed"))?;
    }
    let broken: i64 = tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if broken > 0 {
        anyhow::bail!("the migration would break {broken} foreign key reference(s): not applied");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
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
    fn upgrade_keeps_attempts_and_their_grades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = Connection::open(&path).unwrap();
        configure(&conn).unwrap();
        // The schema as 003 left it, with an attempt that a grade points at.
        let tx = conn.transaction().unwrap();
        for (_, sql) in &MIGRATIONS[..3] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 3).unwrap();
        tx.execute_batch(
            "INSERT INTO items (batch, item_id, prompt) VALUES ('b', '1', 'p');
             INSERT INTO jobs (id, kind, batch, item_id, model, state, created_at, updated_at)
                 VALUES (1, 'generate', 'b', '1', 'm', 'done', 0, 0);
             INSERT INTO attempts (id, job_id, number, model, batch, started_at, outcome, output)
                 VALUES (7, 1, 1, 'm', 'b', 0, 'ok', 'kept');
             INSERT INTO grades (job_id, graded_job_id, attempt_id, grader)
                 VALUES (1, 1, 7, 'g');",
        )
        .unwrap();
        tx.commit().unwrap();
        drop(conn);
        let conn = open(&path, false).unwrap();
        let out: String = conn
            .query_row("SELECT output FROM attempts WHERE id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(out, "kept");
        conn.execute(
            "INSERT INTO attempts (job_id, number, model, batch, started_at, outcome, ttft_ms)
             VALUES (1, 2, 'm', 'b', 0, 'stall', 12.5)",
            [],
        )
        .unwrap();
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert!(fk, "foreign keys are back on after the migration");
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
