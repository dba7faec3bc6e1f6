//! What a runner asks of its queue, named by intent, with one implementation per engine: the
//! coordinator never sees SQL or a driver. SQLite writes results and the next claims in one
//! transaction on the one file; PostgreSQL does the same in one short transaction on the
//! coordinator's connection, reconnecting after a restart, every time the server's.

use anyhow::Result;
use rusqlite::{params, params_from_iter, Connection, TransactionBehavior};
use std::collections::HashMap;

use super::jobs::{self, Claim, Filter, Finish, Next, Orphan};
use super::postgres::{self as pg, session::Session};
use crate::grading::Rubric;
use crate::models::{self, ModelConfig};

/// One finished attempt to record: what happened and where it sends its job.
pub struct Result1<'a> {
    pub claim: &'a Claim,
    pub finish: &'a Finish,
    pub next: Next,
}

/// Claims wanted for one model: one per endpoint slot.
pub struct Want<'a> {
    pub model: &'a str,
    pub slots: &'a [String],
    pub timeout_s: f64,
}

pub trait RunnerStore {
    fn register_runner(&mut self) -> Result<i64>;
    fn stop_runner(&mut self, runner_id: i64, reason: &str) -> Result<()>;
    /// Jobs in scope per state.
    fn state_counts(&mut self, filter: &Filter) -> Result<HashMap<String, i64>>;
    fn find_orphans(&mut self, self_runner: i64) -> Result<Vec<Orphan>>;
    fn reap(&mut self, orphans: &[Orphan]) -> Result<Vec<(Orphan, &'static str)>>;
    /// Models with pending jobs in scope.
    fn pending_models(&mut self, filter: &Filter) -> Result<Vec<String>>;
    fn load_model(&mut self, name: &str) -> Result<ModelConfig>;
    /// Successful attempts of the model in the advice window: count, p99, max (ms).
    fn timeout_samples(&mut self, model: &str) -> Result<(i64, Option<i64>, Option<i64>)>;
    /// Pending and running jobs of a model in scope.
    fn count_open(&mut self, model: &str, filter: &Filter) -> Result<u64>;
    /// Records results (each fenced: false = discarded) and makes the claims, together.
    fn record_and_claim(
        &mut self,
        runner_id: i64,
        results: &[Result1],
        wants: &[Want],
        lease_ms: i64,
        filter: &Filter,
    ) -> Result<(Vec<bool>, Vec<Vec<Claim>>)>;
    /// Milliseconds until the earliest pending job of the model in scope may run.
    fn next_ready_in(&mut self, model: &str, filter: &Filter) -> Result<Option<i64>>;
    /// Whether any job in scope may still run (see the runner's `work_left`).
    fn work_left(&mut self, filter: &Filter, stopped: &[String]) -> Result<bool>;
    fn release_runner(&mut self, runner_id: i64) -> Result<usize>;
    fn load_rubric(&mut self, id: i64) -> Result<Rubric>;
    /// Recorded cost in scope (USD), for `--max-cost`.
    fn spent(&mut self, filter: &Filter) -> Result<f64>;
    /// Whether an error may pass by retrying later (a busy file, a lost connection).
    fn transient(&self, err: &anyhow::Error) -> bool;
}

pub struct Sqlite<'a>(pub &'a mut Connection);

impl RunnerStore for Sqlite<'_> {
    fn register_runner(&mut self) -> Result<i64> {
        let pid = std::process::id() as i64;
        let now = crate::util::now_ms();
        self.0.execute(
            "INSERT INTO runners (host, pid, pid_start, boot_id, started_at, heartbeat_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                crate::util::hostname(),
                pid,
                crate::util::pid_start(pid),
                crate::util::boot_id(),
                now
            ],
        )?;
        Ok(self.0.last_insert_rowid())
    }

    fn stop_runner(&mut self, runner_id: i64, reason: &str) -> Result<()> {
        self.0.execute(
            "UPDATE runners SET stopped_at = ?1, stop_reason = ?2 WHERE id = ?3",
            params![crate::util::now_ms(), reason, runner_id],
        )?;
        Ok(())
    }

    fn state_counts(&mut self, filter: &Filter) -> Result<HashMap<String, i64>> {
        let (cond, args) = filter.sql("j");
        let sql =
            format!("SELECT j.state, COUNT(*) FROM jobs j WHERE 1 = 1{cond} GROUP BY j.state");
        let counts = self
            .0
            .prepare(&sql)?
            .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(counts)
    }

    fn find_orphans(&mut self, self_runner: i64) -> Result<Vec<Orphan>> {
        jobs::find_orphans(self.0, Some(self_runner))
    }

    fn reap(&mut self, orphans: &[Orphan]) -> Result<Vec<(Orphan, &'static str)>> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let reaped = jobs::reap(&tx, orphans)?;
        tx.commit()?;
        Ok(reaped)
    }

    fn pending_models(&mut self, filter: &Filter) -> Result<Vec<String>> {
        let (cond, args) = filter.sql("j");
        let sql = format!("SELECT DISTINCT j.model FROM jobs j WHERE j.state = 'pending'{cond}");
        let names = self
            .0
            .prepare_cached(&sql)?
            .query_map(params_from_iter(args), |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    fn load_model(&mut self, name: &str) -> Result<ModelConfig> {
        models::load(self.0, name)
    }

    fn timeout_samples(&mut self, model: &str) -> Result<(i64, Option<i64>, Option<i64>)> {
        crate::timeouts::samples(self.0, model)
    }

    fn count_open(&mut self, model: &str, filter: &Filter) -> Result<u64> {
        let (cond, mut args) = filter.sql("j");
        let sql = format!(
            "SELECT COUNT(*) FROM jobs j WHERE j.state IN ('pending', 'running') AND j.model = ?{cond}"
        );
        args.insert(0, rusqlite::types::Value::Text(model.to_string()));
        Ok(self
            .0
            .query_row(&sql, params_from_iter(args), |r| r.get::<_, i64>(0))? as u64)
    }

    fn record_and_claim(
        &mut self,
        runner_id: i64,
        results: &[Result1],
        wants: &[Want],
        lease_ms: i64,
        filter: &Filter,
    ) -> Result<(Vec<bool>, Vec<Vec<Claim>>)> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut kept = Vec::with_capacity(results.len());
        for r in results {
            let k = jobs::finish(&tx, r.claim, r.finish, r.next)?;
            if k && r.next == Next::Done && r.claim.kind == "grade" {
                crate::grading::record(&tx, r.claim, r.finish)?;
            }
            kept.push(k);
        }
        let mut claims = Vec::with_capacity(wants.len());
        for w in wants {
            let started = std::time::Instant::now();
            let got = jobs::claim(
                &tx,
                runner_id,
                w.model,
                w.slots,
                w.timeout_s,
                lease_ms,
                filter,
            )?;
            log_claim(started, got.len());
            claims.push(got);
        }
        tx.commit()?;
        Ok((kept, claims))
    }

    fn next_ready_in(&mut self, model: &str, filter: &Filter) -> Result<Option<i64>> {
        let (cond, mut args) = filter.sql("j");
        let sql = format!(
            "SELECT MIN(j.not_before) FROM jobs j WHERE j.state = 'pending' AND j.model = ?{cond}"
        );
        args.insert(0, rusqlite::types::Value::Text(model.to_string()));
        let next: Option<i64> = self
            .0
            .query_row(&sql, params_from_iter(args), |r| r.get(0))?;
        Ok(next.map(|t| t - crate::util::now_ms()))
    }

    fn work_left(&mut self, filter: &Filter, stopped: &[String]) -> Result<bool> {
        let stopped: Vec<rusqlite::types::Value> = stopped
            .iter()
            .map(|n| rusqlite::types::Value::Text(n.clone()))
            .collect();
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
            .0
            .query_row(&sql, params_from_iter(args), |r| r.get(0))?)
    }

    fn release_runner(&mut self, runner_id: i64) -> Result<usize> {
        let tx = self
            .0
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = jobs::release_runner(&tx, runner_id)?;
        tx.commit()?;
        Ok(n)
    }

    fn load_rubric(&mut self, id: i64) -> Result<Rubric> {
        Rubric::load(self.0, id)
    }

    fn spent(&mut self, filter: &Filter) -> Result<f64> {
        crate::report::cost::spent(self.0, filter)
    }

    fn transient(&self, err: &anyhow::Error) -> bool {
        super::is_busy(err)
    }
}

/// Claim timings at debug level under `llmbatch::claim`, for the benchmark's latency figures.
fn log_claim(started: std::time::Instant, n: usize) {
    log::debug!(
        target: "llmbatch::claim",
        "claimed {n} job(s): claim took {:.3} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

pub struct Postgres {
    pub session: Session,
}

impl RunnerStore for Postgres {
    fn register_runner(&mut self) -> Result<i64> {
        self.session.with(pg::queue::register)
    }

    fn stop_runner(&mut self, runner_id: i64, reason: &str) -> Result<()> {
        self.session
            .with(|c| pg::queue::stop_runner(c, runner_id, reason))
    }

    fn state_counts(&mut self, filter: &Filter) -> Result<HashMap<String, i64>> {
        self.session.with(|c| {
            let mut p = pg::queue::Params::default();
            let cond = pg::queue::scope(filter, "j", "id", &mut p);
            let sql =
                format!("SELECT j.state, COUNT(*) FROM jobs j WHERE true{cond} GROUP BY j.state");
            Ok(c.query(&sql, &p.refs())?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn find_orphans(&mut self, self_runner: i64) -> Result<Vec<Orphan>> {
        self.session
            .with(|c| pg::queue::find_orphans(c, Some(self_runner)))
    }

    fn reap(&mut self, orphans: &[Orphan]) -> Result<Vec<(Orphan, &'static str)>> {
        self.session.with(|c| pg::queue::reap(c, orphans))
    }

    fn pending_models(&mut self, filter: &Filter) -> Result<Vec<String>> {
        self.session.with(|c| {
            let mut p = pg::queue::Params::default();
            let cond = pg::queue::scope(filter, "j", "id", &mut p);
            let sql =
                format!("SELECT DISTINCT j.model FROM jobs j WHERE j.state = 'pending'{cond}");
            Ok(c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect())
        })
    }

    fn load_model(&mut self, name: &str) -> Result<ModelConfig> {
        self.session.with(|c| pg::catalog::load_model(c, name))
    }

    fn timeout_samples(&mut self, model: &str) -> Result<(i64, Option<i64>, Option<i64>)> {
        self.session
            .with(|c| pg::catalog::timeout_samples(c, model))
    }

    fn count_open(&mut self, model: &str, filter: &Filter) -> Result<u64> {
        self.session.with(|c| {
            let mut p = pg::queue::Params::default();
            let m = p.add(model.to_string());
            let cond = pg::queue::scope(filter, "j", "id", &mut p);
            let sql = format!(
                "SELECT COUNT(*) FROM jobs j WHERE j.state IN ('pending', 'running') AND j.model = {m}{cond}"
            );
            Ok(c.query_one(&sql, &p.refs())?.get::<_, i64>(0) as u64)
        })
    }

    fn record_and_claim(
        &mut self,
        runner_id: i64,
        results: &[Result1],
        wants: &[Want],
        lease_ms: i64,
        filter: &Filter,
    ) -> Result<(Vec<bool>, Vec<Vec<Claim>>)> {
        self.session.with(|c| {
            // One short transaction, never open while a model works: it ends before any
            // claimed attempt starts.
            let mut tx = c.transaction()?;
            let mut kept = Vec::with_capacity(results.len());
            for r in results {
                let k = pg::queue::finish(&mut tx, r.claim, r.finish, r.next)?;
                if k && r.next == Next::Done && r.claim.kind == "grade" {
                    pg::catalog::record_grade(&mut tx, r.claim, r.finish)?;
                }
                kept.push(k);
            }
            let mut claims = Vec::with_capacity(wants.len());
            for w in wants {
                let started = std::time::Instant::now();
                let got = pg::queue::claim(
                    &mut tx,
                    runner_id,
                    w.model,
                    w.slots,
                    w.timeout_s,
                    lease_ms,
                    filter,
                )?;
                log_claim(started, got.len());
                claims.push(got);
            }
            tx.commit()?;
            Ok((kept, claims))
        })
    }

    fn next_ready_in(&mut self, model: &str, filter: &Filter) -> Result<Option<i64>> {
        self.session
            .with(|c| pg::queue::next_ready_in(c, model, filter))
    }

    fn work_left(&mut self, filter: &Filter, stopped: &[String]) -> Result<bool> {
        self.session.with(|c| {
            let mut p = pg::queue::Params::default();
            let s = p.add(stopped.to_vec());
            let pcond = pg::queue::scope(filter, "p", "id", &mut p);
            let cond = pg::queue::scope(filter, "j", "id", &mut p);
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM jobs j LEFT JOIN jobs p ON p.id = j.parent_id
                 WHERE (j.state = 'running' OR (j.state = 'pending'
                        AND (j.parent_id IS NULL OR p.state IN ('running', 'done')
                             OR (p.state = 'pending'{pcond} AND p.model <> ALL({s}::text[])))))
                   {cond} AND j.model <> ALL({s}::text[]))"
            );
            Ok(c.query_one(&sql, &p.refs())?.get(0))
        })
    }

    fn release_runner(&mut self, runner_id: i64) -> Result<usize> {
        self.session
            .with(|c| pg::queue::release_runner(c, runner_id))
    }

    fn load_rubric(&mut self, id: i64) -> Result<Rubric> {
        self.session.with(|c| pg::catalog::load_rubric(c, id))
    }

    fn spent(&mut self, filter: &Filter) -> Result<f64> {
        let shown = self.session.target.shown.clone();
        let conn = self.session.with(|c| pg::snapshot::snapshot(c, &shown))?;
        crate::util::set_clock_offset(0);
        crate::report::cost::spent(&conn, filter)
    }

    fn transient(&self, err: &anyhow::Error) -> bool {
        pg::session::is_disconnect(err)
    }
}
