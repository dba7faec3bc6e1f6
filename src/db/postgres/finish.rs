//! Finishing attempts on PostgreSQL: every result of a pass in one statement, each fenced by
//! its job's lease token, and a finished grade's verdict.

use anyhow::Result;
use postgres::types::ToSql;
use postgres::GenericClient;
use serde_json::Value;

use super::session::Statements;
use crate::db::store::FinishParams;
use crate::domain::{Claim, Finish, JobKind, Next};

/// Every finish of a pass in one statement: the arrays of [`Columns`] (`$1` … `$25`, in its
/// order) unnested into rows; a row's job moves only while its lease token still holds.
const FINISH: &str = "WITH f AS (
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[],
                $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                $10::bigint[], $11::bigint[], $12::bigint[], $13::text[], $14::text[],
                $15::text[], $16::text[], $17::text[], $18::text[], $19::float8[],
                $20::float8[], $21::float8[], $22::bigint[], $23::float8[], $24::text[],
                $25::bigint[])
             AS f(job_id, token, state, charged, delay, outcome, last_error, attempt_id,
                  duration_ms, exit_code, signal, http_status, output, reasoning, raw_output,
                  stderr, error, timings, ttft_ms, tpot_ms, e2e_ms, output_tokens,
                  max_gap_ms, cache_key, cached_from)
     ),
     moved AS (
         UPDATE jobs j SET state = f.state, charged = j.charged + f.charged,
                not_before = CASE WHEN f.delay IS NULL THEN 0 ELSE llmbatch_now_ms() + f.delay END,
                runner_id = NULL, lease_token = NULL, lease_expires_at = NULL,
                last_outcome = f.outcome, last_error = f.last_error,
                updated_at = llmbatch_now_ms()
         FROM f WHERE j.id = f.job_id AND j.state = 'running' AND j.lease_token = f.token
         RETURNING j.id
     ),
     recorded AS (
         UPDATE attempts a SET finished_at = GREATEST(llmbatch_now_ms(), a.started_at),
                duration_ms = f.duration_ms, outcome = f.outcome, charged = f.charged,
                exit_code = f.exit_code, signal = f.signal, http_status = f.http_status,
                output = f.output, reasoning = f.reasoning, raw_output = f.raw_output,
                stderr = f.stderr, error = f.error, timings = f.timings,
                ttft_ms = f.ttft_ms, tpot_ms = f.tpot_ms, e2e_ms = f.e2e_ms,
                output_tokens = f.output_tokens, max_gap_ms = f.max_gap_ms,
                cache_key = f.cache_key, cached_from = f.cached_from
         FROM f WHERE a.id = f.attempt_id AND a.outcome IS NULL
                  AND f.job_id IN (SELECT id FROM moved)
     )
     SELECT id FROM moved
     UNION ALL
     -- A finish sent again after its answer was lost: this very attempt already ended so.
     SELECT f.job_id FROM f JOIN attempts a ON a.id = f.attempt_id
     WHERE a.outcome = f.outcome AND f.job_id NOT IN (SELECT id FROM moved)";

/// Records attempts' ends and moves their jobs, all in one statement (one round trip however
/// many there are), each fenced by its lease token: a job no longer ours (reaped meanwhile) is
/// not written and its entry is false; one whose attempt already ended with this outcome (the
/// same finish, sent again after its answer was lost) is not written again and its entry is
/// true. A retry's wait counts from the database's now. A
/// finished grade's verdict is stored too.
pub fn finish(
    c: &mut impl GenericClient,
    st: &mut Statements,
    fps: &[FinishParams],
) -> Result<Vec<bool>> {
    if fps.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = st.get(c, FINISH)?;
    let columns = columns(fps);
    let moved: std::collections::HashSet<i64> = c
        .query(&stmt, &columns.params())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut kept = Vec::with_capacity(fps.len());
    for fp in fps {
        let k = moved.contains(&fp.claim.job_id);
        if k && fp.next == Next::Done && fp.claim.kind == JobKind::Grade {
            record_grade(c, fp.claim, fp.finish)?;
        }
        kept.push(k);
    }
    Ok(kept)
}

/// One array per column of [`FINISH`], one entry per finish; text borrowed from the finishes.
struct Columns<'a> {
    job_ids: Vec<Option<i64>>,
    tokens: Vec<Option<i64>>,
    states: Vec<Option<&'a str>>,
    charged: Vec<Option<i64>>,
    delays: Vec<Option<i64>>,
    outcomes: Vec<Option<&'a str>>,
    last_errors: Vec<Option<&'a str>>,
    attempt_ids: Vec<Option<i64>>,
    durations: Vec<Option<i64>>,
    exit_codes: Vec<Option<i64>>,
    signals: Vec<Option<i64>>,
    http: Vec<Option<i64>>,
    outputs: Vec<Option<&'a str>>,
    reasoning: Vec<Option<&'a str>>,
    raw: Vec<Option<&'a str>>,
    stderr: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
    timings: Vec<Option<String>>,
    ttft: Vec<Option<f64>>,
    tpot: Vec<Option<f64>>,
    e2e: Vec<Option<f64>>,
    tokens_out: Vec<Option<i64>>,
    gaps: Vec<Option<f64>>,
    cache_keys: Vec<Option<&'a str>>,
    cached_from: Vec<Option<i64>>,
}

impl Columns<'_> {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.job_ids,
            &self.tokens,
            &self.states,
            &self.charged,
            &self.delays,
            &self.outcomes,
            &self.last_errors,
            &self.attempt_ids,
            &self.durations,
            &self.exit_codes,
            &self.signals,
            &self.http,
            &self.outputs,
            &self.reasoning,
            &self.raw,
            &self.stderr,
            &self.errors,
            &self.timings,
            &self.ttft,
            &self.tpot,
            &self.e2e,
            &self.tokens_out,
            &self.gaps,
            &self.cache_keys,
            &self.cached_from,
        ]
    }
}

fn columns<'a>(fps: &'a [FinishParams<'a>]) -> Columns<'a> {
    fn each<'a, T>(
        fps: &'a [FinishParams<'a>],
        g: impl Fn(&'a FinishParams<'a>) -> Option<T>,
    ) -> Vec<Option<T>> {
        fps.iter().map(g).collect()
    }
    Columns {
        job_ids: each(fps, |fp| Some(fp.claim.job_id)),
        tokens: each(fps, |fp| Some(fp.claim.token)),
        states: each(fps, |fp| Some(fp.next.state().as_str())),
        charged: each(fps, |fp| Some(fp.finish.outcome.charged() as i64)),
        delays: each(fps, |fp| match fp.next {
            Next::Retry(d) => Some(d.max(0)),
            _ => None,
        }),
        outcomes: each(fps, |fp| Some(fp.finish.outcome.as_str())),
        last_errors: each(fps, |fp| match fp.next {
            Next::Done => None,
            _ => fp
                .finish
                .error
                .as_deref()
                .or(Some(fp.finish.outcome.as_str())),
        }),
        attempt_ids: each(fps, |fp| Some(fp.claim.attempt_id)),
        durations: each(fps, |fp| Some(fp.finish.duration_ms)),
        exit_codes: each(fps, |fp| fp.finish.exit_code),
        signals: each(fps, |fp| fp.finish.signal),
        http: each(fps, |fp| fp.finish.http_status),
        outputs: each(fps, |fp| fp.finish.output.as_deref()),
        reasoning: each(fps, |fp| fp.finish.reasoning.as_deref()),
        raw: each(fps, |fp| fp.finish.raw_output.as_deref()),
        stderr: each(fps, |fp| fp.finish.stderr.as_deref()),
        errors: each(fps, |fp| fp.finish.error.as_deref()),
        timings: each(fps, |fp| fp.finish.stored_timings().map(|t| t.to_string())),
        ttft: each(fps, |fp| fp.finish.metrics.as_ref().and_then(|m| m.ttft_ms)),
        tpot: each(fps, |fp| fp.finish.metrics.as_ref().and_then(|m| m.tpot_ms)),
        e2e: each(fps, |fp| fp.finish.metrics.as_ref().and_then(|m| m.e2e_ms)),
        tokens_out: each(fps, |fp| {
            fp.finish.metrics.as_ref().and_then(|m| m.output_tokens)
        }),
        gaps: each(fps, |fp| {
            fp.finish.metrics.as_ref().and_then(|m| m.max_gap_ms)
        }),
        cache_keys: each(fps, |fp| fp.finish.cache_key.as_deref()),
        cached_from: each(fps, |fp| fp.finish.cached_from),
    }
}

pub fn record_grade(c: &mut impl GenericClient, claim: &Claim, f: &Finish) -> Result<()> {
    let v = f.verdict.clone().unwrap_or(Value::Null);
    c.execute(
        "INSERT INTO grades (job_id, graded_job_id, attempt_id, grader, pass, score, reason, fields)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (job_id) DO UPDATE SET graded_job_id = excluded.graded_job_id,
             attempt_id = excluded.attempt_id, grader = excluded.grader, pass = excluded.pass,
             score = excluded.score, reason = excluded.reason, fields = excluded.fields",
        &[
            &claim.job_id,
            &claim.parent_id,
            &claim.attempt_id,
            &claim.model,
            &v.get("pass").and_then(Value::as_bool).map(i64::from),
            &v.get("score").and_then(Value::as_f64),
            &v.get("reason").and_then(Value::as_str),
            &v.get("fields")
                .map(Value::to_string)
                .unwrap_or_else(|| "{}".into()),
        ],
    )?;
    Ok(())
}
