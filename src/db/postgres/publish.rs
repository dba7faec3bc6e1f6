//! Commands that record new work on PostgreSQL (`enqueue`, `models set`) do their work as on
//! SQLite, on a draft in memory seeded with the models' settings, and publish the draft in one
//! transaction: models that changed, then items (an item already queued must be the same),
//! then jobs. The same rule as publishing an SQLite draft, so both engines check input alike.

use anyhow::Result;
use postgres::Client;
use rusqlite::Connection;

use crate::db::NewJobs;

/// A draft in memory for a PostgreSQL database, and the models it was seeded with.
pub struct Draft {
    pub target: super::Target,
    pub client: Client,
    seed: Vec<(String, String)>,
}

const MODEL_COLUMNS: &str =
    "name, backend, command, endpoints, timeout_s, timeout_auto, concurrency,
    max_attempts, settings, api_key_env, updated_at, rpm, tpm, price_in, price_out";

/// Rows per INSERT when publishing.
const CHUNK: usize = 5000;

impl Draft {
    /// An empty in-memory database with the SQLite schema, holding the server's models.
    pub fn open(target: super::Target, mut client: Client) -> Result<(Draft, Connection)> {
        let conn = crate::db::memory()?;
        let models = super::catalog::list_models(&mut client)?;
        for m in &models {
            crate::models::save(&conn, m)?;
        }
        let seed = model_rows(&conn)?;
        Ok((
            Draft {
                target,
                client,
                seed,
            },
            conn,
        ))
    }

    /// Writes what the draft added to the server, in one transaction.
    pub fn publish(&mut self, conn: &Connection) -> Result<NewJobs> {
        let mut tx = self.client.transaction()?;
        // Enqueues (and grade) one at a time, so each one's new job ids are one range.
        tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('llmbatch enqueue'))")?;
        for (name, row) in model_rows(conn)? {
            if self.seed.iter().any(|(n, r)| *n == name && *r == row) {
                continue;
            }
            let m = crate::models::load(conn, &name)?;
            super::catalog::save_model(&mut tx, &m)?;
        }
        let mut items = conn.prepare("SELECT batch, item_id, prompt, vars FROM items")?;
        let mut rows = items.query([])?;
        let mut chunk: [Vec<String>; 4] = Default::default();
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                for (i, col) in chunk.iter_mut().enumerate() {
                    col.push(r.get(i)?);
                }
            }
            if chunk[0].len() >= CHUNK || (row_none(&chunk, row.is_none())) {
                put_items(&mut tx, &chunk)?;
                chunk = Default::default();
            }
            if row.is_none() {
                break;
            }
        }
        let mut jobs = conn.prepare(
            "SELECT batch, item_id, model FROM jobs WHERE kind = 'generate' ORDER BY id",
        )?;
        let mut rows = jobs.query([])?;
        let (mut first, mut last) = (i64::MAX, 0i64);
        let mut chunk: [Vec<String>; 3] = Default::default();
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                for (i, col) in chunk.iter_mut().enumerate() {
                    col.push(r.get(i)?);
                }
            }
            if chunk[0].len() >= CHUNK || (row.is_none() && !chunk[0].is_empty()) {
                let ids: Vec<i64> = tx
                    .query(
                        "INSERT INTO jobs (batch, item_id, model, kind, created_at, updated_at)
                         SELECT b, i, m, 'generate', llmbatch_now_ms(), llmbatch_now_ms()
                         FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS d(b, i, m, n)
                         ORDER BY n
                         ON CONFLICT DO NOTHING RETURNING id",
                        &[&chunk[0], &chunk[1], &chunk[2]],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for id in ids {
                    first = first.min(id);
                    last = last.max(id);
                }
                chunk = Default::default();
            }
            if row.is_none() {
                break;
            }
        }
        tx.commit()?;
        if first == i64::MAX {
            (first, last) = (1, 0);
        }
        Ok(NewJobs { first, last })
    }
}

fn row_none(chunk: &[Vec<String>; 4], end: bool) -> bool {
    end && !chunk[0].is_empty()
}

/// Adds items not queued yet; an item already queued with another prompt or variables is
/// refused (a queued item never changes: its outputs were made from it).
fn put_items(tx: &mut postgres::Transaction, c: &[Vec<String>; 4]) -> Result<()> {
    let changed = tx.query_opt(
        "SELECT d.b, d.i, d.p <> m.prompt FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS d(b, i, p, v)
         JOIN items m ON m.batch = d.b AND m.item_id = d.i
         WHERE d.p <> m.prompt OR d.v::jsonb <> m.vars::jsonb LIMIT 1",
        &[&c[0], &c[1], &c[2], &c[3]],
    )?;
    if let Some(r) = changed {
        let (batch, id, prompt): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        crate::usage!(
            "item {id:?} is already in batch {batch:?} with a different {}; a queued item never changes (its outputs were made from it): enqueue the changed input under another --batch",
            if prompt { "prompt" } else { "field" }
        );
    }
    tx.execute(
        "INSERT INTO items (batch, item_id, prompt, vars)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
         ON CONFLICT DO NOTHING",
        &[&c[0], &c[1], &c[2], &c[3]],
    )?;
    Ok(())
}

/// Each model's row as text, to tell which ones a command changed.
fn model_rows(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT name, json_array({MODEL_COLUMNS}) FROM models"
    ))?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
