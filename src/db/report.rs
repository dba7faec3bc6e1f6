//! The report side of the seam: typed rows per report section, read from any engine.

use anyhow::Result;
use std::collections::BTreeMap;

use super::store::{Filter, RunnerRecord};
use crate::domain::{JobState, Outcome};

/// What a report groups by, besides what it shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GroupKey {
    Batch,
    Model,
    Endpoint,
}

impl GroupKey {
    pub fn column(self) -> &'static str {
        match self {
            GroupKey::Batch => "batch",
            GroupKey::Model => "model",
            GroupKey::Endpoint => "endpoint",
        }
    }
}

/// The attempts a report looks at: jobs in `filter`, attempts started since `since_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptScope {
    pub filter: Filter,
    pub since_ms: Option<i64>,
}

/// Tokens of one group of finished attempts (successful and failed alike).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSum {
    /// The group's key values, in the order asked for (an attempt with no endpoint: "").
    pub key: Vec<String>,
    pub model: String,
    pub attempts: i64,
    /// Distinct jobs with a charged attempt in the group: throttled, unreachable or
    /// interrupted attempts never reached the model, and a job they alone touched cost nothing.
    pub jobs: i64,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
}

/// Output tokens and generation seconds of a model's successful attempts: the backend's own
/// (Ollama's `eval_count` / `eval_duration`) where it reports them, else a streamed answer's
/// tokens after the first and the time from first token to end (e2e − TTFT).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSums {
    pub model: String,
    pub tokens: Option<f64>,
    pub secs: Option<f64>,
}

/// A failed job, as the page lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedJob {
    pub id: i64,
    pub model: String,
    pub batch: String,
    pub item_id: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
}

/// Successful attempts of a model finished in one interval.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneInBucket {
    pub model: String,
    /// The interval's number, counted from the start asked for.
    pub bucket: i64,
    pub done: i64,
}

/// One model's jobs by state, for `report status`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelStatus {
    /// pending (ready), waiting (pending on a parent not done), running, done, failed,
    /// cancelled.
    pub counts: [i64; 6],
    /// When the oldest running attempt started.
    pub oldest_running: Option<i64>,
}

/// A running job and its attempt, for `report status`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub id: i64,
    pub model: String,
    pub batch: String,
    pub item_id: String,
    pub attempt: i64,
    /// The holder's host and pid, when it is registered.
    pub runner: Option<(String, i64)>,
    pub started_at: i64,
    pub lease_expires_at: Option<i64>,
    /// The engine's clock when read: ages and lease left count from it.
    pub now: i64,
}

/// A registered runner, for `report runners`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerRow {
    pub record: RunnerRecord,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stop_reason: Option<String>,
    pub jobs_held: i64,
    /// The engine's clock when read.
    pub now: i64,
}

/// The nearest rank of quantile `p` among `n` samples (1-based): what every percentile in the
/// reports means.
pub fn rank(p: f64, n: i64) -> i64 {
    ((p * n as f64).ceil() as i64).clamp(1, n.max(1))
}

/// Latency of one group's successful attempts (ms).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyGroup {
    pub key: Vec<String>,
    pub n: i64,
    pub mean_ms: f64,
    pub max_ms: i64,
    /// Nearest-rank p50, p95 and p99.
    pub p50_95_99_ms: [i64; 3],
}

/// A per-attempt streaming measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMetric {
    /// Time to first token.
    Ttft,
    /// Time per output token.
    Tpot,
}

/// Attempts of one group per outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeCounts {
    pub key: Vec<String>,
    /// Per outcome, in the order of [`Outcome::ALL`].
    pub counts: [i64; Outcome::ALL.len()],
    /// Answers cut at the length limit (`done_reason` = `length`).
    pub truncated: i64,
}

/// A job, for `report jobs`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub batch: String,
    pub item_id: String,
    pub model: String,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: i64,
    /// The sample number of `enqueue --repeat`.
    pub repeat: i64,
    /// The request hash of its last attempt, and the attempt a cached answer came from.
    pub cache_key: Option<String>,
    pub cached_from: Option<i64>,
}

/// A model's jobs done since a time, and its open work now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelFlow {
    /// Successful attempts finished since the time.
    pub done: i64,
    /// Tokens those used (prompt + output).
    pub tokens: i64,
    /// When the first of them started.
    pub first_start: Option<i64>,
    pub pending: i64,
    pub running: i64,
}

/// One successful attempt with the backend's own timings (Ollama), for the latency breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSample {
    pub key: Vec<String>,
    /// Its load took longer than `cold_load_ms`.
    pub cold: bool,
    pub eval_tokens: Option<f64>,
    pub eval_ns: Option<f64>,
    /// Load, prompt evaluation, generation and client overhead (ms), where known.
    pub phases_ms: [Option<f64>; 4],
}

/// Verdicts of one (graded model, grader, rubric).
#[derive(Debug, Clone, PartialEq)]
pub struct GradeGroup {
    pub model: String,
    pub grader: String,
    pub rubric: String,
    pub n: i64,
    pub passed: i64,
    pub with_verdict: i64,
    pub mean_score: Option<f64>,
    pub with_score: i64,
    pub median_score: Option<f64>,
}

/// Verdicts of one (grader, rubric) over everything it graded.
#[derive(Debug, Clone, PartialEq)]
pub struct GraderSums {
    pub grader: String,
    pub rubric_id: i64,
    pub rubric: String,
    pub n: i64,
    pub passed: i64,
    pub with_verdict: i64,
    pub mean_score: Option<f64>,
}

/// Grade jobs of one (grader, rubric) that have no verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct GraderJobs {
    pub grader: String,
    pub rubric_id: i64,
    pub rubric: String,
    /// Pending or running.
    pub pending: i64,
    pub failed: i64,
    /// Attempts whose answer could not be read.
    pub parse_failures: i64,
}

/// Two graders' verdicts on the same outputs (same rubric).
#[derive(Debug, Clone, PartialEq)]
pub struct GraderPair {
    pub grader_a: String,
    pub grader_b: String,
    pub rubric: String,
    /// Outputs both gave a verdict on.
    pub n: i64,
    pub agree: i64,
    pub yes_a: i64,
    pub yes_b: i64,
    pub mean_abs_score_diff: Option<f64>,
}

/// The verdict of one graded repeat, for `report consistency`.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatGrade {
    pub model: String,
    pub grader: String,
    pub rubric: String,
    pub rubric_id: i64,
    pub batch: String,
    pub item_id: String,
    pub pass: Option<bool>,
    pub score: Option<f64>,
}

/// Typed rows for the report sections. Read only.
pub trait ReportSource {
    /// Token sums per group of `by` (which holds `Model`: prices are per model) over the
    /// finished attempts in scope, ordered by the group.
    fn token_sums(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<TokenSum>>;

    /// Per group of `by` (sorted), latency of the successful attempts in scope.
    fn latency(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<LatencyGroup>>;

    /// Per group, nearest-rank percentiles `ps` of a streaming measure (ms) over the
    /// successful attempts in scope that have it.
    fn metric_percentiles(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        metric: StreamMetric,
        ps: &[f64],
    ) -> Result<BTreeMap<Vec<String>, Vec<f64>>>;

    /// Per group, the mean of output tokens / end-to-end seconds over streamed successes.
    fn stream_rates(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
    ) -> Result<BTreeMap<Vec<String>, f64>>;

    /// Per group of `by` (sorted), attempts in scope per outcome.
    fn outcome_counts(&self, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<OutcomeCounts>>;

    /// Jobs in scope (updated since `since_ms`), optionally in one state or last ended so,
    /// by id, handed to `each` one at a time: a listing may hold every job of the queue.
    fn each_job(
        &self,
        scope: &AttemptScope,
        state: Option<JobState>,
        outcome: Option<Outcome>,
        each: &mut dyn FnMut(JobRow) -> Result<()>,
    ) -> Result<()>;

    /// The engine's clock (ms since the epoch): what report ages and windows count from.
    fn clock(&self) -> Result<i64>;

    /// Per model (sorted): successful attempts finished since `since_ms`, and open work now.
    fn flow(&self, filter: &Filter, since_ms: i64) -> Result<BTreeMap<String, ModelFlow>>;

    /// The successful attempts in scope that carry backend timings, with their group.
    fn phase_samples(
        &self,
        scope: &AttemptScope,
        by: &[GroupKey],
        cold_load_ms: f64,
    ) -> Result<Vec<PhaseSample>>;

    /// Whether the model has generate jobs in scope (a model that only grades is not ranked).
    fn generates(&self, filter: &Filter, model: &str) -> Result<bool>;

    /// Grades of the generated jobs in scope (`since_ms` on the grade attempts), per
    /// (model, grader, rubric), sorted.
    fn grade_groups(&self, scope: &AttemptScope) -> Result<Vec<GradeGroup>>;

    /// The same per (grader, rubric), sorted.
    fn grader_sums(&self, scope: &AttemptScope) -> Result<Vec<GraderSums>>;

    /// Grade jobs of the generated jobs in scope without a verdict, per (grader, rubric).
    fn grader_jobs(&self, filter: &Filter) -> Result<Vec<GraderJobs>>;

    /// Pairs of graders on the same outputs, sorted.
    fn grader_pairs(&self, scope: &AttemptScope) -> Result<Vec<GraderPair>>;

    /// Verdicts of done grade jobs on the generated jobs in scope, ordered by model, grader,
    /// rubric id, batch and item: streamed to `each`.
    fn each_repeat_grade(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(RepeatGrade) -> Result<()>,
    ) -> Result<()>;

    /// Models a per-model section covers: configured ones and those with jobs or attempts;
    /// with a batch, ids or models in the filter, only those with jobs in scope. Sorted.
    fn models_in_scope(&self, filter: &Filter) -> Result<Vec<String>>;

    /// Per model, over successful attempts in scope: generation token and time sums.
    fn generation_sums(&self, scope: &AttemptScope) -> Result<Vec<GenerationSums>>;

    /// Failed jobs in scope (`since_ms` on their last update): how many, and the newest
    /// `cap` of them.
    fn failed_jobs(&self, scope: &AttemptScope, cap: usize) -> Result<(i64, Vec<FailedJob>)>;

    /// First and last finish of successful attempts in the filter's scope.
    fn done_span(&self, filter: &Filter) -> Result<Option<(i64, i64)>>;

    /// Successful attempts finished within `lo..=hi` per model and interval of `step_ms`
    /// counted from `start`, ordered by model and interval.
    fn done_per_interval(
        &self,
        filter: &Filter,
        start: i64,
        step_ms: i64,
        span: (i64, i64),
    ) -> Result<Vec<DoneInBucket>>;

    /// Durations (ms) of the model's successful attempts in scope at these 1-based positions
    /// of the ascending order (`positions` ascending; positions past the end are left out).
    fn ok_durations_at(
        &self,
        scope: &AttemptScope,
        model: &str,
        positions: &[i64],
    ) -> Result<Vec<i64>>;

    /// Per model (sorted), jobs in scope (created since `since_ms`) by state; the engine's
    /// clock when read.
    fn status(&self, scope: &AttemptScope) -> Result<(Vec<(String, ModelStatus)>, i64)>;

    /// Done jobs in scope (created since `since_ms`) answered from the cache.
    fn cached_done(&self, scope: &AttemptScope) -> Result<i64>;

    /// Running jobs in scope (jobs created since `since_ms`), oldest attempt first.
    fn running_jobs(&self, scope: &AttemptScope, limit: usize) -> Result<Vec<RunningJob>>;

    /// Runners newest first: those not stopped, and with `since_ms` those whose heartbeat
    /// is that recent (else every one); at most `limit` (None: all).
    fn runners(&self, since_ms: Option<i64>, limit: Option<usize>) -> Result<Vec<RunnerRow>>;

    /// Attempts of the model that ended so, started at or after `since_ms`.
    fn outcomes_since(&self, model: &str, outcome: Outcome, since_ms: i64) -> Result<i64>;
}
