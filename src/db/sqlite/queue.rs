//! The store traits on a SQLite [`Db`]: each write is one `BEGIN IMMEDIATE` transaction
//! (one writer at a time, taken up front, so a busy database waits at the start).

use anyhow::{Context, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Transaction, TransactionBehavior};
use std::collections::HashMap;

use super::{catalog, jobs, Db};
use crate::db::store::*;
use crate::domain::{Claim, Finish, JobState};
use crate::grading::Rubric;
use crate::models::ModelConfig;
use crate::util::now_ms;

impl Db {
    /// A write transaction, taken up front.
    fn write(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }
}

impl QueueStore for Db {
    fn register_runner(&self, r: &NewRunner) -> Result<i64> {
        self.conn
            .execute(
                "INSERT INTO runners (host, pid, pid_start, boot_id, started_at, heartbeat_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![r.host, r.pid, r.pid_start, r.boot_id, now_ms()],
            )
            .context("cannot register this runner")?;
        Ok(self.conn.last_insert_rowid())
    }

    fn renew_leases(&self, runner_id: i64, lease_ms: i64) -> Result<()> {
        let now = now_ms();
        self.conn
            .prepare_cached("UPDATE runners SET heartbeat_at = ?1 WHERE id = ?2")?
            .execute(params![now, runner_id])?;
        self.conn
            .prepare_cached(
                "UPDATE jobs SET lease_expires_at = ?1 WHERE runner_id = ?2 AND state = 'running'",
            )?
            .execute(params![now + lease_ms, runner_id])?;
        Ok(())
    }

    fn stop_runner(&self, runner_id: i64, reason: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runners SET stopped_at = ?1, stop_reason = ?2 WHERE id = ?3",
            params![now_ms(), reason, runner_id],
        )?;
        Ok(())
    }

    fn mark_runners_died(&self, runner_ids: &[i64]) -> Result<()> {
        let tx = self.write()?;
        jobs::mark_runners_died(&tx, runner_ids)?;
        Ok(tx.commit()?)
    }

    fn record_and_claim(&self, p: &RecordAndClaimParams) -> Result<Recorded> {
        let tx = self.write()?;
        let mut done = Recorded::default();
        for f in &p.finishes {
            done.kept.push(jobs::finish(&tx, f)?);
        }
        for c in &p.claims {
            let got = jobs::claim(&tx, p.runner_id, p.lease_ms, p.filter, c)?;
            done.claims.push(got);
        }
        tx.commit()?;
        Ok(done)
    }

    fn find_stuck(&self, except_runner: Option<i64>) -> Result<Vec<StuckJob>> {
        jobs::find_stuck(&self.conn, except_runner)
    }

    fn rescue(&self, stuck: &[Rescue]) -> Result<Vec<(usize, JobState)>> {
        if stuck.is_empty() {
            return Ok(Vec::new());
        }
        let tx = self.write()?;
        let rescued = jobs::rescue(&tx, stuck)?;
        tx.commit()?;
        Ok(rescued)
    }

    fn reap(
        &self,
        except_runner: Option<i64>,
        pick: &mut dyn FnMut(Vec<StuckJob>) -> Vec<Rescue>,
    ) -> Result<Vec<(usize, JobState)>> {
        let tx = self.write()?;
        let chosen = pick(jobs::find_stuck(&tx, except_runner)?);
        let rescued = jobs::rescue(&tx, &chosen)?;
        tx.commit()?;
        Ok(rescued)
    }

    fn release_runner(&self, runner_id: i64) -> Result<usize> {
        let tx = self.write()?;
        let n = jobs::release_runner(&tx, runner_id)?;
        tx.commit()?;
        Ok(n)
    }

    fn resume(&self, p: &ResumeParams) -> Result<Vec<i64>> {
        let tx = self.write()?;
        let ids = jobs::resume(&tx, p)?;
        tx.commit()?;
        Ok(ids)
    }

    fn enqueue_grades(&self, p: &EnqueueGradesParams) -> Result<GradesQueued> {
        let tx = self.write()?;
        let queued = enqueue_grades(&tx, p)?;
        if queued.outputs > 0 {
            tx.commit().context("cannot commit the grade jobs")?;
        }
        Ok(queued)
    }

    fn enqueue(&self) -> Result<Box<dyn Enqueue + '_>> {
        Ok(Box::new(SqliteEnqueue::begin(self)?))
    }

    fn first_pending(&self, model: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(id) FROM jobs WHERE state = 'pending' AND model = ?1")?
            .query_row([model], |r| r.get(0))?)
    }

    fn runnable(
        &self,
        model: &str,
        filter: &Filter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Claim>> {
        super::cache::runnable(&self.conn, model, filter, after, limit)
    }

    fn cached_answer(&self, key: &str) -> Result<Option<Finish>> {
        super::cache::cached_answer(&self.conn, key)
    }

    fn answer_cached(
        &self,
        runner_id: i64,
        answers: &[(Claim, Finish)],
    ) -> Result<Vec<Option<(i64, i64)>>> {
        let tx = self.write()?;
        let mut out = Vec::with_capacity(answers.len());
        for (claim, f) in answers {
            out.push(super::cache::answer_cached(&tx, runner_id, claim, f)?);
        }
        tx.commit()?;
        Ok(out)
    }

    fn unknown_ids(&self, ids: &[i64]) -> Result<Vec<i64>> {
        jobs::unknown_ids(&self.conn, ids)
    }

    fn state_counts(&self, filter: &Filter) -> Result<HashMap<JobState, i64>> {
        let (cond, args) = filter.sql("j");
        let sql =
            format!("SELECT j.state, COUNT(*) FROM jobs j WHERE 1 = 1{cond} GROUP BY j.state");
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare(&sql)?
            .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| JobState::parse(&s).map(|s| (s, n)))
            .collect())
    }

    fn pending_models(&self, filter: &Filter) -> Result<Vec<String>> {
        let (cond, args) = filter.sql("j");
        let sql = format!("SELECT DISTINCT j.model FROM jobs j WHERE j.state = 'pending'{cond}");
        let names = self
            .conn
            .prepare_cached(&sql)?
            .query_map(params_from_iter(args), |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn open_jobs(&self, filter: &Filter, model: &str) -> Result<u64> {
        let (cond, mut args) = filter.sql("j");
        let sql = format!(
            "SELECT COUNT(*) FROM jobs j WHERE j.state IN ('pending', 'running') AND j.model = ?{cond}"
        );
        args.insert(0, SqlValue::Text(model.to_string()));
        let n: i64 = self
            .conn
            .query_row(&sql, params_from_iter(args), |r| r.get(0))?;
        Ok(n as u64)
    }

    fn next_runnable_in(&self, filter: &Filter, model: &str) -> Result<Option<i64>> {
        let (cond, mut args) = filter.sql("j");
        let sql = format!(
            "SELECT MIN(j.not_before) FROM jobs j WHERE j.state = 'pending' AND j.model = ?{cond}"
        );
        args.insert(0, SqlValue::Text(model.to_string()));
        let next: Option<i64> = self
            .conn
            .prepare_cached(&sql)?
            .query_row(params_from_iter(args), |r| r.get(0))?;
        Ok(next.map(|t| t - now_ms()))
    }

    fn work_left(&self, filter: &Filter, stopped: &[String]) -> Result<bool> {
        let stopped: Vec<SqlValue> = stopped.iter().map(|n| SqlValue::Text(n.clone())).collect();
        let not_stopped = |alias: &str| {
            if stopped.is_empty() {
                String::new()
            } else {
                format!(
                    " AND {alias}.model NOT IN ({})",
                    vec!["?"; stopped.len()].join(", ")
                )
            }
        };
        let (pcond, mut args) = filter.sql("p");
        args.extend(stopped.iter().cloned());
        let (cond, jargs) = filter.sql("j");
        args.extend(jargs);
        args.extend(stopped.iter().cloned());
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM jobs j LEFT JOIN jobs p ON p.id = j.parent_id
             WHERE (j.state = 'running' OR (j.state = 'pending'
                    AND (j.parent_id IS NULL OR p.state IN ('running', 'done')
                         OR (p.state = 'pending'{pcond}{pskip}))))
               {cond}{skip})",
            pskip = not_stopped("p"),
            skip = not_stopped("j"),
        );
        Ok(self
            .conn
            .query_row(&sql, params_from_iter(args), |r| r.get(0))?)
    }

    fn items_missing_var(&self, filter: &Filter, name: &str) -> Result<MissingVar> {
        jobs::items_missing_var(&self.conn, filter, name)
    }
}

/// The rubric saved, then one grade job per grader and generated job in scope. One
/// statement per grader: the database walks the scope, memory stays flat.
fn enqueue_grades(tx: &Transaction, p: &EnqueueGradesParams) -> Result<GradesQueued> {
    let (cond, args) = p.filter.sql("j");
    let rubric_id = catalog::save_rubric(tx, p.rubric)?;
    let (outputs, waiting): (i64, i64) = tx.query_row(
        &format!(
            "SELECT COUNT(*), COALESCE(SUM(j.state <> 'done'), 0) FROM jobs j
             WHERE j.kind = 'generate'{cond}"
        ),
        params_from_iter(args.clone()),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut queued = GradesQueued {
        rubric_id,
        outputs,
        waiting,
        new: 0,
    };
    if outputs == 0 {
        return Ok(queued);
    }
    let now = now_ms();
    let mut insert = tx.prepare(&format!(
        "INSERT OR IGNORE INTO jobs (batch, item_id, model, kind, parent_id, rubric_id,
                                    created_at, updated_at, repeat)
         SELECT j.batch, j.item_id, ?, 'grade', j.id, ?, ?, ?, j.repeat FROM jobs j
         WHERE j.kind = 'generate'{cond} ORDER BY j.id"
    ))?;
    for grader in p.graders {
        let mut all = vec![
            SqlValue::Text(grader.clone()),
            SqlValue::Integer(rubric_id),
            SqlValue::Integer(now),
            SqlValue::Integer(now),
        ];
        all.extend(args.iter().cloned());
        queued.new += insert.execute(params_from_iter(all))? as i64;
    }
    Ok(queued)
}

/// Job rows per insert: many models or repeats per record make more than one statement.
const JOB_ROWS: usize = 1024;

/// One enqueue: a transaction with foreign keys off. Each job's item is written just before
/// it in this same transaction, so the key holds by construction: checking it row by row
/// cost a tenth of a large enqueue.
struct SqliteEnqueue<'a> {
    conn: &'a rusqlite::Connection,
    tx: Option<Transaction<'a>>,
    /// The first job id of this enqueue: an item with an older job was queued before it.
    first_new: i64,
    now: i64,
}

impl<'a> SqliteEnqueue<'a> {
    fn begin(db: &'a Db) -> Result<SqliteEnqueue<'a>> {
        let conn = &db.conn;
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        // This transaction is the only writer, and ids only grow: the new jobs are the ids
        // between the highest before and the highest after.
        let first_new = max_job_id(&tx)? + 1;
        Ok(SqliteEnqueue {
            conn,
            tx: Some(tx),
            first_new,
            now: now_ms(),
        })
    }

    fn tx(&self) -> &Transaction<'a> {
        self.tx.as_ref().expect("open until committed")
    }
}

fn max_job_id(tx: &Transaction) -> Result<i64> {
    Ok(tx.query_row("SELECT COALESCE(MAX(id), 0) FROM jobs", [], |r| r.get(0))?)
}

impl Drop for SqliteEnqueue<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            drop(tx);
            let _ = self.conn.pragma_update(None, "foreign_keys", "ON");
        }
    }
}

impl Enqueue for SqliteEnqueue<'_> {
    fn add_items(&self, batch: &str, items: &[NewItem]) -> Result<Option<Vec<StoredItem>>> {
        let n = items.len();
        if n == 0 {
            return Ok(None);
        }
        let rows = vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ");
        let mut insert = self.tx().prepare_cached(&format!(
            "INSERT OR IGNORE INTO items (batch, item_id, prompt, vars, messages, options) VALUES {rows}"
        ))?;
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(n * 6);
        for it in items {
            args.extend([
                &batch as &dyn rusqlite::ToSql,
                &it.id,
                &it.prompt,
                &it.vars,
                &it.messages,
                &it.options,
            ]);
        }
        if insert.execute(args.as_slice())? == n {
            return Ok(None);
        }
        let mut stored = self.tx().prepare_cached(
            "SELECT prompt, vars, messages, options FROM items WHERE batch = ?1 AND item_id = ?2",
        )?;
        let mut found = Vec::with_capacity(n);
        for it in items {
            found.push(stored.query_row(params![batch, it.id], |r| {
                Ok(StoredItem {
                    prompt: r.get(0)?,
                    vars: r.get(1)?,
                    messages: r.get(2)?,
                    options: r.get(3)?,
                })
            })?);
        }
        Ok(Some(found))
    }

    fn queued_before(&self, batch: &str, item_id: &str) -> Result<bool> {
        Ok(self
            .tx()
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs WHERE batch = ?1 AND item_id = ?2
                                AND kind = 'generate' AND id < ?3)",
            )?
            .query_row(params![batch, item_id, self.first_new], |r| r.get(0))?)
    }

    fn add_jobs(&self, batch: &str, jobs: &[(&str, &str, i64)]) -> Result<u64> {
        let mut new = 0u64;
        // Rows per statement stay well under SQLite's limit of bound variables.
        for part in jobs.chunks(JOB_ROWS) {
            let rows = vec!["(?, ?, ?, 'generate', ?, ?, ?)"; part.len()].join(", ");
            let mut insert = self.tx().prepare_cached(&format!(
                "INSERT OR IGNORE INTO jobs (batch, item_id, model, kind, created_at, updated_at, repeat) VALUES {rows}"
            ))?;
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(part.len() * 6);
            for (id, model, repeat) in part {
                args.extend([
                    &batch as &dyn rusqlite::ToSql,
                    id,
                    model,
                    &self.now,
                    &self.now,
                    repeat,
                ]);
            }
            new += insert.execute(args.as_slice())? as u64;
        }
        Ok(new)
    }

    fn commit(mut self: Box<Self>) -> Result<NewJobs> {
        let tx = self.tx.take().expect("open until committed");
        let last = max_job_id(&tx)?;
        tx.commit().context("cannot commit the enqueued jobs")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(NewJobs {
            first: self.first_new,
            last,
        })
    }
}

impl Catalog for Db {
    fn model(&self, name: &str) -> Result<ModelConfig> {
        catalog::model(&self.conn, name)
    }

    fn models(&self) -> Result<Vec<ModelConfig>> {
        catalog::models(&self.conn)
    }

    fn save_model(&self, model: &ModelConfig) -> Result<()> {
        catalog::save_model(&self.conn, model)
    }

    fn rubric(&self, id: i64) -> Result<Rubric> {
        catalog::rubric(&self.conn, id)
    }

    fn ok_durations(&self, model: &str, window_ms: i64) -> Result<DurationSample> {
        catalog::ok_durations(&self.conn, model, window_ms)
    }

    fn ok_gaps(&self, model: &str, window_ms: i64) -> Result<(i64, Option<f64>)> {
        catalog::ok_gaps(&self.conn, model, window_ms)
    }
}

impl Store for Db {
    fn reopen(&self) -> Result<Box<dyn Store>> {
        Ok(Box::new(Db::open_again(&self.path)?))
    }

    fn publish(&mut self) -> Result<Option<NewJobs>> {
        Db::publish(self)
    }
}
