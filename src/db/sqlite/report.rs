//! Report rows from SQLite. Distinct model names come from index skip-scans and quantiles
//! from ordered index walks, so a million rows cost little and memory stays flat.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::{BTreeMap, BTreeSet};

use super::Db;
use crate::db::report::*;
use crate::db::store::{Filter, RunnerRecord};
use crate::domain::{JobState, Outcome};
use crate::util::now_ms;

impl AttemptScope {
    /// ` AND …` conditions on the jobs table under `alias`, with `since_ms` on its time
    /// column `col`.
    pub fn job_sql(&self, alias: &str, col: &str) -> (String, Vec<SqlValue>) {
        let (mut sql, mut args) = self.filter.sql(alias);
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {alias}.{col} >= ?"));
            args.push(SqlValue::Integer(since));
        }
        (sql, args)
    }
}

/// Distinct `model` values of a table with an index leading on it (after `cond`'s equality).
pub fn skip_scan(conn: &Connection, table: &str, cond: &str) -> Result<Vec<String>> {
    let sql = format!(
        "WITH RECURSIVE m(x) AS (
             SELECT (SELECT MIN(model) FROM {table} WHERE 1 = 1{cond})
             UNION ALL
             SELECT (SELECT MIN(model) FROM {table} WHERE model > m.x{cond}) FROM m WHERE m.x IS NOT NULL)
         SELECT x FROM m WHERE x IS NOT NULL"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn models_in_scope(conn: &Connection, filter: &Filter) -> Result<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    if !filter.models.is_empty() {
        names.extend(filter.models.iter().cloned());
    } else {
        let mut stmt = conn.prepare_cached("SELECT name FROM models")?;
        for n in stmt.query_map([], |r| r.get::<_, String>(0))? {
            names.insert(n?);
        }
        names.extend(skip_scan(conn, "attempts", "")?);
        for state in ["pending", "running", "done", "failed", "cancelled"] {
            names.extend(skip_scan(conn, "jobs", &format!(" AND state = '{state}'"))?);
        }
    }
    if filter.batch.is_none() && filter.ids.is_none() && filter.models.is_empty() {
        return Ok(names.into_iter().collect());
    }
    // Keep the models with jobs in scope (a configured model with none is left out).
    let (cond, args) = filter.sql("j");
    let sql = format!("SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.model = ?{cond})");
    let mut stmt = conn.prepare(&sql)?;
    let mut kept = Vec::new();
    for name in names {
        let mut all = vec![SqlValue::Text(name.clone())];
        all.extend(args.iter().cloned());
        if stmt.query_row(params_from_iter(all), |r| r.get::<_, bool>(0))? {
            kept.push(name);
        }
    }
    Ok(kept)
}

impl ReportSource for Db {
    fn token_sums(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<TokenSum>> {
        super::cost::token_sums(&self.conn, scope, by)
    }

    fn latency(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<LatencyGroup>> {
        super::latency::latency(&self.conn, scope, by)
    }

    fn metric_percentiles(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        metric: StreamMetric,
        ps: &[f64],
    ) -> Result<BTreeMap<Vec<String>, Vec<f64>>> {
        super::latency::metric_percentiles(&self.conn, scope, by, metric, ps)
    }

    fn stream_rates(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
    ) -> Result<BTreeMap<Vec<String>, f64>> {
        super::latency::stream_rates(&self.conn, scope, by)
    }

    fn outcome_counts(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<OutcomeCounts>> {
        super::failures::outcome_counts(&self.conn, scope, by)
    }

    fn each_job(
        &self,
        scope: &AttemptScope,
        state: Option<JobState>,
        outcome: Option<Outcome>,
        each: &mut dyn FnMut(JobRow) -> Result<()>,
    ) -> Result<()> {
        super::failures::each_job(&self.conn, scope, state, outcome, each)
    }

    fn generates(&self, filter: &Filter, model: &str) -> Result<bool> {
        let (cond, args) = filter.sql("j");
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM jobs j
                 WHERE j.state IN ('pending', 'running', 'done', 'failed', 'cancelled')
                   AND j.model = ? AND j.kind = 'generate'{cond})"
        );
        let mut all = vec![SqlValue::Text(model.to_string())];
        all.extend(args);
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params_from_iter(all), |r| r.get(0))?)
    }

    fn grade_groups(&self, scope: &AttemptScope) -> Result<Vec<GradeGroup>> {
        super::grades::grade_groups(&self.conn, scope)
    }

    fn grader_sums(&self, scope: &AttemptScope) -> Result<Vec<GraderSums>> {
        super::grades::grader_sums(&self.conn, scope)
    }

    fn grader_jobs(&self, filter: &Filter) -> Result<Vec<GraderJobs>> {
        super::grades::grader_jobs(&self.conn, filter)
    }

    fn grader_pairs(&self, scope: &AttemptScope) -> Result<Vec<GraderPair>> {
        super::grades::grader_pairs(&self.conn, scope)
    }

    fn each_repeat_grade(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(RepeatGrade) -> Result<()>,
    ) -> Result<()> {
        let (cond, args) = filter.sql("p");
        let sql = format!(
            "SELECT p.model, g.grader, r.name, r.id, p.batch, p.item_id, g.pass, g.score
             FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
                  JOIN rubrics r ON r.id = gj.rubric_id
             WHERE gj.state = 'done'{cond}
             ORDER BY p.model, g.grader, r.id, p.batch, p.item_id, p.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            each(RepeatGrade {
                model: r.get(0)?,
                grader: r.get(1)?,
                rubric: r.get(2)?,
                rubric_id: r.get(3)?,
                batch: r.get(4)?,
                item_id: r.get(5)?,
                pass: r.get::<_, Option<i64>>(6)?.map(|p| p != 0),
                score: r.get(7)?,
            })?;
        }
        Ok(())
    }

    fn clock(&self) -> Result<i64> {
        Ok(now_ms())
    }

    fn flow(&self, filter: &Filter, since_ms: i64) -> Result<BTreeMap<String, ModelFlow>> {
        super::flow::flow(&self.conn, filter, since_ms)
    }

    fn phase_samples(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        cold_load_ms: f64,
    ) -> Result<Vec<PhaseSample>> {
        super::flow::phase_samples(&self.conn, scope, by, cold_load_ms)
    }

    fn models_in_scope(&self, filter: &Filter) -> Result<Vec<String>> {
        models_in_scope(&self.conn, filter)
    }

    fn generation_sums(&self, scope: &AttemptScope) -> Result<Vec<GenerationSums>> {
        let (cond, args) = scope.sql("a");
        // Two branches, each on its own cheap rows: attempts with Ollama's timings, and
        // streamed ones without them (the partial index on ttft_ms).
        let ollama = "json_extract(a.timings, '$.eval_count') IS NOT NULL
                      AND COALESCE(json_extract(a.timings, '$.eval_duration'), 0) > 0";
        let sql = format!(
            "SELECT model, SUM(t), SUM(s) FROM (
                 SELECT a.model, SUM(json_extract(a.timings, '$.eval_count')) AS t,
                        SUM(json_extract(a.timings, '$.eval_duration')) / 1e9 AS s
                 FROM attempts a
                 WHERE a.outcome = 'ok' AND a.timings IS NOT NULL AND {ollama}{cond}
                 GROUP BY a.model
                 UNION ALL
                 SELECT a.model, SUM(a.output_tokens - 1), SUM(a.e2e_ms - a.ttft_ms) / 1e3
                 FROM attempts a
                 WHERE a.ttft_ms IS NOT NULL AND a.outcome = 'ok' AND a.output_tokens > 1
                   AND a.e2e_ms > a.ttft_ms AND NOT ({ollama}){cond}
                 GROUP BY a.model
             )
             GROUP BY model"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let both = args.iter().chain(args.iter());
        let rows = stmt.query_map(params_from_iter(both), |r| {
            Ok(GenerationSums {
                model: r.get(0)?,
                tokens: r.get(1)?,
                secs: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn failed_jobs(&self, scope: &AttemptScope, cap: usize) -> Result<(i64, Vec<FailedJob>)> {
        let (cond, args) = scope.job_sql("j", "updated_at");
        let total: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM jobs j WHERE j.state = 'failed'{cond}"),
            params_from_iter(args.clone()),
            |r| r.get(0),
        )?;
        let sql = format!(
            "SELECT j.id, j.model, j.batch, j.item_id, j.last_outcome, j.last_error FROM jobs j
             WHERE j.state = 'failed'{cond} ORDER BY j.updated_at DESC, j.id DESC LIMIT {cap}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok(FailedJob {
                id: r.get(0)?,
                model: r.get(1)?,
                batch: r.get(2)?,
                item_id: r.get(3)?,
                outcome: r.get(4)?,
                error: r.get(5)?,
            })
        })?;
        Ok((total, rows.collect::<rusqlite::Result<_>>()?))
    }

    fn done_span(&self, filter: &Filter) -> Result<Option<(i64, i64)>> {
        let (cond, args) = filter.sql_on("a", "job_id");
        let sql = format!(
            "SELECT MIN(a.finished_at), MAX(a.finished_at) FROM attempts a
             WHERE a.outcome = 'ok'{cond}"
        );
        let span: (Option<i64>, Option<i64>) =
            self.conn
                .query_row(&sql, params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(span.0.zip(span.1))
    }

    fn done_per_interval(
        &self,
        filter: &Filter,
        start: i64,
        step_ms: i64,
        (lo, hi): (i64, i64),
    ) -> Result<Vec<DoneInBucket>> {
        let (cond, args) = filter.sql_on("a", "job_id");
        let sql = format!(
            "SELECT a.model, (a.finished_at - ?) / ? AS bucket, COUNT(*)
             FROM attempts a INDEXED BY attempts_finished
             WHERE a.finished_at >= ? AND a.finished_at <= ? AND a.outcome = 'ok'{cond}
             GROUP BY a.model, bucket ORDER BY a.model, bucket"
        );
        let mut all = vec![
            SqlValue::Integer(start),
            SqlValue::Integer(step_ms),
            SqlValue::Integer(lo),
            SqlValue::Integer(hi),
        ];
        all.extend(args);
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(all), |r| {
            Ok(DoneInBucket {
                model: r.get(0)?,
                bucket: r.get(1)?,
                done: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn ok_durations_at(
        &self,
        scope: &AttemptScope,
        model: &str,
        positions: &[i64],
    ) -> Result<Vec<i64>> {
        let (cond, args) = scope.sql("a");
        let sql = format!(
            "SELECT duration_ms FROM attempts a WHERE a.model = ? AND a.outcome = 'ok'{cond}
             ORDER BY duration_ms"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut all = vec![SqlValue::Text(model.to_string())];
        all.extend(args);
        let mut rows = stmt.query(params_from_iter(all))?;
        let mut out = Vec::with_capacity(positions.len());
        let mut wanted = positions.iter().peekable();
        let mut i = 0i64;
        while let Some(&&pos) = wanted.peek() {
            let Some(r) = rows.next()? else { break };
            i += 1;
            if i < pos {
                continue;
            }
            let d: i64 = r.get(0)?;
            // Several positions can fall on one sample.
            while wanted.next_if(|p| **p == i).is_some() {
                out.push(d);
            }
        }
        Ok(out)
    }

    fn status(&self, scope: &AttemptScope) -> Result<(Vec<(String, ModelStatus)>, i64)> {
        let (cond, args) = scope.job_sql("j", "created_at");
        let now = now_ms();
        let mut models: BTreeMap<String, ModelStatus> = BTreeMap::new();
        // Counts per (state, model) range of the claim index: no job row is read, and a plain
        // COUNT over a range is three times as fast as one GROUP BY over the whole index.
        let sql = format!("SELECT COUNT(*) FROM jobs j WHERE j.state = ? AND j.model = ?{cond}");
        let mut count = self.conn.prepare(&sql)?;
        const STATES: [&str; 6] = ["pending", "", "running", "done", "failed", "cancelled"];
        for (i, state) in STATES.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            for model in skip_scan(&self.conn, "jobs", &format!(" AND state = '{state}'"))? {
                let mut all = vec![
                    SqlValue::Text(state.to_string()),
                    SqlValue::Text(model.clone()),
                ];
                all.extend(args.iter().cloned());
                let n: i64 = count.query_row(params_from_iter(all), |r| r.get(0))?;
                if n > 0 {
                    models.entry(model).or_default().counts[i] += n;
                }
            }
        }
        // Pending jobs whose parent is not done yet wait (grade jobs); only pending rows are read.
        let sql = format!(
            "SELECT j.model, COUNT(*) FROM jobs j JOIN jobs p ON p.id = j.parent_id
             WHERE j.state = 'pending' AND p.state <> 'done'{cond} GROUP BY j.model"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.clone()))?;
        while let Some(r) = rows.next()? {
            let waiting: i64 = r.get(1)?;
            let counts = &mut models.entry(r.get(0)?).or_default().counts;
            counts[0] -= waiting;
            counts[1] += waiting;
        }
        let sql = format!(
            "SELECT j.model, MIN(a.started_at) FROM jobs j JOIN attempts a ON a.id = j.attempt_id
             WHERE j.state = 'running'{cond} GROUP BY j.model"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            models.entry(r.get(0)?).or_default().oldest_running = r.get(1)?;
        }
        Ok((models.into_iter().collect(), now))
    }

    fn cached_done(&self, scope: &AttemptScope) -> Result<i64> {
        let (cond, args) = scope.job_sql("j", "created_at");
        let sql = format!(
            "SELECT COUNT(*) FROM jobs j WHERE j.state = 'done' AND j.last_outcome = 'cached'{cond}"
        );
        Ok(self
            .conn
            .query_row(&sql, params_from_iter(args), |r| r.get(0))?)
    }

    fn running_jobs(&self, scope: &AttemptScope, limit: usize) -> Result<Vec<RunningJob>> {
        let (cond, args) = scope.job_sql("j", "created_at");
        let now = now_ms();
        let sql = format!(
            "SELECT j.id, j.model, j.batch, j.item_id, a.number, r.host, r.pid, a.started_at,
                    j.lease_expires_at
             FROM jobs j JOIN attempts a ON a.id = j.attempt_id LEFT JOIN runners r ON r.id = j.runner_id
             WHERE j.state = 'running'{cond} ORDER BY a.started_at, j.id LIMIT {limit}"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| {
            let host: Option<String> = r.get(5)?;
            let pid: Option<i64> = r.get(6)?;
            Ok(RunningJob {
                id: r.get(0)?,
                model: r.get(1)?,
                batch: r.get(2)?,
                item_id: r.get(3)?,
                attempt: r.get(4)?,
                runner: host.zip(pid),
                started_at: r.get(7)?,
                lease_expires_at: r.get(8)?,
                now,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn runners(&self, since_ms: Option<i64>, limit: Option<usize>) -> Result<Vec<RunnerRow>> {
        let now = now_ms();
        let limit = limit.map_or(-1, |l| l as i64);
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.id, r.host, r.pid, r.pid_start, r.boot_id, r.started_at, r.heartbeat_at,
                    r.stopped_at, r.stop_reason,
                    (SELECT COUNT(*) FROM jobs j WHERE j.runner_id = r.id AND j.state = 'running')
             FROM runners r WHERE r.stopped_at IS NULL OR r.heartbeat_at >= ?1
             ORDER BY r.id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            rusqlite::params![since_ms.unwrap_or(i64::MIN), limit],
            |r| {
                Ok(RunnerRow {
                    record: RunnerRecord {
                        id: r.get(0)?,
                        host: r.get(1)?,
                        pid: r.get(2)?,
                        pid_start: r.get(3)?,
                        boot_id: r.get(4)?,
                        stopped: r.get::<_, Option<i64>>(7)?.is_some(),
                    },
                    started_at: r.get(5)?,
                    heartbeat_at: r.get(6)?,
                    stop_reason: r.get(8)?,
                    jobs_held: r.get(9)?,
                    now,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn outcomes_since(&self, model: &str, outcome: Outcome, since_ms: i64) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT COUNT(*) FROM attempts a
                 WHERE a.model = ?1 AND a.outcome = ?2 AND a.started_at >= ?3",
            )?
            .query_row(rusqlite::params![model, outcome.as_str(), since_ms], |r| {
                r.get(0)
            })?)
    }
}
