//! Reports and exports on PostgreSQL: the SQL of `report`, `grades`, `latency` and `export`
//! (under `src/db/postgres/`) run natively, in read-only REPEATABLE READ transactions, so the
//! memory and time of a report follow what it shows, not the size of the database.

use anyhow::Result;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Row};
use std::cell::Cell;
use std::collections::BTreeMap;

use super::PgStore;
use crate::db::export::*;
use crate::db::postgres::queue::Params;
use crate::db::postgres::{export, grades, latency, report};
use crate::db::report::*;
use crate::db::store::*;
use crate::domain::{JobState, Outcome};

/// Rows fetched from a cursor at a time: a round trip per batch, memory for one batch.
const BATCH: usize = 1000;

/// How long a read-only command's transaction may sit idle (its reader paused, e.g. an export
/// piped into a pager) before the server ends it. The default for every session, 60 s, is
/// for writers; a reader pins only old row versions, so it may wait longer, but not forever.
const READER_IDLE: &str = "10min";

#[derive(Default)]
pub struct Reads {
    /// A read-only command's transaction is open: every read sees its snapshot.
    held: Cell<bool>,
    /// Cursors declared so far (their names are numbered).
    cursors: Cell<u32>,
}

const BEGIN: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

impl PgStore {
    /// For a read-only command (`report`, `export`, `models list`): opens the one transaction
    /// all its reads run in, so every section of a report and every row of an export see the
    /// same moment. It ends with the connection. Ages count from the database's clock: this
    /// host's clock is set to read it (`util::now_ms`), so a host whose clock is off still
    /// shows true ages and `--since` windows.
    pub fn hold_snapshot(&self) -> Result<()> {
        let now = self.with(|c| {
            c.batch_execute(&format!(
                "{BEGIN}; SET LOCAL idle_in_transaction_session_timeout = '{READER_IDLE}'"
            ))?;
            report::clock(c)
        })?;
        self.reads.held.set(true);
        crate::util::set_clock_offset(now - crate::util::now_ms());
        Ok(())
    }

    /// Runs `f` in the held snapshot, or (a runner reading its spending) in a short
    /// read-only transaction of its own.
    fn snapshot<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if self.reads.held.get() {
            return f();
        }
        self.with(|c| Ok(c.batch_execute(BEGIN)?))?;
        let result = f();
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = self.with(|c| Ok(c.batch_execute(end)?));
        let value = result?;
        ended?;
        Ok(value)
    }

    fn read<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        self.snapshot(|| self.with(f))
    }

    /// Streams the rows of `sql` to `each` through a cursor, `BATCH` rows at a time. The
    /// connection is free between batches, so `each` may read more (a job's grades).
    fn each_fetched(
        &self,
        sql: &str,
        p: &Params,
        mut each: impl FnMut(&Row) -> Result<()>,
    ) -> Result<u64> {
        self.snapshot(|| {
            let name = format!("llmbatch_rows_{}", self.reads.cursors.get());
            self.reads.cursors.set(self.reads.cursors.get() + 1);
            self.with(|c| {
                c.execute(
                    &format!("DECLARE {name} NO SCROLL CURSOR FOR {sql}"),
                    &p.refs(),
                )?;
                Ok(())
            })?;
            let mut n = 0;
            loop {
                let rows =
                    self.with(|c| Ok(c.query(&format!("FETCH {BATCH} FROM {name}"), &[])?))?;
                for r in &rows {
                    each(r)?;
                    n += 1;
                }
                if rows.len() < BATCH {
                    break;
                }
            }
            self.with(|c| Ok(c.batch_execute(&format!("CLOSE {name}"))?))?;
            Ok(n)
        })
    }
}

impl ReportSource for PgStore {
    fn token_sums(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<TokenSum>> {
        self.read(|c| report::token_sums(c, scope, by))
    }

    fn models_in_scope(&self, filter: &Filter) -> Result<Vec<String>> {
        self.read(|c| report::models_in_scope(c, filter))
    }

    fn generation_sums(&self, scope: &AttemptScope) -> Result<Vec<GenerationSums>> {
        self.read(|c| report::generation_sums(c, scope))
    }

    fn failed_jobs(&self, scope: &AttemptScope, cap: usize) -> Result<(i64, Vec<FailedJob>)> {
        self.read(|c| report::failed_jobs(c, scope, cap))
    }

    fn done_span(&self, filter: &Filter) -> Result<Option<(i64, i64)>> {
        self.read(|c| report::done_span(c, filter))
    }

    fn done_per_interval(
        &self,
        filter: &Filter,
        start: i64,
        step_ms: i64,
        span: (i64, i64),
    ) -> Result<Vec<DoneInBucket>> {
        self.read(|c| report::done_per_interval(c, filter, start, step_ms, span))
    }

    fn ok_durations_at(
        &self,
        scope: &AttemptScope,
        model: &str,
        positions: &[i64],
    ) -> Result<Vec<i64>> {
        self.read(|c| latency::ok_durations_at(c, scope, model, positions))
    }

    fn status(&self, scope: &AttemptScope) -> Result<(Vec<(String, ModelStatus)>, i64)> {
        self.read(|c| report::status(c, scope))
    }

    fn running_jobs(&self, scope: &AttemptScope, limit: usize) -> Result<Vec<RunningJob>> {
        self.read(|c| report::running_jobs(c, scope, limit))
    }

    fn runners(&self, since_ms: Option<i64>, limit: Option<usize>) -> Result<Vec<RunnerRow>> {
        self.read(|c| report::runners(c, since_ms, limit))
    }

    fn each_repeat_grade(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(RepeatGrade) -> Result<()>,
    ) -> Result<()> {
        let mut p = Params::default();
        let sql = grades::repeat_grades_sql(filter, &mut p);
        self.each_fetched(&sql, &p, |r| each(grades::repeat_grade(r)))?;
        Ok(())
    }

    fn cached_done(&self, scope: &AttemptScope) -> Result<i64> {
        self.read(|c| report::cached_done(c, scope))
    }

    fn clock(&self) -> Result<i64> {
        self.read(report::clock)
    }

    fn flow(&self, filter: &Filter, since_ms: i64) -> Result<BTreeMap<String, ModelFlow>> {
        self.read(|c| report::flow(c, filter, since_ms))
    }

    fn phase_samples(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        cold_load_ms: f64,
    ) -> Result<Vec<PhaseSample>> {
        self.read(|c| report::phase_samples(c, scope, by, cold_load_ms))
    }

    fn generates(&self, filter: &Filter, model: &str) -> Result<bool> {
        self.read(|c| report::generates(c, filter, model))
    }

    fn grade_groups(&self, scope: &AttemptScope) -> Result<Vec<GradeGroup>> {
        self.read(|c| grades::grade_groups(c, scope))
    }

    fn grader_sums(&self, scope: &AttemptScope) -> Result<Vec<GraderSums>> {
        self.read(|c| grades::grader_sums(c, scope))
    }

    fn grader_jobs(&self, filter: &Filter) -> Result<Vec<GraderJobs>> {
        self.read(|c| grades::grader_jobs(c, filter))
    }

    fn grader_pairs(&self, scope: &AttemptScope) -> Result<Vec<GraderPair>> {
        self.read(|c| grades::grader_pairs(c, scope))
    }

    fn outcomes_since(&self, model: &str, outcome: Outcome, since_ms: i64) -> Result<i64> {
        self.read(|c| report::outcomes_since(c, model, outcome, since_ms))
    }

    fn latency(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<LatencyGroup>> {
        self.read(|c| latency::latency(c, scope, by))
    }

    fn metric_percentiles(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        metric: StreamMetric,
        ps: &[f64],
    ) -> Result<BTreeMap<Vec<String>, Vec<f64>>> {
        self.read(|c| latency::metric_percentiles(c, scope, by, metric, ps))
    }

    fn stream_rates(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
    ) -> Result<BTreeMap<Vec<String>, f64>> {
        self.read(|c| latency::stream_rates(c, scope, by))
    }

    fn outcome_counts(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<OutcomeCounts>> {
        self.read(|c| report::outcome_counts(c, scope, by))
    }

    fn each_job(
        &self,
        scope: &AttemptScope,
        state: Option<JobState>,
        outcome: Option<Outcome>,
        each: &mut dyn FnMut(JobRow) -> Result<()>,
    ) -> Result<()> {
        let mut p = Params::default();
        let sql = report::jobs_sql(scope, state, outcome, &mut p);
        self.each_fetched(&sql, &p, |r| each(report::job_row(r)))?;
        Ok(())
    }
}

impl ExportSource for PgStore {
    fn each_output(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(OutputRow) -> Result<()>,
    ) -> Result<u64> {
        let mut p = Params::default();
        let sql = export::outputs_sql(filter, &mut p);
        self.each_fetched(&sql, &p, |r| each(export::output_row(r)))
    }

    fn grades_of(&self, job_id: i64) -> Result<Vec<GradeRow>> {
        // Once per exported row: prepared once, so each is one round trip.
        self.snapshot(|| {
            self.with_cache(|c, st| {
                let stmt = st.get(c, export::GRADES_OF)?;
                let rows = c.query(&stmt, &[&job_id])?;
                Ok(rows.iter().map(export::grade_row).collect())
            })
        })
    }

    fn grade_pairs(&self, filter: &Filter) -> Result<Vec<(String, String)>> {
        let mut p = Params::default();
        let sql = export::grade_pairs_sql(filter, &mut p);
        self.read(|c| {
            let mut rows = c.query_raw(&sql, p.refs())?;
            let mut pairs = Vec::new();
            while let Some(r) = rows.next()? {
                pairs.push((r.get(0), r.get(1)));
            }
            Ok(pairs)
        })
    }

    fn each_attempt(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(AttemptRow) -> Result<()>,
    ) -> Result<u64> {
        let mut p = Params::default();
        let sql = export::attempts_sql(filter, &mut p);
        self.each_fetched(&sql, &p, |r| each(export::attempt_row(r)))
    }

    fn each_batch_result(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(BatchResultRow) -> Result<()>,
    ) -> Result<u64> {
        let mut p = Params::default();
        let sql = export::batch_results_sql(filter, &mut p);
        self.each_fetched(&sql, &p, |r| each(export::batch_result_row(r)))
    }
}
