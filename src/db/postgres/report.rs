//! Report rows from PostgreSQL, with the same numbers as the SQLite engine's
//! (`src/db/sqlite/report.rs`) for the same rows: integer sums and counts come back as
//! `bigint`, means are `SUM::float8 / COUNT` (the division SQLite does), text is ordered byte
//! by byte (`COLLATE "C"`, SQLite's BINARY), and times are the database's clock.

use anyhow::Result;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet};

use super::queue::Params;
use crate::db::report::*;
use crate::db::store::{Filter, RunnerRecord};
use crate::domain::{JobState, Outcome};

/// ` AND …` conditions of a filter on the table under `alias`, whose job id column is
/// `id_col` (`id` on jobs, `job_id` on attempts).
pub fn scope_on(filter: &Filter, alias: &str, id_col: &str, p: &mut Params) -> String {
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
    if let Some(ids) = &filter.ids {
        sql.push_str(&format!(
            " AND {alias}.{id_col} = ANY({}::bigint[])",
            p.add(ids.clone())
        ));
    }
    sql
}

/// The scope on the attempts under `alias`: their jobs in the filter, started since `since_ms`.
pub fn attempts_in(scope: &AttemptScope, alias: &str, p: &mut Params) -> String {
    let mut sql = scope_on(&scope.filter, alias, "job_id", p);
    if let Some(since) = scope.since_ms {
        sql.push_str(&format!(" AND {alias}.started_at >= {}", p.add(since)));
    }
    sql
}

/// The scope on the jobs under `alias`, with `since_ms` on their time column `col`.
pub fn jobs_in(scope: &AttemptScope, alias: &str, col: &str, p: &mut Params) -> String {
    let mut sql = scope_on(&scope.filter, alias, "id", p);
    if let Some(since) = scope.since_ms {
        sql.push_str(&format!(" AND {alias}.{col} >= {}", p.add(since)));
    }
    sql
}

/// A number in an attempt's timings JSON (text, as on SQLite), NULL when absent.
pub fn timing(field: &str) -> String {
    format!("(a.timings::jsonb ->> '{field}')::numeric")
}

/// The group's key expressions, and the same ordered as SQLite orders text.
pub fn keys(by: &[GroupKey]) -> (String, String) {
    let list = by.iter().map(|k| k.expr()).collect::<Vec<_>>().join(", ");
    let order = by
        .iter()
        .map(|k| format!("{} COLLATE \"C\"", k.expr()))
        .collect::<Vec<_>>()
        .join(", ");
    (list, order)
}

/// The first `k` columns of a row: the group it belongs to.
pub fn group_key(r: &postgres::Row, k: usize) -> Vec<String> {
    (0..k).map(|i| r.get::<_, String>(i)).collect()
}

/// The database's clock (ms since the epoch).
pub fn clock(c: &mut Client) -> Result<i64> {
    Ok(c.query_one("SELECT llmbatch_now_ms()", &[])?.get(0))
}

/// Distinct `model` values of `table` rows matching `cond`, walking an index that leads on
/// them (after `cond`'s equality): one probe per model, not a scan of every row.
fn distinct_models(c: &mut Client, table: &str, cond: &str) -> Result<Vec<String>> {
    let sql = format!(
        "WITH RECURSIVE m(x) AS (
             SELECT (SELECT MIN(model) FROM {table} WHERE true{cond})
             UNION ALL
             SELECT (SELECT MIN(model) FROM {table} WHERE model > m.x{cond}) FROM m WHERE m.x IS NOT NULL)
         SELECT x FROM m WHERE x IS NOT NULL"
    );
    Ok(c.query(&sql, &[])?.iter().map(|r| r.get(0)).collect())
}

pub fn models_in_scope(c: &mut Client, filter: &Filter) -> Result<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    if !filter.models.is_empty() {
        names.extend(filter.models.iter().cloned());
    } else {
        names.extend(
            c.query("SELECT name FROM models", &[])?
                .iter()
                .map(|r| r.get::<_, String>(0)),
        );
        names.extend(distinct_models(c, "attempts", "")?);
        for state in ["pending", "running", "done", "failed", "cancelled"] {
            names.extend(distinct_models(
                c,
                "jobs",
                &format!(" AND state = '{state}'"),
            )?);
        }
    }
    if filter.batch.is_none() && filter.ids.is_none() && filter.models.is_empty() {
        return Ok(names.into_iter().collect());
    }
    // Keep the models with jobs in scope (a configured model with none is left out).
    let mut p = Params::default();
    let n = p.add(names.into_iter().collect::<Vec<_>>());
    let cond = scope_on(filter, "j", "id", &mut p);
    let sql = format!(
        "SELECT m.name FROM unnest({n}::text[]) AS m(name)
         WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.model = m.name{cond})"
    );
    let mut kept: Vec<String> = c.query(&sql, &p.refs())?.iter().map(|r| r.get(0)).collect();
    kept.sort();
    Ok(kept)
}

const PROMPT: &str = "COALESCE((a.timings::jsonb ->> 'prompt_tokens')::numeric, (a.timings::jsonb ->> 'prompt_eval_count')::numeric, 0)";
const OUTPUT: &str = "COALESCE((a.timings::jsonb ->> 'completion_tokens')::numeric, (a.timings::jsonb ->> 'eval_count')::numeric, 0)";

pub fn token_sums(c: &mut Client, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<TokenSum>> {
    let (list, order) = keys(by);
    let model_at = by
        .iter()
        .position(|k| *k == GroupKey::Model)
        .expect("cost groups include the model");
    let mut p = Params::default();
    let cond = attempts_in(scope, "a", &mut p);
    let sql = format!(
        "SELECT {list}, COUNT(*), COUNT(DISTINCT CASE WHEN a.charged = 1 THEN a.job_id END),
                SUM({PROMPT})::bigint, SUM({OUTPUT})::bigint
         FROM attempts a WHERE a.outcome IS NOT NULL AND a.outcome <> 'cached'{cond}
         GROUP BY {list} ORDER BY {order}"
    );
    let k = by.len();
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| {
            let key = group_key(r, k);
            TokenSum {
                model: key[model_at].clone(),
                key,
                attempts: r.get(k),
                jobs: r.get(k + 1),
                prompt_tokens: r.get(k + 2),
                output_tokens: r.get(k + 3),
            }
        })
        .collect())
}

pub fn outcome_counts(
    c: &mut Client,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<Vec<OutcomeCounts>> {
    let k = by.len();
    let (list, _) = keys(by);
    let mut p = Params::default();
    let cond = attempts_in(scope, "a", &mut p);
    let mut groups: BTreeMap<Vec<String>, ([i64; Outcome::ALL.len()], i64)> = BTreeMap::new();
    let sql = format!(
        "SELECT {list}, a.outcome, COUNT(*) FROM attempts a
         WHERE a.outcome IS NOT NULL{cond} GROUP BY {list}, a.outcome"
    );
    for r in c.query(&sql, &p.refs())? {
        let outcome: &str = r.get(k);
        if let Some(i) = Outcome::ALL.iter().position(|o| o.as_str() == outcome) {
            groups.entry(group_key(&r, k)).or_default().0[i] += r.get::<_, i64>(k + 1);
        }
    }
    let sql = format!(
        "SELECT {list}, COUNT(*) FROM attempts a
         WHERE a.timings IS NOT NULL AND (a.timings::jsonb ->> 'done_reason') = 'length'{cond}
         GROUP BY {list}"
    );
    for r in c.query(&sql, &p.refs())? {
        groups.entry(group_key(&r, k)).or_default().1 = r.get(k);
    }
    Ok(groups
        .into_iter()
        .map(|(key, (counts, truncated))| OutcomeCounts {
            key,
            counts,
            truncated,
        })
        .collect())
}

/// The listing of jobs in scope (updated since `since_ms`), in a state, last ended so; by id.
pub fn jobs_sql(
    scope: &AttemptScope,
    state: Option<JobState>,
    outcome: Option<Outcome>,
    p: &mut Params,
) -> String {
    let mut cond = jobs_in(scope, "j", "updated_at", p);
    if let Some(s) = state {
        cond.push_str(&format!(" AND j.state = {}", p.add(s.as_str().to_string())));
    }
    if let Some(o) = outcome {
        cond.push_str(&format!(
            " AND j.last_outcome = {}",
            p.add(o.as_str().to_string())
        ));
    }
    format!(
        "SELECT j.id, j.batch, j.item_id, j.model, j.kind, j.state, j.attempts, j.last_outcome,
                j.last_error, j.updated_at, j.repeat, a.cache_key, a.cached_from
         FROM jobs j LEFT JOIN attempts a ON a.id = j.attempt_id
         WHERE true{cond} ORDER BY j.id"
    )
}

pub fn job_row(r: &postgres::Row) -> JobRow {
    JobRow {
        id: r.get(0),
        batch: r.get(1),
        item_id: r.get(2),
        model: r.get(3),
        kind: r.get(4),
        state: r.get(5),
        attempts: r.get(6),
        last_outcome: r.get(7),
        last_error: r.get(8),
        updated_at: r.get(9),
        repeat: r.get(10),
        cache_key: r.get(11),
        cached_from: r.get(12),
    }
}

pub fn generates(c: &mut Client, filter: &Filter, model: &str) -> Result<bool> {
    let mut p = Params::default();
    let m = p.add(model.to_string());
    let cond = scope_on(filter, "j", "id", &mut p);
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.model = {m} AND j.kind = 'generate'{cond})"
    );
    Ok(c.query_one(&sql, &p.refs())?.get(0))
}

pub fn flow(c: &mut Client, filter: &Filter, since: i64) -> Result<BTreeMap<String, ModelFlow>> {
    let mut rows: BTreeMap<String, ModelFlow> = BTreeMap::new();
    let mut p = Params::default();
    let s = p.add(since);
    let cond = scope_on(filter, "a", "job_id", &mut p);
    let sql = format!(
        "SELECT a.model, COUNT(*), MIN(a.started_at), SUM({PROMPT} + {OUTPUT})::bigint
         FROM attempts a WHERE a.finished_at >= {s} AND a.outcome = 'ok'{cond} GROUP BY a.model"
    );
    for r in c.query(&sql, &p.refs())? {
        let row = rows.entry(r.get(0)).or_default();
        row.done = r.get(1);
        row.first_start = r.get(2);
        row.tokens = r.get::<_, Option<i64>>(3).unwrap_or(0);
    }
    let mut p = Params::default();
    let cond = scope_on(filter, "j", "id", &mut p);
    let sql = format!(
        "SELECT j.model, COUNT(*) FILTER (WHERE j.state = 'pending'),
                COUNT(*) FILTER (WHERE j.state = 'running')
         FROM jobs j WHERE j.state IN ('pending', 'running'){cond} GROUP BY j.model"
    );
    for r in c.query(&sql, &p.refs())? {
        let row = rows.entry(r.get(0)).or_default();
        row.pending = r.get(1);
        row.running = r.get(2);
    }
    Ok(rows)
}

/// SQL of each phase's value in ms: load, prompt evaluation, generation, client overhead
/// (float8 throughout, as SQLite's REAL arithmetic).
fn phases() -> [String; 4] {
    let f = |field: &str| format!("{}::float8 / 1e6::float8", timing(field));
    [
        f("load_duration"),
        f("prompt_eval_duration"),
        f("eval_duration"),
        format!("a.duration_ms::float8 - {}", f("total_duration")),
    ]
}

pub fn phase_samples(
    c: &mut Client,
    scope: &AttemptScope,
    by: &[GroupKey],
    cold_load_ms: f64,
) -> Result<Vec<PhaseSample>> {
    let k = by.len();
    let key_select: String = by.iter().map(|key| format!("{}, ", key.expr())).collect();
    let mut p = Params::default();
    let cold = p.add(cold_load_ms);
    let cond = attempts_in(scope, "a", &mut p);
    let metrics: String = phases().iter().map(|e| format!(", {e}")).collect();
    let load = timing("load_duration");
    let sql = format!(
        "SELECT {key_select}
                COALESCE({load}::float8, 0) / 1e6::float8 > {cold}::float8,
                {}::float8, {}::float8{metrics}
         FROM attempts a
         WHERE a.outcome = 'ok' AND a.timings IS NOT NULL
           AND {} IS NOT NULL{cond}
         ORDER BY a.model COLLATE \"C\", a.id",
        timing("eval_count"),
        timing("eval_duration"),
        timing("total_duration"),
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| {
            let mut phases_ms = [None; 4];
            for (i, ph) in phases_ms.iter_mut().enumerate() {
                *ph = r.get(k + 3 + i);
            }
            PhaseSample {
                key: group_key(r, k),
                cold: r.get(k),
                eval_tokens: r.get(k + 1),
                eval_ns: r.get(k + 2),
                phases_ms,
            }
        })
        .collect())
}

/// Per model: the backend's own generation tokens and seconds (Ollama's `eval_count` /
/// `eval_duration`) where it reports them, else a streamed answer's tokens after the first
/// and its time from first token to end (e2e − TTFT), as the SQLite engine sums them.
pub fn generation_sums(c: &mut Client, scope: &AttemptScope) -> Result<Vec<GenerationSums>> {
    let mut p = Params::default();
    let cond = attempts_in(scope, "a", &mut p);
    let (count, dur) = (timing("eval_count"), timing("eval_duration"));
    let ollama = format!("{count} IS NOT NULL AND COALESCE({dur}, 0) > 0");
    // As on SQLite: exact sums per branch, Ollama's nanoseconds divided once.
    let sql = format!(
        "SELECT model, SUM(t)::float8, SUM(s) FROM (
             SELECT a.model, SUM({count}) AS t, SUM({dur})::float8 / 1e9::float8 AS s
             FROM attempts a
             WHERE a.outcome = 'ok' AND a.timings IS NOT NULL AND {ollama}{cond}
             GROUP BY a.model
             UNION ALL
             SELECT a.model, SUM(a.output_tokens - 1)::numeric,
                    SUM(a.e2e_ms - a.ttft_ms)::float8 / 1e3::float8
             FROM attempts a
             WHERE a.ttft_ms IS NOT NULL AND a.outcome = 'ok' AND a.output_tokens > 1
               AND a.e2e_ms > a.ttft_ms AND NOT ({ollama}){cond}
             GROUP BY a.model
         ) g
         GROUP BY model ORDER BY model COLLATE \"C\""
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| GenerationSums {
            model: r.get(0),
            tokens: r.get(1),
            secs: r.get(2),
        })
        .collect())
}

pub fn failed_jobs(
    c: &mut Client,
    scope: &AttemptScope,
    cap: usize,
) -> Result<(i64, Vec<FailedJob>)> {
    let mut p = Params::default();
    let cond = jobs_in(scope, "j", "updated_at", &mut p);
    let total: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM jobs j WHERE j.state = 'failed'{cond}"),
            &p.refs(),
        )?
        .get(0);
    let sql = format!(
        "SELECT j.id, j.model, j.batch, j.item_id, j.last_outcome, j.last_error FROM jobs j
         WHERE j.state = 'failed'{cond} ORDER BY j.updated_at DESC, j.id DESC LIMIT {cap}"
    );
    let rows = c
        .query(&sql, &p.refs())?
        .iter()
        .map(|r| FailedJob {
            id: r.get(0),
            model: r.get(1),
            batch: r.get(2),
            item_id: r.get(3),
            outcome: r.get(4),
            error: r.get(5),
        })
        .collect();
    Ok((total, rows))
}

pub fn done_span(c: &mut Client, filter: &Filter) -> Result<Option<(i64, i64)>> {
    let mut p = Params::default();
    let cond = scope_on(filter, "a", "job_id", &mut p);
    let r = c.query_one(
        &format!(
            "SELECT MIN(a.finished_at), MAX(a.finished_at) FROM attempts a
             WHERE a.outcome = 'ok'{cond}"
        ),
        &p.refs(),
    )?;
    Ok(r.get::<_, Option<i64>>(0).zip(r.get::<_, Option<i64>>(1)))
}

pub fn done_per_interval(
    c: &mut Client,
    filter: &Filter,
    start: i64,
    step_ms: i64,
    (lo, hi): (i64, i64),
) -> Result<Vec<DoneInBucket>> {
    let mut p = Params::default();
    let (s, step, lo, hi) = (p.add(start), p.add(step_ms), p.add(lo), p.add(hi));
    let cond = scope_on(filter, "a", "job_id", &mut p);
    // bigint division truncates toward zero, as SQLite's integer division.
    let sql = format!(
        "SELECT a.model, (a.finished_at - {s}) / {step} AS bucket, COUNT(*)
         FROM attempts a
         WHERE a.finished_at >= {lo} AND a.finished_at <= {hi} AND a.outcome = 'ok'{cond}
         GROUP BY a.model, bucket ORDER BY a.model COLLATE \"C\", bucket"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| DoneInBucket {
            model: r.get(0),
            bucket: r.get(1),
            done: r.get(2),
        })
        .collect())
}

/// Where a job state is counted in [`ModelStatus::counts`].
fn state_slot(state: &str) -> Option<usize> {
    ["pending", "", "running", "done", "failed", "cancelled"]
        .iter()
        .position(|s| !s.is_empty() && *s == state)
}

pub fn status(c: &mut Client, scope: &AttemptScope) -> Result<(Vec<(String, ModelStatus)>, i64)> {
    let now = clock(c)?;
    let mut p = Params::default();
    let cond = jobs_in(scope, "j", "created_at", &mut p);
    let mut models: BTreeMap<String, ModelStatus> = BTreeMap::new();
    let sql =
        format!("SELECT j.model, j.state, COUNT(*) FROM jobs j WHERE true{cond} GROUP BY 1, 2");
    for r in c.query(&sql, &p.refs())? {
        if let Some(i) = state_slot(r.get(1)) {
            models.entry(r.get(0)).or_default().counts[i] += r.get::<_, i64>(2);
        }
    }
    // Pending jobs whose parent is not done yet wait (grade jobs).
    let sql = format!(
        "SELECT j.model, COUNT(*) FROM jobs j JOIN jobs p ON p.id = j.parent_id
         WHERE j.state = 'pending' AND p.state <> 'done'{cond} GROUP BY j.model"
    );
    for r in c.query(&sql, &p.refs())? {
        let waiting: i64 = r.get(1);
        let counts = &mut models.entry(r.get(0)).or_default().counts;
        counts[0] -= waiting;
        counts[1] += waiting;
    }
    let sql = format!(
        "SELECT j.model, MIN(a.started_at) FROM jobs j JOIN attempts a ON a.id = j.attempt_id
         WHERE j.state = 'running'{cond} GROUP BY j.model"
    );
    for r in c.query(&sql, &p.refs())? {
        models.entry(r.get(0)).or_default().oldest_running = r.get(1);
    }
    Ok((models.into_iter().collect(), now))
}

pub fn cached_done(c: &mut Client, scope: &AttemptScope) -> Result<i64> {
    let mut p = Params::default();
    let cond = jobs_in(scope, "j", "created_at", &mut p);
    let sql = format!(
        "SELECT COUNT(*) FROM jobs j WHERE j.state = 'done' AND j.last_outcome = 'cached'{cond}"
    );
    Ok(c.query_one(&sql, &p.refs())?.get(0))
}

pub fn running_jobs(c: &mut Client, scope: &AttemptScope, limit: usize) -> Result<Vec<RunningJob>> {
    let now = clock(c)?;
    let mut p = Params::default();
    let cond = jobs_in(scope, "j", "created_at", &mut p);
    let sql = format!(
        "SELECT j.id, j.model, j.batch, j.item_id, a.number, r.host, r.pid, a.started_at,
                j.lease_expires_at
         FROM jobs j JOIN attempts a ON a.id = j.attempt_id LEFT JOIN runners r ON r.id = j.runner_id
         WHERE j.state = 'running'{cond} ORDER BY a.started_at, j.id LIMIT {limit}"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| {
            let host: Option<String> = r.get(5);
            let pid: Option<i64> = r.get(6);
            RunningJob {
                id: r.get(0),
                model: r.get(1),
                batch: r.get(2),
                item_id: r.get(3),
                attempt: r.get(4),
                runner: host.zip(pid),
                started_at: r.get(7),
                lease_expires_at: r.get(8),
                now,
            }
        })
        .collect())
}

pub fn runners(
    c: &mut Client,
    since_ms: Option<i64>,
    limit: Option<usize>,
) -> Result<Vec<RunnerRow>> {
    let now = clock(c)?;
    let limit = limit.map(|l| l as i64);
    let rows = c.query(
        "SELECT r.id, r.host, r.pid, r.pid_start, r.boot_id, r.started_at, r.heartbeat_at,
                r.stopped_at, r.stop_reason,
                (SELECT COUNT(*) FROM jobs j WHERE j.runner_id = r.id AND j.state = 'running')
         FROM runners r WHERE r.stopped_at IS NULL OR r.heartbeat_at >= $1
         ORDER BY r.id DESC LIMIT $2",
        &[&since_ms.unwrap_or(i64::MIN), &limit],
    )?;
    Ok(rows
        .iter()
        .map(|r| RunnerRow {
            record: RunnerRecord {
                id: r.get(0),
                host: r.get(1),
                pid: r.get(2),
                pid_start: r.get(3),
                boot_id: r.get(4),
                stopped: r.get::<_, Option<i64>>(7).is_some(),
            },
            started_at: r.get(5),
            heartbeat_at: r.get(6),
            stop_reason: r.get(8),
            jobs_held: r.get(9),
            now,
        })
        .collect())
}

pub fn outcomes_since(c: &mut Client, model: &str, outcome: Outcome, since_ms: i64) -> Result<i64> {
    Ok(c.query_one(
        "SELECT COUNT(*) FROM attempts a
         WHERE a.model = $1 AND a.outcome = $2 AND a.started_at >= $3",
        &[&model, &outcome.as_str(), &since_ms],
    )?
    .get(0))
}
