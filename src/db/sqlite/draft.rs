//! Drafts: a command allowed to create a missing database works on a private file next to
//! it, published under the target's name once the command has committed, merged into a
//! database another process created meanwhile, removed if the command failed.

use anyhow::Result;
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};

use super::{open_rw, Db};
use crate::db::NewJobs;
use crate::usage;

impl Db {
    /// Puts a committed draft in place under the database's name: a hard link, which never
    /// replaces a database another process created meanwhile. In that case (or where the file
    /// system has no hard links) the draft's rows are merged into that database in one
    /// transaction instead, and the ids of the jobs it added are returned. Afterwards this
    /// `Db` works on the real file. A no-op for a database that already existed.
    pub fn publish(&mut self) -> Result<Option<NewJobs>> {
        let Some(draft) = self.draft.take() else {
            return Ok(None);
        };
        // Close the draft first: its WAL is checkpointed and removed, the file is complete.
        let conn = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        conn.close().map_err(|(_, e)| e)?;
        let merged = match std::fs::hard_link(&draft, &self.path) {
            Ok(()) => Ok(None),
            Err(e) => {
                log::info!(
                    "cannot link {} into place ({e}): merging it into {}",
                    draft.display(),
                    self.path.display()
                );
                merge(&draft, &self.path).map(Some)
            }
        };
        remove_draft(&draft);
        let merged = merged?;
        self.conn = open_rw(&self.path, false)?;
        Ok(merged)
    }
}

/// Copies what a draft holds (models, items, jobs: all a creating command writes) into the
/// database at `path`, in one transaction, with the rule enqueue applies: an item already
/// there must be the same.
fn merge(draft: &Path, path: &Path) -> Result<NewJobs> {
    let mut conn = open_rw(path, true)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS draft",
        [draft.to_string_lossy().as_ref()],
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let changed: Option<(String, String, bool)> = tx
        .query_row(
            "SELECT d.batch, d.item_id, d.prompt <> m.prompt FROM draft.items d
             JOIN main.items m ON m.batch = d.batch AND m.item_id = d.item_id
             WHERE d.prompt <> m.prompt OR d.vars <> m.vars
                OR d.messages IS NOT m.messages OR d.options IS NOT m.options LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((batch, id, prompt)) = changed {
        usage!(
            "item {id:?} is already in batch {batch:?} with a different {}; a queued item never changes (its outputs were made from it): enqueue the changed input under another --batch",
            if prompt { "prompt" } else { "field" }
        );
    }
    let max_id = |tx: &rusqlite::Transaction| -> Result<i64> {
        Ok(
            tx.query_row("SELECT COALESCE(MAX(id), 0) FROM main.jobs", [], |r| {
                r.get(0)
            })?,
        )
    };
    let first = max_id(&tx)? + 1;
    tx.execute_batch(
        "INSERT OR REPLACE INTO main.models SELECT * FROM draft.models;
         INSERT OR IGNORE INTO main.items SELECT * FROM draft.items;
         INSERT OR IGNORE INTO main.jobs (batch, item_id, model, kind, created_at, updated_at)
             SELECT batch, item_id, model, kind, created_at, updated_at FROM draft.jobs
             WHERE kind = 'generate' ORDER BY id;",
    )?;
    let last = max_id(&tx)?;
    tx.commit()?;
    conn.execute("DETACH DATABASE draft", [])?;
    Ok(NewJobs { first, last })
}

impl Drop for Db {
    fn drop(&mut self) {
        // A draft not published belongs to a command that failed: it was never visible.
        if let Some(draft) = self.draft.take() {
            if let Ok(conn) = Connection::open_in_memory() {
                drop(std::mem::replace(&mut self.conn, conn));
            }
            remove_draft(&draft);
        }
    }
}

/// A name no other process opens: hidden, next to the target (a hard link needs the same
/// file system), unique to this process and moment.
pub(super) fn draft_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "llmbatch.db".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    path.with_file_name(format!(".{name}.draft-{}-{nanos}", std::process::id()))
}

/// Drafts whose process is gone (killed before it could publish or remove its draft): no
/// one will ever publish them.
pub(super) fn remove_stale_drafts(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.draft-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub(super) fn remove_draft(draft: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = draft.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}
