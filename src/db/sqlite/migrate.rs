//! The schema: migrations in order, applied by `PRAGMA user_version`, and the refusal of a
//! database newer than this binary.

use anyhow::{Context, Result};
use rusqlite::Connection;
use std::path::Path;

use crate::error::UsageError;

/// Migrations in order. Never remove or edit an entry once shipped: add a new file.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../../sql/001_init.sql")),
    ("002_grades", include_str!("../../../sql/002_grades.sql")),
    (
        "003_report_indexes",
        include_str!("../../../sql/003_report_indexes.sql"),
    ),
    (
        "004_backpressure_cost",
        include_str!("../../../sql/004_backpressure_cost.sql"),
    ),
    (
        "005_streaming",
        include_str!("../../../sql/005_streaming.sql"),
    ),
    (
        "006_item_messages",
        include_str!("../../../sql/006_item_messages.sql"),
    ),
    ("007_sweeps", include_str!("../../../sql/007_sweeps.sql")),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Refuses a database newer than this binary: before anything is written to it.
pub(super) fn check_version(conn: &Connection, path: &Path) -> Result<i64> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .with_context(|| format!("cannot read database {}", path.display()))?;
    if version > SCHEMA_VERSION {
        return Err(UsageError(format!(
            "database {} has schema version {version}, newer than this llmbatch understands ({SCHEMA_VERSION}); upgrade llmbatch",
            path.display()
        ))
        .into());
    }
    Ok(version)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // A migration that rebuilds a table (SQLite's way to change a constraint) drops it while
    // other tables still refer to it: foreign keys are off meanwhile (they cannot change inside
    // a transaction) and checked before the migration commits.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = apply(conn);
    conn.pragma_update(None, "foreign_keys", "ON")?;
    result
}

fn apply(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have migrated while we waited for the write lock.
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (name, sql) in &MIGRATIONS[version.min(SCHEMA_VERSION) as usize..] {
        tx.execute_batch(sql)
            .with_context(|| format!("migration {name} failed"))?;
    }
    let broken: i64 = tx.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
        r.get(0)
    })?;
    if broken > 0 {
        anyhow::bail!("{broken} row(s) would break a foreign key after migrating: not applied");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}
