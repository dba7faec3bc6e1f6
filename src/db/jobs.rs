//! Every transition of `jobs.state` lives here, in SQL: claim, finish (fenced by lease
//! token), reap, resume. Nothing else writes a job's state.

use anyhow::{Context, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Transaction};
use serde_json::{Map, Value};

use crate::util::now_ms;

/// What happened in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Outcome {
    /// An answer
    Ok,
    /// No answer within the model's timeout: killed
    Timeout,
    /// The command exited non-zero
    Exit,
    /// Killed by a signal
    Crash,
    /// Could not start (bad command, bad URL); not retried
    Spawn,
    /// An HTTP error (5xx retried, 4xx not)
    Http,
    /// The server could not be reached; not charged
    Unavailable,
    /// No output
    Empty,
    /// A grader's answer could not be read
    Parse,
    /// The runner died; found by a reap
    Lost,
    /// The runner was stopped by a signal; not charged
    Interrupted,
    /// The server pushed back (429, 503, "server busy") or the quota ran out; not charged
    Throttled,
    /// A streamed answer went silent past the model's `--stall-timeout`.
    Stall,
    /// Answered from an earlier identical request (`run --cache`); not charged
    Cached,
}

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Outcome::Ok,
        Outcome::Timeout,
        Outcome::Exit,
        Outcome::Crash,
        Outcome::Spawn,
        Outcome::Http,
        Outcome::Unavailable,
        Outcome::Empty,
        Outcome::Parse,
        Outcome::Lost,
        Outcome::Interrupted,
        Outcome::Throttled,
        Outcome::Stall,
        Outcome::Cached,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Exit => "exit",
            Outcome::Crash => "crash",
            Outcome::Spawn => "spawn",
            Outcome::Http => "http",
            Outcome::Unavailable => "unavailable",
            Outcome::Empty => "empty",
            Outcome::Parse => "parse",
            Outcome::Lost => "lost",
            Outcome::Interrupted => "interrupted",
            Outcome::Throttled => "throttled",
            Outcome::Stall => "stall",
            Outcome::Cached => "cached",
        }
    }

    /// A server that is down or pushing back, or a runner that was stopped, is not the job's
    /// fault; nor is a runner that died (`lost`): its claims ahead never started, and a
    /// database it could no longer write kept finished work from being recorded. Losses have
    /// their own bound (see [`reap`]), so a job that kills its runner still fails.
    pub fn charged(self) -> bool {
        !matches!(
            self,
            Outcome::Unavailable
                | Outcome::Interrupted
                | Outcome::Lost
                | Outcome::Throttled
                | Outcome::Cached
        )
    }

    /// Whether the attempt gave the job its answer: `ok`, or `cached` (an earlier `ok`'s).
    pub fn answered(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Cached)
    }

    /// Whether another attempt may help. HTTP: 408, 429 and 5xx may; other 4xx never.
    pub fn retryable(self, http_status: Option<i64>) -> bool {
        match self {
            Outcome::Ok | Outcome::Cached | Outcome::Spawn => false,
            Outcome::Http => match http_status {
                Some(s) => s == 408 || s == 429 || s >= 500,
                None => true,
            },
            _ => true,
        }
    }
}

/// Which jobs a command works on: `--batch`, `--model`, `--ids-file`.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub batch: Option<String>,
    pub models: Vec<String>,
    /// Restrict to the ids loaded into `temp.scope_ids` by [`install_ids`].
    pub ids: bool,
}

impl Filter {
    /// ` AND …` conditions on the jobs table under `alias`, with their parameters.
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
        if self.ids {
            sql.push_str(&format!(
                " AND {alias}.{id_col} IN (SELECT id FROM temp.scope_ids)"
            ));
        }
        (sql, args)
    }
}

/// Generated jobs in `filter` whose item has no variable `name`: how many, and one of them
/// (batch, item id) to name in a message.
pub fn items_missing_var(
    conn: &Connection,
    filter: &Filter,
    name: &str,
) -> Result<(i64, Option<(String, String)>)> {
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
    Ok((n, example))
}

/// Loads job ids into `temp.scope_ids`; an id with no job is a usage error listing them all.
pub fn install_ids(conn: &Connection, ids: &[i64]) -> Result<()> {
    // Read commands run under `query_only`, which guards the database file; the ids go to
    // this connection's private temp schema, so lift it for that and put it back.
    let query_only: bool = conn.pragma_query_value(None, "query_only", |r| r.get(0))?;
    conn.pragma_update(None, "query_only", false)?;
    let loaded = load_ids(conn, ids);
    conn.pragma_update(None, "query_only", query_only)?;
    loaded
}

fn load_ids(conn: &Connection, ids: &[i64]) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS scope_ids (id INTEGER PRIMARY KEY); DELETE FROM temp.scope_ids;",
    )?;
    {
        let mut ins = conn.prepare("INSERT OR IGNORE INTO temp.scope_ids (id) VALUES (?1)")?;
        for id in ids {
            ins.execute([id])?;
        }
    }
    let mut stmt = conn.prepare(
        "SELECT s.id FROM temp.scope_ids s LEFT JOIN jobs j ON j.id = s.id WHERE j.id IS NULL ORDER BY s.id",
    )?;
    let unknown: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
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

/// A job claimed by a runner, with everything its attempt needs.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: i64,
    pub attempt_id: i64,
    pub number: i64,
    pub token: i64,
    pub started_at: i64,
    pub kind: String,
    pub batch: String,
    pub item_id: String,
    /// The sample number, 1..N of `enqueue --repeat N` (a grade job: its graded job's).
    pub repeat: i64,
    pub model: String,
    pub endpoint: String,
    pub prompt: String,
    pub vars: Map<String, Value>,
    /// A chat item's messages (the prompt is then their rendered text).
    pub messages: Option<Vec<Value>>,
    /// The item's own request options (from a Batch API line), over the model's.
    pub options: Map<String, Value>,
    pub charged: i64,
    pub max_attempts: Option<i64>,
    pub parent_id: Option<i64>,
    pub rubric_id: Option<i64>,
    /// For grade jobs: the graded job's output.
    pub parent_output: Option<String>,
}

/// Claims up to `endpoints.len()` runnable jobs of `model`, one per endpoint slot, in the
/// caller's transaction: state, attempt number, lease and attempt row together.
#[allow(clippy::too_many_arguments)]
pub fn claim(
    tx: &Transaction,
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
    let mut head = vec![SqlValue::Text(model.to_string()), SqlValue::Integer(now)];
    head.append(&mut args);
    head.push(SqlValue::Integer(endpoints.len() as i64));
    let mut stmt = tx.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(head), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<i64>>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<String>>(11)?,
                r.get::<_, Option<String>>(12)?,
                r.get::<_, i64>(13)?,
            ))
        })?
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
    for (row, endpoint) in rows.into_iter().zip(endpoints) {
        let (
            job_id,
            kind,
            batch,
            item_id,
            prompt,
            vars,
            charged,
            max_attempts,
            parent_id,
            rubric_id,
            parent_output,
            messages,
            options,
            repeat,
        ) = row;
        let token = fastrand::i64(1..i64::MAX);
        let number: Option<i64> = take
            .query_row(
                params![runner_id, token, now + lease_ms, now, job_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(number) = number else { continue };
        let endpoint_col = (!endpoint.is_empty()).then_some(endpoint.as_str());
        record.execute(params![
            job_id,
            number,
            model,
            batch,
            runner_id,
            endpoint_col,
            timeout_s,
            now
        ])?;
        let attempt_id = tx.last_insert_rowid();
        point.execute(params![attempt_id, job_id])?;
        claims.push(Claim {
            job_id,
            attempt_id,
            number,
            token,
            started_at: now,
            kind,
            batch,
            item_id,
            repeat,
            model: model.to_string(),
            endpoint: endpoint.clone(),
            prompt,
            vars: serde_json::from_str(&vars).unwrap_or_default(),
            messages: messages.and_then(|m| serde_json::from_str(&m).ok()),
            options: options
                .and_then(|o| serde_json::from_str(&o).ok())
                .unwrap_or_default(),
            charged,
            max_attempts,
            parent_id,
            rubric_id,
            parent_output,
        });
    }
    Ok(claims)
}

/// The recorded result of an attempt.
#[derive(Debug, Clone)]
pub struct Finish {
    pub outcome: Outcome,
    pub duration_ms: i64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub http_status: Option<i64>,
    pub output: Option<String>,
    pub reasoning: Option<String>,
    pub raw_output: Option<String>,
    pub stderr: Option<String>,
    pub error: Option<String>,
    pub timings: Option<Value>,
    /// `throttled`: how long the server asked to wait (Retry-After), in ms.
    pub retry_after_ms: Option<i64>,
    /// `throttled`: the account's quota or credit is exhausted; retrying cannot help.
    pub quota_exhausted: bool,
    /// Streaming metrics measured by the HTTP worker.
    pub metrics: Option<Metrics>,
    /// The hash of the exact request (see `crate::cache`), kept so a later `run --cache` can
    /// reuse an `ok` answer, and a miss can be explained.
    pub cache_key: Option<String>,
    /// For `cached`: the attempt whose answer this is.
    pub cached_from: Option<i64>,
}

/// Per-attempt latency of a streamed answer, as vLLM's benchmark defines it (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Request sent → first chunk carrying generated text (answer or reasoning).
    pub ttft_ms: Option<f64>,
    /// (e2e − ttft) / (output tokens − 1), when more than one token came.
    pub tpot_ms: Option<f64>,
    /// Request sent → last byte of the answer.
    pub e2e_ms: Option<f64>,
    /// From the server's usage (`completion_tokens`) or Ollama's `eval_count`.
    pub output_tokens: Option<i64>,
    /// The longest silence between two chunks once the stream had started.
    pub max_gap_ms: Option<f64>,
}

impl Finish {
    pub fn new(outcome: Outcome, duration_ms: i64) -> Finish {
        Finish {
            outcome,
            duration_ms,
            exit_code: None,
            signal: None,
            http_status: None,
            output: None,
            reasoning: None,
            raw_output: None,
            stderr: None,
            error: None,
            timings: None,
            retry_after_ms: None,
            quota_exhausted: false,
            metrics: None,
            cache_key: None,
            cached_from: None,
        }
    }

    pub fn error(mut self, msg: impl Into<String>) -> Finish {
        self.error = Some(msg.into());
        self
    }
}

/// Where a finished attempt sends its job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Done,
    /// Back to pending, not before this time (ms).
    Retry(i64),
    Failed,
}

impl Next {
    fn state(self) -> &'static str {
        match self {
            Next::Done => "done",
            Next::Retry(_) => "pending",
            Next::Failed => "failed",
        }
    }
}

/// Decides what follows an attempt: done, a retry after a backoff, or failed.
/// Backoff: `retry_base × 2^(n-1)` with ±25 % jitter, at most 10 minutes. A throttled job
/// waits the later of that backoff (n = its uncharged attempts, so it grows while the server
/// keeps pushing back) and the server's Retry-After; it is never charged.
pub fn decide(claim: &Claim, f: &Finish, budget: i64, retry_base_ms: i64) -> Next {
    if f.outcome.answered() {
        return Next::Done;
    }
    if f.outcome == Outcome::Throttled && !f.quota_exhausted {
        let uncharged = claim.number - claim.charged;
        let wait = backoff_ms(retry_base_ms, uncharged).max(f.retry_after_ms.unwrap_or(0));
        return Next::Retry(now_ms() + wait);
    }
    if !f.outcome.charged() {
        return Next::Retry(now_ms());
    }
    let used = claim.charged + 1;
    if !f.outcome.retryable(f.http_status) || used >= budget {
        return Next::Failed;
    }
    Next::Retry(now_ms() + backoff_ms(retry_base_ms, used))
}

/// `retry_base × 2^(n-1)` with ±25 % jitter, at most 10 minutes.
fn backoff_ms(retry_base_ms: i64, n: i64) -> i64 {
    let exp = 2f64.powi((n - 1).clamp(0, 20) as i32);
    let jitter = 0.75 + fastrand::f64() * 0.5;
    (retry_base_ms as f64 * exp * jitter).min(600_000.0) as i64
}

/// Records an attempt's end and moves its job, fenced by the lease token: if the job is no
/// longer ours (reaped meanwhile), nothing is written and false is returned.
pub fn finish(tx: &Transaction, claim: &Claim, f: &Finish, next: Next) -> Result<bool> {
    let now = now_ms();
    let charged = f.outcome.charged() as i64;
    let not_before = match next {
        Next::Retry(t) => t,
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
            next.state(),
            charged,
            not_before,
            f.outcome.as_str(),
            last_error,
            now,
            claim.job_id,
            claim.token
        ])?;
    if changed == 0 {
        return Ok(false);
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
        f.timings.as_ref().map(Value::to_string),
        claim.attempt_id,
        m.ttft_ms,
        m.tpot_ms,
        m.e2e_ms,
        m.output_tokens,
        m.max_gap_ms,
        f.cache_key,
        f.cached_from,
    ])?;
    Ok(true)
}

/// Pending jobs of `model` in scope that could run now, after job id `after`, in id order:
/// what `run --cache` looks up before anything is claimed. The walk goes by job id (the `+`
/// keeps SQLite off the claim index, which would read and sort every pending job per page),
/// so the pages of one pass read each job once.
pub fn runnable(
    conn: &Connection,
    model: &str,
    filter: &Filter,
    after: i64,
    limit: usize,
) -> Result<Vec<Claim>> {
    let (cond, args) = filter.sql("j");
    let sql = format!(
        "SELECT j.id, j.kind, j.batch, j.item_id, i.prompt, i.vars, j.charged, j.max_attempts,
                j.parent_id, j.rubric_id, pa.output, j.repeat, i.messages, i.options
         FROM jobs j
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         LEFT JOIN jobs p ON p.id = j.parent_id
         LEFT JOIN attempts pa ON pa.id = p.attempt_id
         WHERE +j.state = 'pending' AND +j.model = ? AND j.id > ?
           AND (j.parent_id IS NULL OR p.state = 'done'){cond}
         ORDER BY j.id LIMIT ?"
    );
    let mut all = vec![SqlValue::Text(model.to_string()), SqlValue::Integer(after)];
    all.extend(args);
    all.push(SqlValue::Integer(limit as i64));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(all), |r| {
        Ok(Claim {
            job_id: r.get(0)?,
            attempt_id: 0,
            number: 0,
            token: 0,
            started_at: 0,
            kind: r.get(1)?,
            batch: r.get(2)?,
            item_id: r.get(3)?,
            repeat: r.get(11)?,
            model: model.to_string(),
            endpoint: String::new(),
            prompt: r.get(4)?,
            vars: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            messages: r
                .get::<_, Option<String>>(12)?
                .and_then(|m| serde_json::from_str(&m).ok()),
            options: r
                .get::<_, Option<String>>(13)?
                .and_then(|o| serde_json::from_str(&o).ok())
                .unwrap_or_default(),
            charged: r.get(6)?,
            max_attempts: r.get(7)?,
            parent_id: r.get(8)?,
            rubric_id: r.get(9)?,
            parent_output: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The lowest id of a pending job of `model`, from the claim index: where a walk of
/// [`runnable`] starts, past the done history of a long-lived database.
pub fn first_pending(conn: &Connection, model: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MIN(id) FROM jobs WHERE state = 'pending' AND model = ?1")?
        .query_row([model], |r| r.get(0))?)
}

/// The newest `ok` attempt answered under `key`: (attempt id, its answer as a `cached` finish).
pub fn cached_answer(conn: &Connection, key: &str) -> Result<Option<Finish>> {
    let row = conn
        .prepare_cached(
            "SELECT id, output, reasoning, raw_output, timings, output_tokens FROM attempts
             WHERE cache_key = ?1 AND outcome = 'ok' ORDER BY id DESC LIMIT 1",
        )?
        .query_row([key], |r| {
            let mut f = Finish::new(Outcome::Cached, 0);
            f.cached_from = Some(r.get(0)?);
            f.output = r.get(1)?;
            f.reasoning = r.get(2)?;
            f.raw_output = r.get(3)?;
            f.timings = r
                .get::<_, Option<String>>(4)?
                .and_then(|t| serde_json::from_str(&t).ok());
            f.cache_key = Some(key.to_string());
            // The same token counts; no latency of its own (no call was made).
            f.metrics = Some(Metrics {
                output_tokens: r.get(5)?,
                ..Metrics::default()
            });
            Ok(f)
        })
        .optional()?;
    Ok(row)
}

/// Gives a pending job its answer from the cache: a `cached` attempt (not charged, no
/// duration, no endpoint) and the job `done`, fenced by its still being pending. Returns the
/// attempt's id and number, or None when the job was taken meanwhile.
pub fn answer_cached(
    tx: &Transaction,
    runner_id: i64,
    claim: &Claim,
    f: &Finish,
) -> Result<Option<(i64, i64)>> {
    let now = now_ms();
    let number: Option<i64> = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'done', attempts = attempts + 1, not_before = 0,
                    last_outcome = 'cached', last_error = NULL, updated_at = ?1
             WHERE id = ?2 AND state = 'pending' RETURNING attempts",
        )?
        .query_row(params![now, claim.job_id], |r| r.get(0))
        .optional()?;
    let Some(number) = number else {
        return Ok(None);
    };
    tx.prepare_cached(
        "INSERT INTO attempts (job_id, number, model, batch, runner_id, started_at, finished_at,
                duration_ms, outcome, charged, output, reasoning, raw_output, timings, cache_key,
                cached_from, output_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 0, 'cached', 0, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        claim.job_id,
        number,
        claim.model,
        claim.batch,
        runner_id,
        now,
        f.output,
        f.reasoning,
        f.raw_output,
        f.timings.as_ref().map(Value::to_string),
        f.cache_key,
        f.cached_from,
        f.metrics.as_ref().and_then(|m| m.output_tokens),
    ])?;
    let attempt_id = tx.last_insert_rowid();
    tx.prepare_cached("UPDATE jobs SET attempt_id = ?1 WHERE id = ?2")?
        .execute(params![attempt_id, claim.job_id])?;
    Ok(Some((attempt_id, number)))
}

/// A running job whose runner is gone or whose lease ran out.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub job_id: i64,
    pub model: String,
    pub batch: String,
    pub runner_id: Option<i64>,
    pub runner: String,
    pub lease_expired_ms: i64,
    pub reason: String,
    pub token: i64,
    pub attempt_id: Option<i64>,
    pub max_attempts: Option<i64>,
    /// The token of a dead local runner, whose attempt processes may still be running.
    pub leftovers: Option<String>,
}

/// Finds orphans: running jobs whose runner on this host is dead (process gone, pid reused,
/// or an older boot), or whose lease expired while their runner is remote or suspended. A
/// running local runner keeps its jobs whatever its lease says: only a lock held by another
/// process can have kept its heartbeat from renewing. Jobs of `self_runner` are never orphans.
pub fn find_orphans(conn: &Connection, self_runner: Option<i64>) -> Result<Vec<Orphan>> {
    let now = now_ms();
    let mut stmt = conn.prepare_cached(
        "SELECT j.id, j.model, j.batch, j.runner_id, j.lease_expires_at, j.lease_token,
                j.attempt_id, j.max_attempts, r.host, r.pid, r.pid_start, r.boot_id,
                r.stopped_at
         FROM jobs j LEFT JOIN runners r ON r.id = j.runner_id
         WHERE j.state = 'running' AND j.runner_id IS NOT ?1",
    )?;
    let rows = stmt.query_map([self_runner], |r| {
        Ok((
            Orphan {
                job_id: r.get(0)?,
                model: r.get(1)?,
                batch: r.get(2)?,
                runner_id: r.get(3)?,
                runner: String::new(),
                lease_expired_ms: now - r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                reason: String::new(),
                token: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                attempt_id: r.get(6)?,
                max_attempts: r.get(7)?,
                leftovers: None,
            },
            r.get::<_, Option<String>>(8)?,
            r.get::<_, Option<i64>>(9)?,
            r.get::<_, Option<String>>(10)?,
            r.get::<_, Option<String>>(11)?,
            r.get::<_, Option<i64>>(12)?,
        ))
    })?;
    let mut orphans = Vec::new();
    for row in rows {
        let (mut o, r_host, r_pid, r_start, r_boot, r_stopped) = row?;
        o.runner = match (&r_host, r_pid) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => "unknown".into(),
        };
        let pid = r_pid.unwrap_or(0);
        let life = r_host
            .as_deref()
            .map(|h| crate::util::runner_life(h, pid, r_start.as_deref(), r_boot.as_deref()));
        let expired = o.lease_expired_ms > 0;
        let reason = if r_pid.is_none() {
            Some("its runner is unknown".to_string())
        } else if r_stopped.is_some() {
            Some("its runner has stopped".to_string())
        } else if life == Some(crate::util::RunnerLife::EarlierBoot) {
            Some("its runner belongs to an earlier boot".to_string())
        } else if life == Some(crate::util::RunnerLife::Gone) {
            o.leftovers = Some(crate::util::runner_token(pid, r_start.as_deref()));
            Some(format!("its runner (pid {pid}) is gone"))
        } else if life.is_some_and(|l| l.holds_jobs(expired)) {
            None
        } else if expired {
            let suspended = if life == Some(crate::util::RunnerLife::Suspended) {
                format!("its runner (pid {pid}) is suspended and its ")
            } else {
                "its ".to_string()
            };
            Some(format!(
                "{suspended}lease expired {} ago",
                crate::util::human_secs(o.lease_expired_ms as f64 / 1000.0)
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            o.reason = reason;
            orphans.push(o);
        }
    }
    Ok(orphans)
}

/// Reaps orphans: the attempt ends `lost`, not charged (whether its process ever started is
/// not known), and the job goes back to pending — or to failed once it has been lost more
/// times than its attempt budget, so a job that kills every runner that takes it still ends.
/// Fenced by token, so a job renewed meanwhile is left alone. Returns the orphans reaped with
/// the state each job went to.
pub fn reap(tx: &Transaction, orphans: &[Orphan]) -> Result<Vec<(Orphan, &'static str)>> {
    let now = now_ms();
    let mut reaped = Vec::new();
    let mut losses =
        tx.prepare_cached("SELECT COUNT(*) FROM attempts WHERE job_id = ?1 AND outcome = 'lost'")?;
    for o in orphans {
        let budget = match o.max_attempts {
            Some(b) => b,
            None => crate::models::load(tx, &o.model)?.max_attempts,
        };
        let lost_before: i64 = losses.query_row([o.job_id], |r| r.get(0))?;
        let state = if lost_before >= budget {
            "failed"
        } else {
            "pending"
        };
        let error = format!("lost: {}", o.reason);
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, runner_id = NULL, lease_token = NULL,
                    lease_expires_at = NULL, last_outcome = 'lost', last_error = ?2, updated_at = ?3
             WHERE id = ?4 AND state = 'running' AND lease_token IS ?5",
            params![state, error, now, o.job_id, o.token],
        )?;
        if changed == 0 {
            continue;
        }
        if let Some(aid) = o.attempt_id {
            tx.execute(
                "UPDATE attempts SET outcome = 'lost', charged = 0, error = ?1,
                        finished_at = MAX(?2, started_at), duration_ms = MAX(?2, started_at) - started_at
                 WHERE id = ?3 AND outcome IS NULL",
                params![error, now, aid],
            )?;
        }
        reaped.push((o.clone(), state));
    }
    // A local runner found dead is marked stopped, so reports stop calling it live, and what
    // its attempts left running is killed: its work must not go on beside the retry.
    for runner_id in orphans.iter().filter_map(|o| o.runner_id) {
        mark_dead_if_gone(tx, runner_id, now)?;
    }
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

fn mark_dead_if_gone(tx: &Transaction, runner_id: i64, now: i64) -> Result<()> {
    let row: Option<(String, i64, Option<String>, Option<String>)> = tx
        .query_row(
            "SELECT host, pid, pid_start, boot_id FROM runners WHERE id = ?1 AND stopped_at IS NULL",
            [runner_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    if let Some((host, pid, start, boot)) = row {
        if crate::util::runner_life(&host, pid, start.as_deref(), boot.as_deref()).dead() {
            tx.execute(
                "UPDATE runners SET stopped_at = MAX(?1, heartbeat_at), stop_reason = 'died' WHERE id = ?2",
                params![now, runner_id],
            )?;
        }
    }
    Ok(())
}

/// Puts failed and cancelled jobs matching the filter back to pending, each with `extra`
/// more attempts (default: a fresh budget of its model's max attempts). Returns their ids.
pub fn resume(
    tx: &Transaction,
    filter: &Filter,
    outcome: Option<Outcome>,
    extra: Option<i64>,
    dry_run: bool,
) -> Result<Vec<i64>> {
    let (cond, mut args) = filter.sql("j");
    let mut sql = format!("SELECT j.id FROM jobs j WHERE j.state IN ('failed', 'cancelled'){cond}");
    if let Some(o) = outcome {
        sql.push_str(" AND j.last_outcome = ?");
        args.push(SqlValue::Text(o.as_str().into()));
    }
    sql.push_str(" ORDER BY j.id");
    let ids: Vec<i64> = tx
        .prepare(&sql)?
        .query_map(params_from_iter(args), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if dry_run {
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
        upd.execute(params![now, extra, crate::models::DEFAULT_MAX_ATTEMPTS, id])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(charged: i64) -> Claim {
        Claim {
            job_id: 1,
            attempt_id: 1,
            number: charged + 1,
            token: 1,
            started_at: 0,
            kind: "generate".into(),
            batch: "b".into(),
            item_id: "1".into(),
            repeat: 1,
            model: "m".into(),
            endpoint: String::new(),
            prompt: "p".into(),
            vars: Map::new(),
            messages: None,
            options: Map::new(),
            charged,
            max_attempts: None,
            parent_id: None,
            rubric_id: None,
            parent_output: None,
        }
    }

    /// The delay of a retry decided now, in ms.
    fn delay(next: Next, before: i64) -> i64 {
        match next {
            Next::Retry(t) => t - before,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn ok_is_done_whatever_the_budget() {
        let f = Finish::new(Outcome::Ok, 5);
        assert_eq!(decide(&claim(0), &f, 1, 1000), Next::Done);
        assert_eq!(decide(&claim(9), &f, 1, 1000), Next::Done);
    }

    #[test]
    fn backoff_doubles_per_charged_attempt_within_jitter() {
        let f = Finish::new(Outcome::Exit, 5);
        for charged in 0..4 {
            let before = now_ms();
            let d = delay(decide(&claim(charged), &f, 100, 1000), before);
            let nominal = 1000 * 2i64.pow(charged as u32);
            // ±25 % jitter, and the clock moved a little while deciding.
            assert!(
                d >= nominal * 3 / 4 && d <= nominal * 5 / 4 + 5,
                "attempt {}: delay {d} ms, nominal {nominal} ms",
                charged + 1
            );
        }
    }

    #[test]
    fn backoff_is_capped_at_ten_minutes() {
        let f = Finish::new(Outcome::Timeout, 5);
        let before = now_ms();
        let d = delay(decide(&claim(30), &f, 100, 60_000), before);
        assert!((0..=600_000 + 5).contains(&d), "{d}");
    }

    #[test]
    fn the_last_charged_attempt_fails_the_job() {
        let f = Finish::new(Outcome::Crash, 5);
        assert!(matches!(decide(&claim(1), &f, 3, 10), Next::Retry(_)));
        assert_eq!(decide(&claim(2), &f, 3, 10), Next::Failed);
        assert_eq!(decide(&claim(0), &f, 1, 10), Next::Failed);
    }

    #[test]
    fn what_cannot_succeed_fails_at_once() {
        let spawn = Finish::new(Outcome::Spawn, 0);
        assert_eq!(decide(&claim(0), &spawn, 5, 10), Next::Failed);
        let mut not_found = Finish::new(Outcome::Http, 5);
        not_found.http_status = Some(404);
        assert_eq!(decide(&claim(0), &not_found, 5, 10), Next::Failed);
        for status in [408, 429, 500, 502, 503, 504] {
            let mut f = Finish::new(Outcome::Http, 5);
            f.http_status = Some(status);
            assert!(
                matches!(decide(&claim(0), &f, 5, 10), Next::Retry(_)),
                "{status}"
            );
        }
    }

    #[test]
    fn uncharged_outcomes_retry_at_once_even_on_a_spent_budget() {
        for outcome in [Outcome::Unavailable, Outcome::Interrupted, Outcome::Lost] {
            let f = Finish::new(outcome, 5);
            let before = now_ms();
            let d = delay(decide(&claim(2), &f, 3, 60_000), before);
            assert!((0..5).contains(&d), "{outcome:?}: {d}");
        }
    }
}
