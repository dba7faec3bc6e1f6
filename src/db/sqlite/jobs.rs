//! Every transition of `jobs.state` in SQLite's SQL: claim, finish (fenced by lease token),
//! rescue, resume, release. Nothing else writes a job's state.

use anyhow::{Context, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use crate::db::store::{
    ClaimParams, Filter, FinishParams, MissingVar, Rescue, ResumeParams, RunnerRecord, StuckJob,
};
use crate::domain::{Claim, Finish, JobKind, JobState, Next};
use crate::util::now_ms;

/// How this engine binds a [`Filter`]: ` AND …` conditions with their parameters. Job ids
/// go in as one JSON array, so a filter stays plain data and needs no temp table.
impl Filter {
    /// Conditions on the jobs table under `alias`.
    pub fn sql(&self, alias: &str) -> (String, Vec<SqlValue>) {
        self.sql_on(alias, "id")
    }

    /// The same conditions on a table whose job id column is `id_col` (`job_id` on attempts).
    pub fn sql_on(&self, alias: &str, id_col: &str) -> (String, Vec<SqlValue>) {
        let mut sql = String::new();
        let mut args = Vec::new();
        if let Some(b) = &self.batch {
            sql.push_str(&format!(" AND {alias}.batch = ?"));
            args.push(SqlValue::Text(b.clone()));
        }
        if !self.models.is_empty() {
            let marks = vec!["?"; self.models.len()].join(", ");
            sql.push_str(&format!(" AND {alias}.model IN ({marks})"));
            args.extend(self.models.iter().map(|m| SqlValue::Text(m.clone())));
        }
        if let Some(ids) = &self.ids {
            sql.push_str(&format!(
                " AND {alias}.{id_col} IN (SELECT value FROM json_each(?))"
            ));
            args.push(SqlValue::Text(ids_json(ids)));
        }
        (sql, args)
    }
}

fn ids_json(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("ids serialize")
}

/// Generated jobs in `filter` whose item has no variable `name`: how many, and one of them
/// (batch, item id) to name in a message.
pub fn items_missing_var(conn: &Connection, filter: &Filter, name: &str) -> Result<MissingVar> {
    let (cond, mut args) = filter.sql("j");
    // A quoted JSON path label: variable names may hold '.' or '-'.
    let path = format!("$.\"{name}\"");
    args.insert(0, SqlValue::Text(path));
    let sql = format!(
        "SELECT COUNT(*), MIN(j.batch || char(31) || j.item_id) FROM jobs j
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         WHERE json_type(i.vars, ?1) IS NULL AND j.kind = 'generate'{cond}"
    );
    let (n, example): (i64, Option<String>) =
        conn.query_row(&sql, rusqlite::params_from_iter(args), |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let example = example.and_then(|e| {
        e.split_once('\u{1f}')
            .map(|(b, i)| (b.to_string(), i.to_string()))
    });
    Ok(MissingVar { count: n, example })
}

/// The ids in `ids` that name no job, sorted.
pub fn unknown_ids(conn: &Connection, ids: &[i64]) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT value FROM json_each(?1) WHERE value NOT IN (SELECT id FROM jobs)
         ORDER BY value",
    )?;
    let unknown = stmt
        .query_map([ids_json(ids)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(unknown)
}

/// Claims up to `endpoints.len()` runnable jobs of a model, one per endpoint slot, in the
/// caller's transaction: state, attempt number, lease and attempt row together.
pub fn claim(
    tx: &Transaction,
    runner_id: i64,
    lease_ms: i64,
    filter: &Filter,
    p: &ClaimParams,
) -> Result<Vec<Claim>> {
    if p.endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let (cond, mut args) = filter.sql("j");
    let sql = format!(
        "SELECT j.id, j.kind, j.batch, j.item_id, i.prompt, i.vars, j.charged, j.max_attempts,
                j.parent_id, j.rubric_id, pa.output, i.messages, i.options, j.repeat
         FROM jobs j
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         LEFT JOIN jobs p ON p.id = j.parent_id
         LEFT JOIN attempts pa ON pa.id = p.attempt_id
         WHERE j.state = 'pending' AND j.model = ? AND j.not_before <= ?
           AND (j.parent_id IS NULL OR p.state = 'done'){cond}
         ORDER BY j.not_before, j.id LIMIT ?"
    );
    let mut head = vec![SqlValue::Text(p.model.to_string()), SqlValue::Integer(now)];
    head.append(&mut args);
    head.push(SqlValue::Integer(p.endpoints.len() as i64));
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(head), |r| claim_row(r, p.model, now))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut take = tx.prepare_cached(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, runner_id = ?1,
                lease_token = ?2, lease_expires_at = ?3, updated_at = ?4
         WHERE id = ?5 AND state = 'pending' RETURNING attempts",
    )?;
    let mut record = tx.prepare_cached(
        "INSERT INTO attempts (job_id, number, model, batch, runner_id, endpoint, timeout_s, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut point = tx.prepare_cached("UPDATE jobs SET attempt_id = ?1 WHERE id = ?2")?;
    let mut claims = Vec::with_capacity(rows.len());
    for (mut c, endpoint) in rows.into_iter().zip(p.endpoints) {
        let token = fastrand::i64(1..i64::MAX);
        let number: Option<i64> = take
            .query_row(
                params![runner_id, token, now + lease_ms, now, c.job_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(number) = number else { continue };
        let endpoint_col = (!endpoint.is_empty()).then_some(endpoint.as_str());
        record.execute(params![
            c.job_id,
            number,
            p.model,
            c.batch,
            runner_id,
            endpoint_col,
            p.timeout_s,
            now
        ])?;
        c.attempt_id = tx.last_insert_rowid();
        point.execute(params![c.attempt_id, c.job_id])?;
        c.number = number;
        c.token = token;
        c.endpoint = endpoint.clone();
        claims.push(c);
    }
    Ok(claims)
}

/// A runnable job as read by [`claim`], before it has an attempt, a number or a token.
fn claim_row(r: &rusqlite::Row, model: &str, now: i64) -> rusqlite::Result<Claim> {
    let kind: String = r.get(1)?;
    let vars: String = r.get(5)?;
    let messages: Option<String> = r.get(11)?;
    let options: Option<String> = r.get(12)?;
    Ok(Claim {
        job_id: r.get(0)?,
        attempt_id: 0,
        number: 0,
        token: 0,
        started_at: now,
        kind: JobKind::parse(&kind).unwrap_or(JobKind::Generate),
        batch: r.get(2)?,
        item_id: r.get(3)?,
        repeat: r.get(13)?,
        model: model.to_string(),
        endpoint: String::new(),
        prompt: r.get(4)?,
        vars: serde_json::from_str(&vars).unwrap_or_default(),
        messages: messages.and_then(|m| serde_json::from_str(&m).ok()),
        options: options
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or_default(),
        charged: r.get(6)?,
        max_attempts: r.get(7)?,
        parent_id: r.get(8)?,
        rubric_id: r.get(9)?,
        parent_output: r.get(10)?,
    })
}

/// Records an attempt's end and moves its job, fenced by the lease token: if the job is no
/// longer ours (reaped meanwhile), nothing is written and false is returned. A finished
/// grade job's verdict goes to `grades`.
pub fn finish(tx: &Transaction, p: &FinishParams) -> Result<bool> {
    let (claim, f, next) = (p.claim, p.finish, p.next);
    let now = now_ms();
    let charged = f.outcome.charged() as i64;
    let not_before = match next {
        Next::Retry(delay) => now + delay,
        _ => 0,
    };
    let last_error = match next {
        Next::Done => None,
        _ => f
            .error
            .clone()
            .or_else(|| Some(f.outcome.as_str().to_string())),
    };
    let changed = tx
        .prepare_cached(
            "UPDATE jobs SET state = ?1, charged = charged + ?2, not_before = ?3, runner_id = NULL,
                    lease_token = NULL, lease_expires_at = NULL, last_outcome = ?4,
                    last_error = ?5, updated_at = ?6
             WHERE id = ?7 AND state = 'running' AND lease_token = ?8",
        )?
        .execute(params![
            next.state().as_str(),
            charged,
            not_before,
            f.outcome.as_str(),
            last_error,
            now,
            claim.job_id,
            claim.token
        ])?;
    if changed == 0 {
        return already_ended_so(tx, claim, f);
    }
    // finished_at can never precede started_at, whatever the wall clock did meanwhile.
    let finished_at = now.max(claim.started_at);
    let m = f.metrics.clone().unwrap_or_default();
    tx.prepare_cached(
        "UPDATE attempts SET finished_at = ?1, duration_ms = ?2, outcome = ?3, charged = ?4,
                exit_code = ?5, signal = ?6, http_status = ?7, output = ?8, reasoning = ?9,
                raw_output = ?10, stderr = ?11, error = ?12, timings = ?13, ttft_ms = ?15,
                tpot_ms = ?16, e2e_ms = ?17, output_tokens = ?18, max_gap_ms = ?19,
                cache_key = ?20, cached_from = ?21
         WHERE id = ?14 AND outcome IS NULL",
    )?
    .execute(params![
        finished_at,
        f.duration_ms,
        f.outcome.as_str(),
        charged,
        f.exit_code,
        f.signal,
        f.http_status,
        f.output,
        f.reasoning,
        f.raw_output,
        f.stderr,
        f.error,
        f.stored_timings().map(|t| t.to_string()),
        claim.attempt_id,
        m.ttft_ms,
        m.tpot_ms,
        m.e2e_ms,
        m.output_tokens,
        m.max_gap_ms,
        f.cache_key,
        f.cached_from,
    ])?;
    if next == Next::Done && claim.kind == JobKind::Grade {
        record_grade(tx, claim, f)?;
    }
    Ok(true)
}

/// A finish sent again (its first answer lost with the connection, on a networked store) is
/// the same finish: kept when this very attempt already ended with this outcome, so the runner
/// counts it once; nothing is written twice. A reaped attempt ended otherwise (`lost`).
fn already_ended_so(tx: &Transaction, claim: &Claim, f: &Finish) -> Result<bool> {
    let ended: Option<Option<String>> = tx
        .prepare_cached("SELECT outcome FROM attempts WHERE id = ?1")?
        .query_row([claim.attempt_id], |r| r.get(0))
        .optional()?;
    Ok(ended.flatten().as_deref() == Some(f.outcome.as_str()))
}

/// Stores the verdict of a finished grade job.
pub fn record_grade(tx: &Transaction, claim: &Claim, f: &Finish) -> Result<()> {
    let v = f.verdict.clone().unwrap_or(Value::Null);
    tx.prepare_cached(
        "INSERT OR REPLACE INTO grades (job_id, graded_job_id, attempt_id, grader, pass, score, reason, fields)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        claim.job_id,
        claim.parent_id,
        claim.attempt_id,
        claim.model,
        v.get("pass").and_then(Value::as_bool).map(i64::from),
        v.get("score").and_then(Value::as_f64),
        v.get("reason").and_then(Value::as_str),
        v.get("fields")
            .map(Value::to_string)
            .unwrap_or_else(|| "{}".into()),
    ])?;
    Ok(())
}

/// Running jobs not held by `except_runner`, with their runner's record.
pub fn find_stuck(conn: &Connection, except_runner: Option<i64>) -> Result<Vec<StuckJob>> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "SELECT j.id, j.model, j.batch, j.runner_id, j.lease_expires_at, j.lease_token,
                j.attempt_id, j.max_attempts, r.id, r.host, r.pid, r.pid_start, r.boot_id,
                r.stopped_at
         FROM jobs j LEFT JOIN runners r ON r.id = j.runner_id
         WHERE j.state = 'running' AND j.runner_id IS NOT ?1",
    )?;
    let rows = stmt.query_map([except_runner], |r| {
        let runner = match r.get::<_, Option<i64>>(8)? {
            Some(id) => Some(RunnerRecord {
                id,
                host: r.get(9)?,
                pid: r.get(10)?,
                pid_start: r.get(11)?,
                boot_id: r.get(12)?,
                stopped: r.get::<_, Option<i64>>(13)?.is_some(),
            }),
            None => None,
        };
        Ok(StuckJob {
            job_id: r.get(0)?,
            model: r.get(1)?,
            batch: r.get(2)?,
            runner_id: r.get(3)?,
            lease_expired_ms: now - r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            token: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
            attempt_id: r.get(6)?,
            max_attempts: r.get(7)?,
            runner,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Puts stuck jobs back: the attempt ends `lost`, not charged, and the job goes back to
/// pending — or to failed once it has been lost more times than its attempt budget, so a
/// job that kills every runner that takes it still ends. Fenced by token.
pub fn rescue(tx: &Transaction, jobs: &[Rescue]) -> Result<Vec<(usize, JobState)>> {
    let now = now_ms();
    let mut rescued = Vec::new();
    let mut losses =
        tx.prepare_cached("SELECT COUNT(*) FROM attempts WHERE job_id = ?1 AND outcome = 'lost'")?;
    for (i, o) in jobs.iter().enumerate() {
        let budget = match o.max_attempts {
            Some(b) => b,
            None => super::catalog::model(tx, &o.model)?.max_attempts,
        };
        let lost_before: i64 = losses.query_row([o.job_id], |r| r.get(0))?;
        let state = if lost_before >= budget {
            JobState::Failed
        } else {
            JobState::Pending
        };
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, runner_id = NULL, lease_token = NULL,
                    lease_expires_at = NULL, last_outcome = 'lost', last_error = ?2, updated_at = ?3
             WHERE id = ?4 AND state = 'running' AND lease_token IS ?5",
            params![state.as_str(), o.error, now, o.job_id, o.token],
        )?;
        if changed == 0 {
            continue;
        }
        if let Some(aid) = o.attempt_id {
            tx.execute(
                "UPDATE attempts SET outcome = 'lost', charged = 0, error = ?1,
                        finished_at = MAX(?2, started_at), duration_ms = MAX(?2, started_at) - started_at
                 WHERE id = ?3 AND outcome IS NULL",
                params![o.error, now, aid],
            )?;
        }
        rescued.push((i, state));
    }
    Ok(rescued)
}

/// Marks runners stopped as `died` (at their last heartbeat or now, the later).
pub fn mark_runners_died(tx: &Transaction, runner_ids: &[i64]) -> Result<()> {
    let now = now_ms();
    let mut mark = tx.prepare_cached(
        "UPDATE runners SET stopped_at = MAX(?1, heartbeat_at), stop_reason = 'died'
         WHERE id = ?2 AND stopped_at IS NULL",
    )?;
    for id in runner_ids {
        mark.execute(params![now, id])?;
    }
    Ok(())
}

/// Puts failed and cancelled jobs matching the filter back to pending, each with `extra`
/// more attempts (default: a fresh budget of its model's max attempts). Returns their ids.
pub fn resume(tx: &Transaction, p: &ResumeParams) -> Result<Vec<i64>> {
    let (cond, mut args) = p.filter.sql("j");
    let mut sql = format!("SELECT j.id FROM jobs j WHERE j.state IN ('failed', 'cancelled'){cond}");
    if let Some(o) = p.outcome {
        sql.push_str(" AND j.last_outcome = ?");
        args.push(SqlValue::Text(o.as_str().into()));
    }
    sql.push_str(" ORDER BY j.id");
    let ids: Vec<i64> = tx
        .prepare(&sql)?
        .query_map(params_from_iter(args), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if p.dry_run {
        return Ok(ids);
    }
    let mut upd = tx.prepare(
        "UPDATE jobs SET state = 'pending', not_before = 0, updated_at = ?1,
                max_attempts = charged + COALESCE(?2,
                    (SELECT max_attempts FROM models m WHERE m.name = jobs.model), ?3)
         WHERE id = ?4 AND state IN ('failed', 'cancelled')",
    )?;
    let now = now_ms();
    for id in &ids {
        upd.execute(params![
            now,
            p.extra_attempts,
            crate::models::DEFAULT_MAX_ATTEMPTS,
            id
        ])
        .with_context(|| format!("cannot resume job {id}"))?;
    }
    Ok(ids)
}

/// Puts every job a runner still holds back to pending, uncharged, its attempt `interrupted`:
/// the last step of a runner stopping on an error, so nothing it held waits to be reaped.
pub fn release_runner(tx: &Transaction, runner_id: i64) -> Result<usize> {
    let now = now_ms();
    tx.execute(
        "UPDATE attempts SET outcome = 'interrupted', charged = 0,
                error = 'runner stopped on an error',
                finished_at = MAX(?1, started_at), duration_ms = MAX(?1, started_at) - started_at
         WHERE outcome IS NULL AND id IN
               (SELECT attempt_id FROM jobs WHERE runner_id = ?2 AND state = 'running')",
        params![now, runner_id],
    )?;
    let n = tx.execute(
        "UPDATE jobs SET state = 'pending', runner_id = NULL, lease_token = NULL,
                lease_expires_at = NULL, last_outcome = 'interrupted',
                last_error = 'runner stopped on an error', updated_at = ?1
         WHERE runner_id = ?2 AND state = 'running'",
        params![now, runner_id],
    )?;
    Ok(n)
}
