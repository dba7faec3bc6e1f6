//! The queue on PostgreSQL: every transition of `jobs.state`, each one statement (or one
//! short transaction) judged on the database's clock (`llmbatch_now_ms()`). Claims lock with
//! `FOR UPDATE SKIP LOCKED` inside a CTE, never `IN (subquery … LIMIT)` (PostgreSQL BUG #15715:
//! a nested-loop plan may update more rows than the limit). Every finish and rescue is fenced
//! by the lease token.

use anyhow::Result;
use postgres::types::ToSql;
use postgres::GenericClient;

use super::session::Statements;
use crate::db::store::*;
use crate::domain::{Claim, Finish, JobKind, JobState};

/// Query parameters built up with the SQL that uses them: [`Params::add`] returns `$n`.
#[derive(Default)]
pub struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    pub fn add(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.0.push(Box::new(v));
        format!("${}", self.0.len())
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|b| b.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// ` AND …` conditions of a filter on the jobs table under `alias`.
pub fn scope(filter: &Filter, alias: &str, p: &mut Params) -> String {
    super::report::scope_on(filter, alias, "id", p)
}

pub fn register(c: &mut impl GenericClient, r: &NewRunner) -> Result<i64> {
    Ok(c.query_one(
        "INSERT INTO runners (host, pid, pid_start, boot_id, started_at, heartbeat_at)
         VALUES ($1, $2, $3, $4, llmbatch_now_ms(), llmbatch_now_ms()) RETURNING id",
        &[&r.host, &r.pid, &r.pid_start, &r.boot_id],
    )?
    .get(0))
}

/// Renews the runner's heartbeat and its running jobs' leases by `lease_ms` from the
/// database's now. An error when the runner is no longer registered as live (another host
/// found it dead and marked it stopped): its leases are then not renewed.
pub fn renew(
    c: &mut impl GenericClient,
    st: &mut Statements,
    runner_id: i64,
    lease_ms: i64,
) -> Result<()> {
    let stmt = st.get(
        c,
        "WITH r AS (UPDATE runners SET heartbeat_at = llmbatch_now_ms()
                        WHERE id = $1 AND stopped_at IS NULL RETURNING id),
                  j AS (UPDATE jobs SET lease_expires_at = llmbatch_now_ms() + $2
                        WHERE runner_id = $1 AND state = 'running' AND EXISTS (SELECT 1 FROM r)
                        RETURNING id)
             SELECT COUNT(*) FROM r",
    )?;
    let live: i64 = c.query_one(&stmt, &[&runner_id, &lease_ms])?.get(0);
    if live == 0 {
        anyhow::bail!("runner {runner_id} is marked stopped (found dead by another runner)");
    }
    Ok(())
}

/// Claims up to `endpoints.len()` runnable jobs of a model, one per endpoint slot, in one
/// statement: rows locked with SKIP LOCKED in a CTE, then state, attempt number, lease token,
/// lease expiry (database time) and the attempt row written together. `tokens` holds one
/// lease token per endpoint slot, chosen by the caller, so that it knows them even when the
/// answer never comes (see [`hand_back`]).
pub fn claim(
    c: &mut impl GenericClient,
    st: &mut Statements,
    runner_id: i64,
    lease_ms: i64,
    filter: &Filter,
    want: &ClaimParams,
    tokens: &[i64],
) -> Result<Vec<Claim>> {
    if want.endpoints.is_empty() {
        return Ok(Vec::new());
    }
    debug_assert_eq!(tokens.len(), want.endpoints.len());
    let mut p = Params::default();
    let m = p.add(want.model.to_string());
    let cond = scope(filter, "j", &mut p);
    let limit = p.add(want.endpoints.len() as i64);
    let runner = p.add(runner_id);
    let tokens = p.add(tokens.to_vec());
    let lease = p.add(lease_ms);
    let eps = p.add(want.endpoints.to_vec());
    let timeout = p.add(want.timeout_s);
    let sql = format!(
        "WITH picked AS (
             SELECT j.id FROM jobs j
             WHERE j.state = 'pending' AND j.model = {m} AND j.not_before <= llmbatch_now_ms()
               AND (j.parent_id IS NULL
                    OR EXISTS (SELECT 1 FROM jobs p WHERE p.id = j.parent_id AND p.state = 'done')){cond}
             ORDER BY j.not_before, j.id
             LIMIT {limit}
             FOR UPDATE SKIP LOCKED
         ),
         slots AS (SELECT id, row_number() OVER (ORDER BY id) AS slot FROM picked),
         taken AS (
             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, runner_id = {runner},
                    lease_token = ({tokens}::bigint[])[s.slot],
                    lease_expires_at = llmbatch_now_ms() + {lease}, updated_at = llmbatch_now_ms(),
                    attempt_id = nextval(pg_get_serial_sequence('attempts', 'id'))
             FROM slots s WHERE j.id = s.id
             RETURNING j.id, j.attempt_id, j.attempts, j.lease_token, j.updated_at, j.kind, j.batch,
                       j.item_id, j.model, j.charged, j.max_attempts, j.parent_id, j.rubric_id, s.slot,
                       j.repeat
         ),
         recorded AS (
             INSERT INTO attempts (id, job_id, number, model, batch, runner_id, endpoint, timeout_s, started_at)
             SELECT attempt_id, id, attempts, model, batch, {runner},
                    NULLIF(({eps}::text[])[slot], ''), {timeout}, updated_at FROM taken
         )
         SELECT t.id, t.attempt_id, t.attempts, t.lease_token, t.updated_at, t.kind, t.batch,
                t.item_id, i.prompt, i.vars, t.charged, t.max_attempts, t.parent_id, t.rubric_id,
                pa.output, COALESCE(({eps}::text[])[t.slot], ''), i.messages, i.options, t.repeat
         FROM taken t
         JOIN items i ON i.batch = t.batch AND i.item_id = t.item_id
         LEFT JOIN jobs pj ON pj.id = t.parent_id
         LEFT JOIN attempts pa ON pa.id = pj.attempt_id
         ORDER BY t.slot"
    );
    let stmt = st.get(c, &sql)?;
    let rows = c.query(&stmt, &p.refs())?;
    Ok(rows.iter().map(|r| claim_row(r, want.model)).collect())
}

/// A claimed job as the claim statement returns it.
fn claim_row(r: &postgres::Row, model: &str) -> Claim {
    Claim {
        job_id: r.get(0),
        attempt_id: r.get(1),
        number: r.get(2),
        token: r.get(3),
        started_at: r.get(4),
        kind: JobKind::parse(r.get::<_, &str>(5)).unwrap_or(JobKind::Generate),
        batch: r.get(6),
        item_id: r.get(7),
        repeat: r.get(18),
        model: model.to_string(),
        endpoint: r.get(15),
        prompt: r.get(8),
        vars: serde_json::from_str(r.get::<_, &str>(9)).unwrap_or_default(),
        charged: r.get(10),
        max_attempts: r.get(11),
        parent_id: r.get(12),
        rubric_id: r.get(13),
        parent_output: r.get(14),
        messages: r
            .get::<_, Option<&str>>(16)
            .and_then(|m| serde_json::from_str(m).ok()),
        options: r
            .get::<_, Option<&str>>(17)
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or_default(),
    }
}

/// Running jobs not held by `except_runner`, with their runner's record; how long ago each
/// lease expired is judged on the database's clock.
pub fn find_stuck(c: &mut impl GenericClient, except_runner: Option<i64>) -> Result<Vec<StuckJob>> {
    let rows = c.query(
        "SELECT j.id, j.model, j.batch, j.runner_id,
                llmbatch_now_ms() - COALESCE(j.lease_expires_at, 0), COALESCE(j.lease_token, 0),
                j.attempt_id, j.max_attempts, r.id, r.host, r.pid, r.pid_start, r.boot_id,
                r.stopped_at
         FROM jobs j LEFT JOIN runners r ON r.id = j.runner_id
         WHERE j.state = 'running' AND j.runner_id IS DISTINCT FROM $1
         ORDER BY j.id",
        &[&except_runner],
    )?;
    Ok(rows
        .iter()
        .map(|r| StuckJob {
            job_id: r.get(0),
            model: r.get(1),
            batch: r.get(2),
            runner_id: r.get(3),
            lease_expired_ms: r.get(4),
            token: r.get(5),
            attempt_id: r.get(6),
            max_attempts: r.get(7),
            runner: r.get::<_, Option<i64>>(8).map(|id| RunnerRecord {
                id,
                host: r.get(9),
                pid: r.get(10),
                pid_start: r.get(11),
                boot_id: r.get(12),
                stopped: r.get::<_, Option<i64>>(13).is_some(),
            }),
        })
        .collect())
}

/// Puts stuck jobs back: the attempt ends `lost`, uncharged, and the job goes back to pending
/// (or to failed once lost more often than its budget). Fenced by token.
pub fn rescue(c: &mut impl GenericClient, jobs: &[Rescue]) -> Result<Vec<(usize, JobState)>> {
    let mut rescued = Vec::new();
    for (i, o) in jobs.iter().enumerate() {
        let row = c.query_opt(
            "WITH budget AS (
                 SELECT COALESCE($1::bigint, (SELECT max_attempts FROM models WHERE name = $2), $3) AS b,
                        (SELECT COUNT(*) FROM attempts WHERE job_id = $4 AND outcome = 'lost') AS lost
             ),
             moved AS (
                 UPDATE jobs SET state = CASE WHEN (SELECT lost >= b FROM budget) THEN 'failed' ELSE 'pending' END,
                        runner_id = NULL, lease_token = NULL, lease_expires_at = NULL,
                        last_outcome = 'lost', last_error = $5, updated_at = llmbatch_now_ms()
                 WHERE id = $4 AND state = 'running' AND lease_token = $6
                 RETURNING state
             ),
             recorded AS (
                 UPDATE attempts SET outcome = 'lost', charged = 0, error = $5,
                        finished_at = GREATEST(llmbatch_now_ms(), started_at),
                        duration_ms = GREATEST(llmbatch_now_ms(), started_at) - started_at
                 WHERE id = $7 AND outcome IS NULL AND EXISTS (SELECT 1 FROM moved)
             )
             SELECT state FROM moved",
            &[
                &o.max_attempts,
                &o.model,
                &crate::models::DEFAULT_MAX_ATTEMPTS,
                &o.job_id,
                &o.error,
                &o.token,
                &o.attempt_id,
            ],
        )?;
        if let Some(row) = row {
            let state = JobState::parse(row.get::<_, &str>(0)).unwrap_or(JobState::Pending);
            rescued.push((i, state));
        }
    }
    Ok(rescued)
}

pub fn mark_runners_died(c: &mut impl GenericClient, runner_ids: &[i64]) -> Result<()> {
    c.execute(
        "UPDATE runners SET stopped_at = GREATEST(llmbatch_now_ms(), heartbeat_at),
                stop_reason = 'died'
         WHERE id = ANY($1::bigint[]) AND stopped_at IS NULL",
        &[&runner_ids],
    )?;
    Ok(())
}

/// Puts failed and cancelled jobs matching the filter back to pending, each with `extra` more
/// attempts (default: a fresh budget of its model's max attempts). Returns their ids.
pub fn resume(c: &mut impl GenericClient, rp: &ResumeParams) -> Result<Vec<i64>> {
    let mut p = Params::default();
    let cond = scope(rp.filter, "j", &mut p);
    let mut sql = format!("SELECT j.id FROM jobs j WHERE j.state IN ('failed', 'cancelled'){cond}");
    if let Some(o) = rp.outcome {
        sql.push_str(&format!(
            " AND j.last_outcome = {}",
            p.add(o.as_str().to_string())
        ));
    }
    if rp.dry_run {
        sql.push_str(" ORDER BY j.id");
        return Ok(c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect());
    }
    let e = p.add(rp.extra_attempts);
    let d = p.add(crate::models::DEFAULT_MAX_ATTEMPTS);
    let sql = format!(
        "UPDATE jobs SET state = 'pending', not_before = 0, updated_at = llmbatch_now_ms(),
                max_attempts = charged + COALESCE({e}::bigint,
                    (SELECT max_attempts FROM models m WHERE m.name = jobs.model), {d})
         WHERE id IN ({sql}) AND state IN ('failed', 'cancelled')
         RETURNING id"
    );
    let mut ids: Vec<i64> = c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Puts every job a runner still holds back to pending, uncharged, its attempt `interrupted`.
pub fn release_runner(c: &mut impl GenericClient, runner_id: i64) -> Result<usize> {
    put_back(c, runner_id, None, "runner stopped on an error")
}

/// Puts back the jobs a runner's claims took under these lease tokens, if they still hold
/// them: claims whose answer was lost with the connection (the server may have committed
/// them), so the runner never started their attempts. Each attempt ends `interrupted`,
/// uncharged, as when a runner hands its jobs back on a signal. Returns how many.
pub fn hand_back(c: &mut impl GenericClient, runner_id: i64, tokens: &[i64]) -> Result<usize> {
    let why = "claimed as the connection to the database was lost";
    put_back(c, runner_id, Some(tokens), why)
}

/// The jobs a runner holds (only those under `tokens`, if given) back to pending, uncharged,
/// their attempts `interrupted` with `why`. Returns how many.
fn put_back(
    c: &mut impl GenericClient,
    runner_id: i64,
    tokens: Option<&[i64]>,
    why: &str,
) -> Result<usize> {
    let row = c.query_one(
        "WITH held AS (
             UPDATE jobs SET state = 'pending', runner_id = NULL, lease_token = NULL,
                    lease_expires_at = NULL, last_outcome = 'interrupted', last_error = $3,
                    updated_at = llmbatch_now_ms()
             WHERE runner_id = $1 AND state = 'running'
               AND ($2::bigint[] IS NULL OR lease_token = ANY($2::bigint[]))
             RETURNING attempt_id
         ),
         recorded AS (
             UPDATE attempts SET outcome = 'interrupted', charged = 0, error = $3,
                    finished_at = GREATEST(llmbatch_now_ms(), started_at),
                    duration_ms = GREATEST(llmbatch_now_ms(), started_at) - started_at
             WHERE outcome IS NULL AND id IN (SELECT attempt_id FROM held)
         )
         SELECT COUNT(*) FROM held",
        &[&runner_id, &tokens, &why],
    )?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// Pending jobs of `model` in scope that could run now, ids above `after`, in id order: what
/// `run --cache` looks up. Nothing is taken.
pub fn runnable(
    c: &mut impl GenericClient,
    model: &str,
    filter: &Filter,
    after: i64,
    limit: usize,
) -> Result<Vec<Claim>> {
    let mut p = Params::default();
    let m = p.add(model.to_string());
    let a = p.add(after);
    let cond = scope(filter, "j", &mut p);
    let l = p.add(limit as i64);
    let sql = format!(
        "SELECT j.id, j.kind, j.batch, j.item_id, i.prompt, i.vars, j.charged, j.max_attempts,
                j.parent_id, j.rubric_id, pa.output, j.repeat, i.messages, i.options
         FROM jobs j
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         LEFT JOIN jobs p ON p.id = j.parent_id
         LEFT JOIN attempts pa ON pa.id = p.attempt_id
         WHERE j.state = 'pending' AND j.model = {m} AND j.id > {a}
           AND (j.parent_id IS NULL OR p.state = 'done'){cond}
         ORDER BY j.id LIMIT {l}"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| Claim {
            job_id: r.get(0),
            attempt_id: 0,
            number: 0,
            token: 0,
            started_at: 0,
            kind: JobKind::parse(r.get::<_, &str>(1)).unwrap_or(JobKind::Generate),
            batch: r.get(2),
            item_id: r.get(3),
            repeat: r.get(11),
            model: model.to_string(),
            endpoint: String::new(),
            prompt: r.get(4),
            vars: serde_json::from_str(r.get::<_, &str>(5)).unwrap_or_default(),
            messages: r
                .get::<_, Option<&str>>(12)
                .and_then(|m| serde_json::from_str(m).ok()),
            options: r
                .get::<_, Option<&str>>(13)
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or_default(),
            charged: r.get(6),
            max_attempts: r.get(7),
            parent_id: r.get(8),
            rubric_id: r.get(9),
            parent_output: r.get(10),
        })
        .collect())
}

/// The newest `ok` attempt answered under `key`, as a `cached` finish.
pub fn cached_answer(c: &mut impl GenericClient, key: &str) -> Result<Option<Finish>> {
    let row = c.query_opt(
        "SELECT id, output, reasoning, raw_output, timings, output_tokens FROM attempts
         WHERE cache_key = $1 AND outcome = 'ok' ORDER BY id DESC LIMIT 1",
        &[&key],
    )?;
    Ok(row.map(|r| {
        let mut f = Finish::new(crate::domain::Outcome::Cached, 0);
        f.cached_from = Some(r.get(0));
        f.output = r.get(1);
        f.reasoning = r.get(2);
        f.raw_output = r.get(3);
        f.timings = r
            .get::<_, Option<&str>>(4)
            .and_then(|t| serde_json::from_str(t).ok());
        f.cache_key = Some(key.to_string());
        f.metrics = Some(crate::domain::Metrics {
            output_tokens: r.get(5),
            ..crate::domain::Metrics::default()
        });
        f
    }))
}

/// One job answered from the cache in one statement, fenced by its still being pending: a
/// `cached` attempt (uncharged, no duration) and the job done. Returns (attempt id, number).
pub fn answer_cached(
    c: &mut impl GenericClient,
    runner_id: i64,
    claim: &Claim,
    f: &Finish,
) -> Result<Option<(i64, i64)>> {
    let timings = f.stored_timings().map(|t| t.to_string());
    let output_tokens = f.metrics.as_ref().and_then(|m| m.output_tokens);
    let row = c.query_opt(
        "WITH done AS (
             UPDATE jobs SET state = 'done', attempts = attempts + 1, not_before = 0,
                    last_outcome = 'cached', last_error = NULL, updated_at = llmbatch_now_ms(),
                    attempt_id = nextval(pg_get_serial_sequence('attempts', 'id'))
             WHERE id = $1 AND state = 'pending'
             RETURNING id, attempts, attempt_id, model, batch, updated_at
         ),
         recorded AS (
             INSERT INTO attempts (id, job_id, number, model, batch, runner_id, started_at,
                    finished_at, duration_ms, outcome, charged, output, reasoning, raw_output,
                    timings, cache_key, cached_from, output_tokens)
             SELECT attempt_id, id, attempts, model, batch, $2, updated_at, updated_at, 0,
                    'cached', 0, $3, $4, $5, $6, $7, $8, $9 FROM done
         )
         SELECT attempt_id, attempts FROM done",
        &[
            &claim.job_id,
            &runner_id,
            &f.output,
            &f.reasoning,
            &f.raw_output,
            &timings,
            &f.cache_key,
            &f.cached_from,
            &output_tokens,
        ],
    )?;
    let Some(r) = row else { return Ok(None) };
    let (attempt_id, number): (i64, i64) = (r.get(0), r.get(1));
    if claim.kind == JobKind::Grade {
        let mut answered = claim.clone();
        answered.attempt_id = attempt_id;
        answered.number = number;
        super::finish::record_grade(c, &answered, f)?;
    }
    Ok(Some((attempt_id, number)))
}
