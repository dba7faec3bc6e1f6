//! The queue on PostgreSQL: every transition of `jobs.state`, each one statement (or one
//! short transaction) judged on the database's clock. Claims lock with `FOR UPDATE SKIP
//! LOCKED` inside a CTE, never `IN (subquery … LIMIT)` (PostgreSQL BUG #15715: a nested-loop
//! plan may update more rows than the limit). Every finish and reap is fenced by lease token.

use anyhow::{Context, Result};
use postgres::types::ToSql;
use postgres::GenericClient;
use serde_json::Value;

use crate::db::jobs::{Claim, Filter, Finish, Next, Orphan, Outcome};
use crate::util::now_ms;

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

/// ` AND …` conditions of a filter on the jobs table under `alias` (job id column `id_col`).
pub fn scope(filter: &Filter, alias: &str, id_col: &str, p: &mut Params) -> String {
    let mut sql = String::new();
    if let Some(b) = &filter.batch {
        sql.push_str(&format!(" AND {alias}.batch = {}", p.add(b.clone())));
    }
    if !filter.models.is_empty() {
        sql.push_str(&format!(
            " AND {alias}.model = ANY({}::text[])",
            p.add(filter.models.clone())
        ));
    }
    if filter.ids {
        sql.push_str(&format!(
            " AND {alias}.{id_col} IN (SELECT id FROM pg_temp.scope_ids)"
        ));
    }
    sql
}

/// Loads job ids into this connection's `pg_temp.scope_ids`; an id with no job is a usage
/// error listing them.
pub fn install_ids(c: &mut impl GenericClient, ids: &[i64]) -> Result<()> {
    c.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS scope_ids (id BIGINT PRIMARY KEY); DELETE FROM pg_temp.scope_ids;",
    )?;
    c.execute(
        "INSERT INTO pg_temp.scope_ids SELECT DISTINCT unnest($1::bigint[]) ON CONFLICT DO NOTHING",
        &[&ids],
    )?;
    let unknown: Vec<i64> = c
        .query(
            "SELECT s.id FROM pg_temp.scope_ids s WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = s.id) ORDER BY s.id",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !unknown.is_empty() {
        let shown: Vec<String> = unknown.iter().take(20).map(i64::to_string).collect();
        let more = if unknown.len() > 20 {
            format!(" and {} more", unknown.len() - 20)
        } else {
            String::new()
        };
        crate::usage!(
            "{} unknown job id(s) in the ids file: {}{more}",
            unknown.len(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// Registers a runner; its start and heartbeat are the database's time.
pub fn register(c: &mut impl GenericClient) -> Result<i64> {
    let pid = std::process::id() as i64;
    let row = c
        .query_one(
            "INSERT INTO runners (host, pid, pid_start, boot_id, started_at, heartbeat_at)
             VALUES ($1, $2, $3, $4, llmbatch_now_ms(), llmbatch_now_ms()) RETURNING id",
            &[
                &crate::util::hostname(),
                &pid,
                &crate::util::pid_start(pid),
                &crate::util::boot_id(),
            ],
        )
        .context("cannot register this runner")?;
    Ok(row.get(0))
}

pub fn stop_runner(c: &mut impl GenericClient, runner_id: i64, reason: &str) -> Result<()> {
    c.execute(
        "UPDATE runners SET stopped_at = llmbatch_now_ms(), stop_reason = $1 WHERE id = $2",
        &[&reason, &runner_id],
    )?;
    Ok(())
}

/// Renews the runner's heartbeat and the leases of its running jobs by `lease_ms` from the
/// database's now. False when the runner is no longer registered as live (found dead and
/// marked stopped by another host): then its leases are not renewed.
pub fn beat(c: &mut impl GenericClient, runner_id: i64, lease_ms: i64) -> Result<bool> {
    let row = c.query_one(
        "WITH r AS (UPDATE runners SET heartbeat_at = llmbatch_now_ms()
                    WHERE id = $1 AND stopped_at IS NULL RETURNING id),
              j AS (UPDATE jobs SET lease_expires_at = llmbatch_now_ms() + $2
                    WHERE runner_id = $1 AND state = 'running' AND EXISTS (SELECT 1 FROM r)
                    RETURNING id)
         SELECT (SELECT COUNT(*) FROM r)",
        &[&runner_id, &lease_ms],
    )?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Claims up to `endpoints.len()` runnable jobs of `model`, one per endpoint slot, in one
/// statement: rows locked with SKIP LOCKED in a CTE, then state, attempt number, lease token,
/// lease expiry (database time) and the attempt row written together.
pub fn claim(
    c: &mut impl GenericClient,
    runner_id: i64,
    model: &str,
    endpoints: &[String],
    timeout_s: f64,
    lease_ms: i64,
    filter: &Filter,
) -> Result<Vec<Claim>> {
    if endpoints.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Params::default();
    let m = p.add(model.to_string());
    let cond = scope(filter, "j", "id", &mut p);
    let limit = p.add(endpoints.len() as i64);
    let runner = p.add(runner_id);
    let tokens: Vec<i64> = endpoints
        .iter()
        .map(|_| fastrand::i64(1..i64::MAX))
        .collect();
    let tokens = p.add(tokens);
    let lease = p.add(lease_ms);
    let eps = p.add(endpoints.to_vec());
    let timeout = p.add(timeout_s);
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
                       j.item_id, j.model, j.charged, j.max_attempts, j.parent_id, j.rubric_id, s.slot
         ),
         recorded AS (
             INSERT INTO attempts (id, job_id, number, model, batch, runner_id, endpoint, timeout_s, started_at)
             SELECT attempt_id, id, attempts, model, batch, {runner},
                    NULLIF(({eps}::text[])[slot], ''), {timeout}, updated_at FROM taken
         )
         SELECT t.id, t.attempt_id, t.attempts, t.lease_token, t.updated_at, t.kind, t.batch,
                t.item_id, i.prompt, i.vars, t.charged, t.max_attempts, t.parent_id, t.rubric_id,
                pa.output, COALESCE(({eps}::text[])[t.slot], '')
         FROM taken t
         JOIN items i ON i.batch = t.batch AND i.item_id = t.item_id
         LEFT JOIN jobs pj ON pj.id = t.parent_id
         LEFT JOIN attempts pa ON pa.id = pj.attempt_id
         ORDER BY t.slot"
    );
    let rows = c.query(&sql, &p.refs())?;
    Ok(rows
        .iter()
        .map(|r| Claim {
            job_id: r.get(0),
            attempt_id: r.get(1),
            number: r.get(2),
            token: r.get(3),
            started_at: r.get(4),
            kind: r.get(5),
            batch: r.get(6),
            item_id: r.get(7),
            model: model.to_string(),
            endpoint: r.get(15),
            prompt: r.get(8),
            vars: serde_json::from_str(r.get::<_, &str>(9)).unwrap_or_default(),
            charged: r.get(10),
            max_attempts: r.get(11),
            parent_id: r.get(12),
            rubric_id: r.get(13),
            parent_output: r.get(14),
        })
        .collect())
}

/// Records an attempt's end and moves its job in one statement, fenced by the lease token:
/// if the job is no longer ours (reaped meanwhile), nothing is written and false is returned.
/// A retry's backoff counts from the database's now: only its length comes from this host.
pub fn finish(c: &mut impl GenericClient, claim: &Claim, f: &Finish, next: Next) -> Result<bool> {
    let charged = f.outcome.charged() as i64;
    let state = match next {
        Next::Done => "done",
        Next::Retry(_) => "pending",
        Next::Failed => "failed",
    };
    let delay: Option<i64> = match next {
        Next::Retry(t) => Some((t - now_ms()).max(0)),
        _ => None,
    };
    let last_error = match next {
        Next::Done => None,
        _ => f
            .error
            .clone()
            .or_else(|| Some(f.outcome.as_str().to_string())),
    };
    let timings = f.timings.as_ref().map(Value::to_string);
    let row = c.query_one(
        "WITH moved AS (
             UPDATE jobs SET state = $1, charged = charged + $2,
                    not_before = CASE WHEN $3::bigint IS NULL THEN 0 ELSE llmbatch_now_ms() + $3 END,
                    runner_id = NULL, lease_token = NULL, lease_expires_at = NULL,
                    last_outcome = $4, last_error = $5, updated_at = llmbatch_now_ms()
             WHERE id = $6 AND state = 'running' AND lease_token = $7
             RETURNING id
         ),
         recorded AS (
             UPDATE attempts SET finished_at = GREATEST(llmbatch_now_ms(), started_at),
                    duration_ms = $8, outcome = $4, charged = $2, exit_code = $9, signal = $10,
                    http_status = $11, output = $12, reasoning = $13, raw_output = $14,
                    stderr = $15, error = $16, timings = $17
             WHERE id = $18 AND outcome IS NULL AND EXISTS (SELECT 1 FROM moved)
             RETURNING id
         )
         SELECT (SELECT COUNT(*) FROM moved)",
        &[
            &state,
            &charged,
            &delay,
            &f.outcome.as_str(),
            &last_error,
            &claim.job_id,
            &claim.token,
            &f.duration_ms,
            &f.exit_code,
            &f.signal,
            &f.http_status,
            &f.output,
            &f.reasoning,
            &f.raw_output,
            &f.stderr,
            &f.error,
            &timings,
            &claim.attempt_id,
        ],
    )?;
    Ok(row.get::<_, i64>(0) > 0)
}

/// Finds orphans: running jobs whose lease expired on the database's clock, or whose runner is
/// known dead. Only a runner of this host and boot is judged by its process (gone, pid reused,
/// suspended); a runner anywhere else is judged by its lease alone, so a host whose clock is
/// off never reaps a live runner. Jobs of `self_runner` are never orphans.
pub fn find_orphans(c: &mut impl GenericClient, self_runner: Option<i64>) -> Result<Vec<Orphan>> {
    let rows = c.query(
        "SELECT j.id, j.model, j.batch, j.runner_id,
                llmbatch_now_ms() - COALESCE(j.lease_expires_at, 0), COALESCE(j.lease_token, 0),
                j.attempt_id, j.max_attempts, r.host, r.pid, r.pid_start, r.boot_id, r.stopped_at
         FROM jobs j LEFT JOIN runners r ON r.id = j.runner_id
         WHERE j.state = 'running' AND j.runner_id IS DISTINCT FROM $1",
        &[&self_runner],
    )?;
    let mut orphans = Vec::new();
    for r in rows {
        let mut o = Orphan {
            job_id: r.get(0),
            model: r.get(1),
            batch: r.get(2),
            runner_id: r.get(3),
            runner: String::new(),
            lease_expired_ms: r.get(4),
            reason: String::new(),
            token: r.get(5),
            attempt_id: r.get(6),
            max_attempts: r.get(7),
            leftovers: None,
        };
        let host: Option<String> = r.get(8);
        let pid: Option<i64> = r.get(9);
        let start: Option<String> = r.get(10);
        let boot: Option<String> = r.get(11);
        let stopped: Option<i64> = r.get(12);
        if let Some(reason) = orphan_reason(
            &mut o,
            host.as_deref(),
            pid,
            start.as_deref(),
            boot.as_deref(),
            stopped,
        ) {
            o.reason = reason;
            orphans.push(o);
        }
    }
    Ok(orphans)
}

/// Reaps orphans in one short transaction: the attempt ends `lost`, uncharged, and the job goes
/// back to pending (or to failed once lost more times than its budget). Fenced by token.
pub fn reap(c: &mut impl GenericClient, orphans: &[Orphan]) -> Result<Vec<(Orphan, &'static str)>> {
    let mut tx = c.transaction()?;
    let mut reaped = Vec::new();
    for o in orphans {
        let error = format!("lost: {}", o.reason);
        let row = tx.query_opt(
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
                &error,
                &o.token,
                &o.attempt_id,
            ],
        )?;
        if let Some(row) = row {
            let state: String = row.get(0);
            reaped.push((
                o.clone(),
                if state == "failed" {
                    "failed"
                } else {
                    "pending"
                },
            ));
        }
    }
    // A runner found dead here is marked stopped, so reports stop calling it live.
    for runner_id in orphans.iter().filter_map(|o| o.runner_id) {
        let row = tx.query_opt(
            "SELECT host, pid, pid_start, boot_id FROM runners WHERE id = $1 AND stopped_at IS NULL",
            &[&runner_id],
        )?;
        if let Some(r) = row {
            let (host, pid, start, boot): (String, i64, Option<String>, Option<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if crate::util::runner_life(&host, pid, start.as_deref(), boot.as_deref()).dead() {
                tx.execute(
                    "UPDATE runners SET stopped_at = GREATEST(llmbatch_now_ms(), heartbeat_at),
                            stop_reason = 'died' WHERE id = $1",
                    &[&runner_id],
                )?;
            }
        }
    }
    tx.commit()?;
    // What a dead local runner's attempts left running must not go on beside the retry.
    let mut tokens: Vec<&String> = orphans
        .iter()
        .filter_map(|o| o.leftovers.as_ref())
        .collect();
    tokens.sort();
    tokens.dedup();
    for token in tokens {
        let n = crate::exec::kill_leftovers(token);
        if n > 0 {
            log::warn!("killed {n} process(es) left running by dead runner {token}");
        }
    }
    Ok(reaped)
}

/// Why a running job is an orphan, if it is: its runner is unknown, stopped, or, on this host
/// and boot only, gone; or its lease expired on the database's clock while its runner is on
/// another host (or suspended here). A live runner of this host keeps its jobs.
fn orphan_reason(
    o: &mut Orphan,
    host: Option<&str>,
    pid: Option<i64>,
    start: Option<&str>,
    boot: Option<&str>,
    stopped: Option<i64>,
) -> Option<String> {
    use crate::util::RunnerLife;
    o.runner = match (host, pid) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        _ => "unknown".into(),
    };
    let pid_n = pid.unwrap_or(0);
    let life = host.map(|h| crate::util::runner_life(h, pid_n, start, boot));
    let expired = o.lease_expired_ms > 0;
    if pid.is_none() {
        Some("its runner is unknown".to_string())
    } else if stopped.is_some() {
        Some("its runner has stopped".to_string())
    } else if life == Some(RunnerLife::EarlierBoot) {
        Some("its runner belongs to an earlier boot".to_string())
    } else if life == Some(RunnerLife::Gone) {
        o.leftovers = Some(crate::util::runner_token(pid_n, start));
        Some(format!("its runner (pid {pid_n}) is gone"))
    } else if life.is_some_and(|l| l.holds_jobs(expired)) {
        None
    } else if expired {
        let who = match life {
            Some(RunnerLife::Suspended) => {
                format!("its runner (pid {pid_n}) is suspended and its ")
            }
            Some(RunnerLife::Remote) => format!(
                "its runner on {} sent no heartbeat and its ",
                host.unwrap_or("?")
            ),
            _ => "its ".to_string(),
        };
        Some(format!(
            "{who}lease expired {} ago",
            crate::util::human_secs(o.lease_expired_ms as f64 / 1000.0)
        ))
    } else {
        None
    }
}

/// Puts failed and cancelled jobs matching the filter back to pending, each with `extra` more
/// attempts (default: a fresh budget of its model's max attempts). Returns their ids.
pub fn resume(
    c: &mut impl GenericClient,
    filter: &Filter,
    outcome: Option<Outcome>,
    extra: Option<i64>,
    dry_run: bool,
) -> Result<Vec<i64>> {
    let mut p = Params::default();
    let cond = scope(filter, "j", "id", &mut p);
    let mut sql = format!("SELECT j.id FROM jobs j WHERE j.state IN ('failed', 'cancelled'){cond}");
    if let Some(o) = outcome {
        sql.push_str(&format!(
            " AND j.last_outcome = {}",
            p.add(o.as_str().to_string())
        ));
    }
    if dry_run {
        sql.push_str(" ORDER BY j.id");
        return Ok(c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect());
    }
    let e = p.add(extra);
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
    let row = c.query_one(
        "WITH held AS (
             UPDATE jobs SET state = 'pending', runner_id = NULL, lease_token = NULL,
                    lease_expires_at = NULL, last_outcome = 'interrupted',
                    last_error = 'runner stopped on an error', updated_at = llmbatch_now_ms()
             WHERE runner_id = $1 AND state = 'running'
             RETURNING attempt_id
         ),
         recorded AS (
             UPDATE attempts SET outcome = 'interrupted', charged = 0,
                    error = 'runner stopped on an error',
                    finished_at = GREATEST(llmbatch_now_ms(), started_at),
                    duration_ms = GREATEST(llmbatch_now_ms(), started_at) - started_at
             WHERE outcome IS NULL AND id IN (SELECT attempt_id FROM held)
         )
         SELECT COUNT(*) FROM held",
        &[&runner_id],
    )?;
    Ok(row.get::<_, i64>(0) as usize)
}

/// The earliest `not_before` of a pending job of `model` in scope, as a wait from now on the
/// database's clock (None: nothing pending).
pub fn next_ready_in(
    c: &mut impl GenericClient,
    model: &str,
    filter: &Filter,
) -> Result<Option<i64>> {
    let mut p = Params::default();
    let m = p.add(model.to_string());
    let cond = scope(filter, "j", "id", &mut p);
    let sql = format!(
        "SELECT MIN(j.not_before) - llmbatch_now_ms() FROM jobs j WHERE j.state = 'pending' AND j.model = {m}{cond}"
    );
    Ok(c.query_one(&sql, &p.refs())?.get(0))
}
