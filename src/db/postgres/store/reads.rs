//! Reports and exports on PostgreSQL: read from one consistent snapshot with the SQLite
//! engine's code.

use anyhow::Result;
use std::collections::BTreeMap;

use super::PgStore;
use crate::db::export::*;
use crate::db::report::*;
use crate::db::store::*;
use crate::domain::{JobState, Outcome};

/// The report sections read a consistent snapshot (see [`crate::db::postgres::snapshot`]) with the SQLite
/// engine's code: one definition of every number, percentiles included, on both engines.
impl PgStore {
    fn snap<T>(&self, f: impl FnOnce(&crate::db::Db) -> Result<T>) -> Result<T> {
        if self.snap.borrow().is_none() {
            let db = crate::db::Db::in_memory(self.snapshot()?);
            *self.snap.borrow_mut() = Some(db);
        }
        f(self.snap.borrow().as_ref().expect("taken above"))
    }
}

impl ReportSource for PgStore {
    fn token_sums(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<TokenSum>> {
        self.snap(|d| d.token_sums(scope, by))
    }

    fn models_in_scope(&self, filter: &Filter) -> Result<Vec<String>> {
        self.snap(|d| d.models_in_scope(filter))
    }

    fn generation_sums(&self, scope: &AttemptScope) -> Result<Vec<GenerationSums>> {
        self.snap(|d| d.generation_sums(scope))
    }

    fn failed_jobs(&self, scope: &AttemptScope, cap: usize) -> Result<(i64, Vec<FailedJob>)> {
        self.snap(|d| d.failed_jobs(scope, cap))
    }

    fn done_span(&self, filter: &Filter) -> Result<Option<(i64, i64)>> {
        self.snap(|d| d.done_span(filter))
    }

    fn done_per_interval(
        &self,
        filter: &Filter,
        start: i64,
        step_ms: i64,
        span: (i64, i64),
    ) -> Result<Vec<DoneInBucket>> {
        self.snap(|d| d.done_per_interval(filter, start, step_ms, span))
    }

    fn ok_durations_at(
        &self,
        scope: &AttemptScope,
        model: &str,
        positions: &[i64],
    ) -> Result<Vec<i64>> {
        self.snap(|d| d.ok_durations_at(scope, model, positions))
    }

    fn status(&self, scope: &AttemptScope) -> Result<(Vec<(String, ModelStatus)>, i64)> {
        self.snap(|d| d.status(scope))
    }

    fn running_jobs(&self, scope: &AttemptScope, limit: usize) -> Result<Vec<RunningJob>> {
        self.snap(|d| d.running_jobs(scope, limit))
    }

    fn runners(&self, since_ms: Option<i64>, limit: Option<usize>) -> Result<Vec<RunnerRow>> {
        self.snap(|d| d.runners(since_ms, limit))
    }

    fn each_repeat_grade(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(RepeatGrade) -> Result<()>,
    ) -> Result<()> {
        self.snap(|d| d.each_repeat_grade(filter, each))
    }

    fn cached_done(&self, scope: &AttemptScope) -> Result<i64> {
        self.snap(|d| d.cached_done(scope))
    }

    fn clock(&self) -> Result<i64> {
        self.snap(|d| d.clock())
    }

    fn flow(&self, filter: &Filter, since_ms: i64) -> Result<BTreeMap<String, ModelFlow>> {
        self.snap(|d| d.flow(filter, since_ms))
    }

    fn phase_samples(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        cold_load_ms: f64,
    ) -> Result<Vec<PhaseSample>> {
        self.snap(|d| d.phase_samples(scope, by, cold_load_ms))
    }

    fn generates(&self, filter: &Filter, model: &str) -> Result<bool> {
        self.snap(|d| d.generates(filter, model))
    }

    fn grade_groups(&self, scope: &AttemptScope) -> Result<Vec<GradeGroup>> {
        self.snap(|d| d.grade_groups(scope))
    }

    fn grader_sums(&self, scope: &AttemptScope) -> Result<Vec<GraderSums>> {
        self.snap(|d| d.grader_sums(scope))
    }

    fn grader_jobs(&self, filter: &Filter) -> Result<Vec<GraderJobs>> {
        self.snap(|d| d.grader_jobs(filter))
    }

    fn grader_pairs(&self, scope: &AttemptScope) -> Result<Vec<GraderPair>> {
        self.snap(|d| d.grader_pairs(scope))
    }

    fn outcomes_since(&self, model: &str, outcome: Outcome, since_ms: i64) -> Result<i64> {
        self.snap(|d| d.outcomes_since(model, outcome, since_ms))
    }

    fn latency(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<LatencyGroup>> {
        self.snap(|d| d.latency(scope, by))
    }

    fn metric_percentiles(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        metric: StreamMetric,
        ps: &[f64],
    ) -> Result<BTreeMap<Vec<String>, Vec<f64>>> {
        self.snap(|d| d.metric_percentiles(scope, by, metric, ps))
    }

    fn stream_rates(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
    ) -> Result<BTreeMap<Vec<String>, f64>> {
        self.snap(|d| d.stream_rates(scope, by))
    }

    fn outcome_counts(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<OutcomeCounts>> {
        self.snap(|d| d.outcome_counts(scope, by))
    }

    fn jobs(
        &self,
        scope: &AttemptScope,
        state: Option<JobState>,
        outcome: Option<Outcome>,
    ) -> Result<(Vec<JobRow>, i64)> {
        self.snap(|d| d.jobs(scope, state, outcome))
    }
}

/// Exports read the same snapshot as the reports, with the SQLite code.
impl ExportSource for PgStore {
    fn each_output(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(OutputRow) -> Result<()>,
    ) -> Result<u64> {
        self.snap(|d| d.each_output(filter, each))
    }

    fn grades_of(&self, job_id: i64) -> Result<Vec<GradeRow>> {
        self.snap(|d| d.grades_of(job_id))
    }

    fn grade_pairs(&self, filter: &Filter) -> Result<Vec<(String, String)>> {
        self.snap(|d| d.grade_pairs(filter))
    }

    fn each_attempt(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(AttemptRow) -> Result<()>,
    ) -> Result<u64> {
        self.snap(|d| d.each_attempt(filter, each))
    }

    fn each_batch_result(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(BatchResultRow) -> Result<()>,
    ) -> Result<u64> {
        self.snap(|d| d.each_batch_result(filter, each))
    }
}
