//! Enqueue on PostgreSQL: one transaction under an advisory lock, so the jobs of one enqueue
//! have one range of ids.

use anyhow::Result;
use postgres::Client;
use std::cell::RefCell;

use super::PgStore;
use crate::db::postgres::session::Session;
use crate::db::store::*;

/// An enqueue on PostgreSQL: one transaction, under a lock that makes concurrent enqueues
/// (and grade) take turns, so the jobs one adds have one range of ids. Claims never wait for
/// it.
pub(super) struct PgEnqueue<'a> {
    session: RefCell<std::cell::RefMut<'a, Session>>,
    first_new: i64,
    done: bool,
}

impl<'a> PgEnqueue<'a> {
    pub(super) fn begin(store: &'a PgStore) -> Result<PgEnqueue<'a>> {
        let mut session = store.session.borrow_mut();
        let first_new = session.with(|c| {
            c.batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('llmbatch enqueue'))")?;
            Ok(
                c.query_one("SELECT COALESCE(MAX(id), 0) + 1 FROM jobs", &[])?
                    .get::<_, i64>(0),
            )
        })?;
        Ok(PgEnqueue {
            session: RefCell::new(session),
            first_new,
            done: false,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        // The session is held for the whole enqueue; a lost connection ends it (the
        // transaction is gone with it).
        self.session.borrow_mut().with(f)
    }
}

impl Drop for PgEnqueue<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .session
                .get_mut()
                .with(|c| Ok(c.batch_execute("ROLLBACK")?));
        }
    }
}

impl Enqueue for PgEnqueue<'_> {
    fn add_items(&self, batch: &str, items: &[NewItem]) -> Result<Option<Vec<StoredItem>>> {
        if items.is_empty() {
            return Ok(None);
        }
        let ids: Vec<&str> = items.iter().map(|i| i.id).collect();
        let prompts: Vec<&str> = items.iter().map(|i| i.prompt).collect();
        let vars: Vec<&str> = items.iter().map(|i| i.vars).collect();
        let messages: Vec<Option<&str>> = items.iter().map(|i| i.messages).collect();
        let options: Vec<Option<&str>> = items.iter().map(|i| i.options).collect();
        self.with(|c| {
            let added = c.execute(
                "INSERT INTO items (batch, item_id, prompt, vars, messages, options)
                 SELECT $1, i, p, v, m, o
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS d(i, p, v, m, o)
                 ON CONFLICT DO NOTHING",
                &[&batch, &ids, &prompts, &vars, &messages, &options],
            )?;
            if added as usize == items.len() {
                return Ok(None);
            }
            let rows = c.query(
                "SELECT m.prompt, m.vars, m.messages, m.options
                 FROM unnest($2::text[]) WITH ORDINALITY AS d(i, n)
                 JOIN items m ON m.batch = $1 AND m.item_id = d.i ORDER BY d.n",
                &[&batch, &ids],
            )?;
            Ok(Some(
                rows.iter()
                    .map(|r| StoredItem {
                        prompt: r.get(0),
                        vars: r.get(1),
                        messages: r.get(2),
                        options: r.get(3),
                    })
                    .collect(),
            ))
        })
    }

    fn queued_before(&self, batch: &str, item_id: &str) -> Result<bool> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE batch = $1 AND item_id = $2
                                AND kind = 'generate' AND id < $3)",
                &[&batch, &item_id, &self.first_new],
            )?
            .get(0))
        })
    }

    fn add_jobs(&self, batch: &str, jobs: &[(&str, &str, i64)]) -> Result<u64> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let items: Vec<&str> = jobs.iter().map(|j| j.0).collect();
        let models: Vec<&str> = jobs.iter().map(|j| j.1).collect();
        let repeats: Vec<i64> = jobs.iter().map(|j| j.2).collect();
        self.with(|c| {
            Ok(c.execute(
                "INSERT INTO jobs (batch, item_id, model, kind, created_at, updated_at, repeat)
                 SELECT $1, d.i, d.m, 'generate', llmbatch_now_ms(), llmbatch_now_ms(), d.r
                 FROM unnest($2::text[], $3::text[], $4::bigint[]) WITH ORDINALITY AS d(i, m, r, n)
                 -- Rows already there are left out before they draw an id, so the new jobs'
                 -- ids are one range (ON CONFLICT alone would spend ids on them).
                 WHERE NOT EXISTS (SELECT 1 FROM jobs o WHERE o.kind = 'generate'
                                   AND o.batch = $1 AND o.item_id = d.i AND o.model = d.m
                                   AND o.repeat = d.r)
                 ORDER BY d.n
                 ON CONFLICT DO NOTHING",
                &[&batch, &items, &models, &repeats],
            )?)
        })
    }

    fn commit(mut self: Box<Self>) -> Result<NewJobs> {
        let last = self.with(|c| {
            let last: i64 = c
                .query_one("SELECT COALESCE(MAX(id), 0) FROM jobs", &[])?
                .get(0);
            c.batch_execute("COMMIT")?;
            Ok(last)
        })?;
        self.done = true;
        Ok(NewJobs {
            first: self.first_new,
            last,
        })
    }
}
