//! The SQLite engine: one database file, pragmas on every open, migrations by
//! `PRAGMA user_version`; the store traits implemented with SQLite's SQL.

mod cache;
pub mod catalog;
pub mod cost;
mod draft;
mod export;
mod failures;
mod flow;
mod grades;
mod jobs;
mod latency;
mod migrate;
mod queue;
pub mod report;

use anyhow::{Context, Result};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Access;
use crate::error::UsageError;
use crate::usage;

use draft::{draft_path, remove_stale_drafts};
pub use migrate::SCHEMA_VERSION;
use migrate::{check_version, migrate};

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

/// An open database. A command allowed to create a missing one works on a draft: a private
/// file next to the target, published under the target's name by [`Db::publish`] once the
/// command has committed. So a command that fails creates nothing, and nothing is ever
/// deleted that another process could have written to.
pub struct Db {
    pub conn: Connection,
    path: PathBuf,
    draft: Option<PathBuf>,
}

impl Db {
    pub fn open(path: &Path, access: Access) -> Result<Db> {
        if access == Access::Create && !path.exists() {
            remove_stale_drafts(path);
            let draft = draft_path(path);
            let conn = open_rw(&draft, true)
                .with_context(|| format!("cannot create database {}", path.display()))?;
            return Ok(Db {
                conn,
                path: path.to_path_buf(),
                draft: Some(draft),
            });
        }
        if !path.exists() {
            return Err(missing(path));
        }
        if path.is_dir() {
            usage!(
                "--db {}: is a directory, not a database file",
                path.display()
            );
        }
        if access != Access::Read && !writable(path) {
            // SQLite would quietly open it read-only and leave `-wal`/`-shm` behind.
            anyhow::bail!(
                "cannot write database {}: the file is read-only (report and export still work)",
                path.display()
            );
        }
        let conn = match access {
            Access::Read => open_read(path)?,
            _ => open_rw(path, false)?,
        };
        Ok(Db {
            conn,
            path: path.to_path_buf(),
            draft: None,
        })
    }
}

fn missing(path: &Path) -> anyhow::Error {
    UsageError(format!(
        "no database at {} — create one with `llmbatch enqueue` (or `llmbatch models set`), or point --db / LLMBATCH_DB at the right file",
        path.display()
    ))
    .into()
}

/// Opens read-write and migrates, checking the schema version before anything is written.
fn open_rw(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(busy_timeout())?;
    check_version(&conn, path)?;
    configure(&conn).with_context(|| format!("cannot configure database {}", path.display()))?;
    migrate(&mut conn).with_context(|| format!("cannot migrate database {}", path.display()))?;
    Ok(conn)
}

/// Opens for a read command. The file is never written: where we may write the file and its
/// directory, a read-write connection under `query_only` (its `-wal`/`-shm` are removed on
/// close, as for any clean close); where we may not, a read-only one. A read-only connection
/// would create `-wal`/`-shm` it can never remove, or fail where it cannot create them; so
/// when no writer is active (no `-wal`) and none can start (not writable), it reads the file
/// as immutable. An older schema is upgraded first where the file is writable.
fn open_read(path: &Path) -> Result<Connection> {
    let writable = writable(path) && path.parent().is_none_or(writable_dir);
    let conn = if writable {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open database {}", path.display()))?;
        conn.pragma_update(None, "query_only", "ON")?;
        conn
    } else {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let immutable = !Path::new(&wal).exists();
        let uri = format!(
            "file:{}?mode=ro{}",
            uri_path(path),
            if immutable { "&immutable=1" } else { "" }
        );
        Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open database {} read-only", path.display()))?
    };
    conn.busy_timeout(busy_timeout())?;
    let version = check_version(&conn, path)?;
    if version == 0 {
        let tables: i64 = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))?;
        if tables == 0 {
            usage!(
                "{} is empty, not an llmbatch database — create one with `llmbatch enqueue`, or point --db / LLMBATCH_DB at the right file",
                path.display()
            );
        }
    }
    if version < SCHEMA_VERSION {
        if !writable {
            usage!(
                "database {} has schema version {version}, older than this llmbatch ({SCHEMA_VERSION}), and cannot be upgraded here because it is read-only; run any llmbatch command where it is writable first",
                path.display()
            );
        }
        drop(conn);
        drop(open_rw(path, false)?);
        return open_read(path);
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn writable(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access() only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn writable_dir(dir: &Path) -> bool {
    writable(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
}

/// A path as the path part of an SQLite `file:` URI (percent-encoding what a URI reserves).
fn uri_path(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = String::new();
    for b in abs.as_os_str().as_encoded_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(*b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Opens an already-migrated database for a helper thread (heartbeat).
fn open_again(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout())?;
    configure(&conn)?;
    Ok(conn)
}

impl Db {
    /// Another connection to this database (already published), for another thread.
    pub fn open_again(path: &Path) -> Result<Db> {
        Ok(Db {
            conn: open_again(path)?,
            path: path.to_path_buf(),
            draft: None,
        })
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
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
    use super::migrate::MIGRATIONS;
    use super::*;

    #[test]
    fn migrate_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(open_rw(&path, true).unwrap());
        let conn = open_rw(&path, true).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    /// A database of schema 3 with a graded attempt (grades refer to attempts) upgrades: the
    /// rebuilt attempts keep every row and the foreign keys hold, and `throttled` is accepted.
    #[test]
    fn upgrade_from_3_keeps_attempts_and_grades() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            for (_, sql) in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute_batch(
                "PRAGMA user_version = 3;
                 INSERT INTO items VALUES ('b', '1', 'p', '{}');
                 INSERT INTO jobs (id, batch, item_id, model, created_at, updated_at)
                     VALUES (1, 'b', '1', 'm', 0, 0);
                 INSERT INTO jobs (id, batch, item_id, model, kind, parent_id, created_at, updated_at)
                     VALUES (2, 'b', '1', 'judge', 'grade', 1, 0, 0);
                 INSERT INTO attempts (id, job_id, number, model, batch, started_at, outcome, timings)
                     VALUES (7, 2, 1, 'judge', 'b', 5, 'ok', '{\"eval_count\": 3}');
                 INSERT INTO grades (job_id, graded_job_id, attempt_id, grader, pass)
                     VALUES (2, 1, 7, 'judge', 1);",
            )
            .unwrap();
        }
        let conn = open_rw(&path, false).unwrap();
        let (n, timings): (i64, String) = conn
            .query_row(
                "SELECT COUNT(*), MAX(timings) FROM attempts JOIN grades ON grades.attempt_id = attempts.id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, timings.as_str()), (1, r#"{"eval_count": 3}"#));
        let fk: i64 = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        conn.execute(
            "INSERT INTO attempts (job_id, number, model, batch, started_at, outcome)
             VALUES (1, 1, 'm', 'b', 6, 'throttled')",
            [],
        )
        .unwrap();
        let indexes: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts' AND sql IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            indexes, 8,
            "004 rebuilt the four indexes of attempts; 005 adds three, 007 the cache's"
        );
    }

    #[test]
    fn uri_paths_escape_what_a_uri_reserves() {
        assert_eq!(
            uri_path(Path::new("/data/evals 1/a?b#c%d.db")),
            "/data/evals%201/a%3Fb%23c%25d.db"
        );
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
        let conn = open_rw(&path, false).unwrap();
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
        let conn = open_rw(&path, true).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let err = open_rw(&path, false).unwrap_err();
        assert!(format!("{err:#}").contains("newer"), "{err:#}");
    }
}

#[cfg(test)]
crate::store_conformance!(conformance, || {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conformance.db");
    let mut db = crate::db::Db::open(&path, crate::db::Access::Create).unwrap();
    db.publish().unwrap();
    (dir, Box::new(db) as Box<dyn crate::db::Store>)
});
