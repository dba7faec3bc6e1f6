//! The store traits on PostgreSQL. One connection per handle (a runner's coordinator has one,
//! its heartbeat another, from [`Store::reopen`]); it comes back after a restart (see
//! [`Session`]). No transaction is left open between calls, so none is held across a model
//! call.

use anyhow::Result;
use postgres::Client;
use std::cell::RefCell;
use std::collections::HashMap;

use super::queue::{self, Params};
use super::session::Session;
use super::{catalog, Target};
use crate::db::store::*;
use crate::domain::{JobKind, JobState};
use crate::grading::Rubric;
use crate::models::ModelConfig;

mod enqueue;
mod reads;

use enqueue::PgEnqueue;

pub struct PgStore {
    session: RefCell<Session>,
    /// Reads of a read-only command see one snapshot (see [`PgStore::hold_snapshot`]).
    reads: reads::Reads,
    /// Claims whose answer never came (the connection failed): the server may have committed
    /// them, and then their jobs are held by this runner, which never started them. Handed
    /// back, fenced by their lease tokens, before anything else is done on a connection.
    unsure: RefCell<Vec<(i64, Vec<i64>)>>,
}

impl PgStore {
    pub fn new(target: Target, client: Client) -> PgStore {
        PgStore {
            session: RefCell::new(Session::with_client(target, client)),
            reads: reads::Reads::default(),
            unsure: RefCell::new(Vec::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.with_cache(|c, _| f(c))
    }

    /// Runs `f` on the connection (with its prepared statements), once claims left unsure by
    /// a lost connection are settled.
    fn with_cache<T>(
        &self,
        f: impl FnOnce(&mut Client, &mut super::session::Statements) -> Result<T>,
    ) -> Result<T> {
        self.session.borrow_mut().with_cache(|c, st| {
            self.settle(c)?;
            f(c, st)
        })
    }

    /// Hands back the jobs of claims whose answer was lost, if the server committed them.
    fn settle(&self, c: &mut Client) -> Result<()> {
        let mut unsure = self.unsure.borrow_mut();
        while let Some((runner_id, tokens)) = unsure.last() {
            let n = queue::hand_back(c, *runner_id, tokens)?;
            if n > 0 {
                log::warn!(
                    "{n} job(s) claimed just as the connection to the database was lost went back to pending (never started)"
                );
            }
            unsure.pop();
        }
        Ok(())
    }

    pub fn target(&self) -> Target {
        self.session.borrow().target.clone()
    }
}

impl QueueStore for PgStore {
    fn register_runner(&self, runner: &NewRunner) -> Result<i64> {
        self.with(|c| queue::register(c, runner))
    }

    fn renew_leases(&self, runner_id: i64, lease_ms: i64) -> Result<()> {
        self.with_cache(|c, st| queue::renew(c, st, runner_id, lease_ms))
    }

    fn stop_runner(&self, runner_id: i64, reason: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE runners SET stopped_at = llmbatch_now_ms(), stop_reason = $1 WHERE id = $2",
                &[&reason, &runner_id],
            )?;
            Ok(())
        })
    }

    fn mark_runners_died(&self, runner_ids: &[i64]) -> Result<()> {
        self.with(|c| queue::mark_runners_died(c, runner_ids))
    }

    fn record_and_claim(&self, p: &RecordAndClaimParams) -> Result<Recorded> {
        // Lease tokens are chosen here, so that a claim whose answer is lost can be found.
        let tokens: Vec<Vec<i64>> = p
            .claims
            .iter()
            .map(|w| {
                w.endpoints
                    .iter()
                    .map(|_| fastrand::i64(1..i64::MAX))
                    .collect()
            })
            .collect();
        let result = self.with_cache(|c, st| {
            // The finishes are one statement, and each claim is one; either alone is atomic
            // and fenced by itself. More than one go in one short transaction (one commit),
            // which ends before any claimed attempt starts. (A grade's finish also writes its
            // verdict: always a transaction.)
            let statements = usize::from(!p.finishes.is_empty()) + p.claims.len();
            let single =
                statements <= 1 && p.finishes.iter().all(|f| f.claim.kind != JobKind::Grade);
            if single {
                return record_and_claim_in(c, st, p, &tokens);
            }
            let mut tx = c.transaction()?;
            let done = record_and_claim_in(&mut tx, st, p, &tokens)?;
            tx.commit()?;
            Ok(done)
        });
        if result.is_err() {
            // The commit may have been applied with only its answer lost.
            let sent: Vec<i64> = tokens.into_iter().flatten().collect();
            if !sent.is_empty() {
                self.unsure.borrow_mut().push((p.runner_id, sent));
            }
        }
        result
    }

    fn find_stuck(&self, except_runner: Option<i64>) -> Result<Vec<StuckJob>> {
        self.with(|c| queue::find_stuck(c, except_runner))
    }

    fn rescue(&self, jobs: &[Rescue]) -> Result<Vec<(usize, JobState)>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.with(|c| {
            let mut tx = c.transaction()?;
            let rescued = queue::rescue(&mut tx, jobs)?;
            tx.commit()?;
            Ok(rescued)
        })
    }

    fn reap(
        &self,
        except_runner: Option<i64>,
        pick: &mut dyn FnMut(Vec<StuckJob>) -> Vec<Rescue>,
    ) -> Result<Vec<(usize, JobState)>> {
        self.with(|c| {
            // Short: the jobs are judged from what was read, and each rescue is fenced by its
            // token, so no lock is needed while `pick` looks at processes.
            let mut tx = c.transaction()?;
            let chosen = pick(queue::find_stuck(&mut tx, except_runner)?);
            let rescued = queue::rescue(&mut tx, &chosen)?;
            tx.commit()?;
            Ok(rescued)
        })
    }

    fn release_runner(&self, runner_id: i64) -> Result<usize> {
        self.with(|c| queue::release_runner(c, runner_id))
    }

    fn resume(&self, p: &ResumeParams) -> Result<Vec<i64>> {
        self.with(|c| queue::resume(c, p))
    }

    fn enqueue_grades(&self, p: &EnqueueGradesParams) -> Result<GradesQueued> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // New job ids of one command form one range, as an enqueue's.
            tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('llmbatch enqueue'))")?;
            let rubric_id = catalog::save_rubric(&mut tx, p.rubric)?;
            let mut q = Params::default();
            let cond = queue::scope(p.filter, "j", &mut q);
            let r = tx.query_one(
                &format!(
                    "SELECT COUNT(*), COUNT(*) FILTER (WHERE j.state <> 'done') FROM jobs j
                     WHERE j.kind = 'generate'{cond}"
                ),
                &q.refs(),
            )?;
            let mut queued = GradesQueued {
                rubric_id,
                outputs: r.get(0),
                waiting: r.get(1),
                new: 0,
            };
            if queued.outputs == 0 {
                return Ok(queued);
            }
            for grader in p.graders {
                let mut q = Params::default();
                let g = q.add(grader.clone());
                let rid = q.add(rubric_id);
                let cond = queue::scope(p.filter, "j", &mut q);
                queued.new += tx.execute(
                    &format!(
                        "INSERT INTO jobs (batch, item_id, model, kind, parent_id, rubric_id, created_at, updated_at)
                         SELECT j.batch, j.item_id, {g}, 'grade', j.id, {rid}, llmbatch_now_ms(), llmbatch_now_ms()
                         FROM jobs j WHERE j.kind = 'generate'{cond}
                           AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.kind = 'grade'
                                           AND o.parent_id = j.id AND o.model = {g} AND o.rubric_id = {rid})
                         ORDER BY j.id
                         ON CONFLICT DO NOTHING"
                    ),
                    &q.refs(),
                )? as i64;
            }
            tx.commit()?;
            Ok(queued)
        })
    }

    fn enqueue(&self) -> Result<Box<dyn Enqueue + '_>> {
        PgEnqueue::begin(self).map(|e| Box::new(e) as Box<dyn Enqueue>)
    }

    fn first_pending(&self, model: &str) -> Result<Option<i64>> {
        self.with(|c| {
            Ok(c.query_one(
                "SELECT MIN(id) FROM jobs WHERE state = 'pending' AND model = $1",
                &[&model],
            )?
            .get(0))
        })
    }

    fn runnable(
        &self,
        model: &str,
        filter: &Filter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<crate::domain::Claim>> {
        self.with(|c| queue::runnable(c, model, filter, after, limit))
    }

    fn cached_answer(&self, key: &str) -> Result<Option<crate::domain::Finish>> {
        self.with(|c| queue::cached_answer(c, key))
    }

    fn answer_cached(
        &self,
        runner_id: i64,
        answers: &[(crate::domain::Claim, crate::domain::Finish)],
    ) -> Result<Vec<Option<(i64, i64)>>> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut out = Vec::with_capacity(answers.len());
            for (claim, f) in answers {
                out.push(queue::answer_cached(&mut tx, runner_id, claim, f)?);
            }
            tx.commit()?;
            Ok(out)
        })
    }

    fn unknown_ids(&self, ids: &[i64]) -> Result<Vec<i64>> {
        self.with(|c| {
            Ok(c.query(
                "SELECT DISTINCT u.id FROM unnest($1::bigint[]) AS u(id)
                 WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.id) ORDER BY u.id",
                &[&ids],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
    }

    fn state_counts(&self, filter: &Filter) -> Result<HashMap<JobState, i64>> {
        self.with(|c| {
            let mut p = Params::default();
            let cond = queue::scope(filter, "j", &mut p);
            let sql =
                format!("SELECT j.state, COUNT(*) FROM jobs j WHERE true{cond} GROUP BY j.state");
            Ok(c.query(&sql, &p.refs())?
                .iter()
                .filter_map(|r| JobState::parse(r.get::<_, &str>(0)).map(|s| (s, r.get(1))))
                .collect())
        })
    }

    fn pending_models(&self, filter: &Filter) -> Result<Vec<String>> {
        self.with(|c| {
            let mut p = Params::default();
            let cond = queue::scope(filter, "j", &mut p);
            let sql = format!(
                "SELECT DISTINCT j.model FROM jobs j WHERE j.state = 'pending'{cond} ORDER BY 1"
            );
            Ok(c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect())
        })
    }

    fn open_jobs(&self, filter: &Filter, model: &str) -> Result<u64> {
        self.with(|c| {
            let mut p = Params::default();
            let m = p.add(model.to_string());
            let cond = queue::scope(filter, "j", &mut p);
            let sql = format!(
                "SELECT COUNT(*) FROM jobs j WHERE j.state IN ('pending', 'running') AND j.model = {m}{cond}"
            );
            Ok(c.query_one(&sql, &p.refs())?.get::<_, i64>(0) as u64)
        })
    }

    fn next_runnable_in(&self, filter: &Filter, model: &str) -> Result<Option<i64>> {
        self.with(|c| {
            let mut p = Params::default();
            let m = p.add(model.to_string());
            let cond = queue::scope(filter, "j", &mut p);
            let sql = format!(
                "SELECT MIN(j.not_before) - llmbatch_now_ms() FROM jobs j
                 WHERE j.state = 'pending' AND j.model = {m}{cond}"
            );
            Ok(c.query_one(&sql, &p.refs())?.get(0))
        })
    }

    fn work_left(&self, filter: &Filter, stopped: &[String]) -> Result<bool> {
        self.with(|c| {
            let mut p = Params::default();
            let s = p.add(stopped.to_vec());
            let pcond = queue::scope(filter, "p", &mut p);
            let cond = queue::scope(filter, "j", &mut p);
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

    fn items_missing_var(&self, filter: &Filter, name: &str) -> Result<MissingVar> {
        self.with(|c| {
            let mut p = Params::default();
            let n = p.add(name.to_string());
            let cond = queue::scope(filter, "j", &mut p);
            let r = c.query_one(
                &format!(
                    "SELECT COUNT(*), MIN(j.batch || chr(31) || j.item_id) FROM jobs j
                     JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
                     WHERE NOT (i.vars::jsonb ? {n}) AND j.kind = 'generate'{cond}"
                ),
                &p.refs(),
            )?;
            let example: Option<String> = r.get(1);
            Ok(MissingVar {
                count: r.get(0),
                example: example.and_then(|e| {
                    e.split_once('\u{1f}')
                        .map(|(b, i)| (b.to_string(), i.to_string()))
                }),
            })
        })
    }
}

fn record_and_claim_in(
    c: &mut impl postgres::GenericClient,
    st: &mut super::session::Statements,
    p: &RecordAndClaimParams,
    tokens: &[Vec<i64>],
) -> Result<Recorded> {
    let mut done = Recorded {
        kept: super::finish::finish(c, st, &p.finishes)?,
        claims: Vec::with_capacity(p.claims.len()),
    };
    for (want, tokens) in p.claims.iter().zip(tokens) {
        let started = std::time::Instant::now();
        let got = queue::claim(c, st, p.runner_id, p.lease_ms, p.filter, want, tokens)?;
        log::debug!(
            target: "llmbatch::claim",
            "claimed {} job(s): claim took {:.3} ms",
            got.len(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        done.claims.push(got);
    }
    Ok(done)
}

impl Catalog for PgStore {
    fn model(&self, name: &str) -> Result<ModelConfig> {
        self.with(|c| catalog::load_model(c, name))
    }

    fn models(&self) -> Result<Vec<ModelConfig>> {
        self.with(catalog::list_models)
    }

    fn save_model(&self, model: &ModelConfig) -> Result<()> {
        self.with(|c| catalog::save_model(c, model))
    }

    fn rubric(&self, id: i64) -> Result<Rubric> {
        self.with(|c| catalog::load_rubric(c, id))
    }

    fn ok_durations(&self, model: &str, window_ms: i64) -> Result<DurationSample> {
        self.with(|c| catalog::ok_durations(c, model, window_ms))
    }

    fn ok_gaps(&self, model: &str, window_ms: i64) -> Result<(i64, Option<f64>)> {
        self.with(|c| catalog::ok_gaps(c, model, window_ms))
    }
}

impl Store for PgStore {
    fn reopen(&self) -> Result<Box<dyn Store>> {
        let target = self.target();
        let client = target.connect()?;
        Ok(Box::new(PgStore::new(target, client)))
    }

    fn publish(&mut self) -> Result<Option<NewJobs>> {
        Ok(None)
    }
}
