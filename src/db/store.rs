//! The storage seam: what commands, the runner and reports ask of a database, named by intent
//! (as River's driver interface), each query taking a params struct. Every engine (SQLite
//! under `db/sqlite/`, PostgreSQL next) implements these traits with its own SQL; nothing
//! outside `src/db/` sees SQL text or a driver type.
//!
//! Conventions every engine keeps:
//! - ids are `i64`, timestamps are ms since the Unix epoch;
//! - "now" is the engine's clock wherever it decides (leases, `not_before`, reaping), so a
//!   retry's wait is given as a delay ([`Next::Retry`]), never as a host timestamp;
//! - each method is one transaction unless it says otherwise; a method returning an error
//!   has changed nothing;
//! - every method takes `&self`: an engine whose client needs exclusive access keeps it
//!   behind a `RefCell` (a handle is used by one thread; [`Store::reopen`] gives another);
//! - a usage problem in the data (unknown ids, a changed item) is a
//!   [`crate::error::UsageError`], so the command exits 2.

use anyhow::Result;
use std::collections::HashMap;

use crate::domain::{Claim, Finish, JobState, Next, Outcome};
use crate::grading::Rubric;
use crate::models::ModelConfig;

pub use super::export::ExportSource;
pub use super::report::*;

/// Which jobs a command works on: `--batch`, `--model`, `--ids-file`. Plain data: each
/// engine binds it as it likes.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    pub batch: Option<String>,
    pub models: Vec<String>,
    /// Only these job ids (checked to exist with [`QueueStore::unknown_ids`]).
    pub ids: Option<Vec<i64>>,
}

impl Filter {
    /// Whether a job of this batch and model is in the batch/model part of the scope.
    pub fn covers(&self, batch: &str, model: &str) -> bool {
        self.batch.as_deref().is_none_or(|b| b == batch)
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
    }
}

/// Who a runner is, as the reaper later judges its liveness.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRunner {
    pub host: String,
    pub pid: i64,
    /// The pid's start time as the OS tells it (guards against pid reuse).
    pub pid_start: Option<String>,
    pub boot_id: Option<String>,
}

/// A registered runner, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerRecord {
    pub id: i64,
    pub host: String,
    pub pid: i64,
    pub pid_start: Option<String>,
    pub boot_id: Option<String>,
    pub stopped: bool,
}

/// An attempt that ended: its job moves as `next` says, fenced by the claim's lease token.
#[derive(Debug, Clone, Copy)]
pub struct FinishParams<'a> {
    pub claim: &'a Claim,
    pub finish: &'a Finish,
    pub next: Next,
}

/// Claim up to `endpoints.len()` runnable jobs of `model`, one per endpoint slot (an empty
/// string is a slot with no endpoint: the command backend).
#[derive(Debug, Clone, Copy)]
pub struct ClaimParams<'a> {
    pub model: &'a str,
    pub endpoints: &'a [String],
    /// Recorded on the attempt.
    pub timeout_s: f64,
}

/// One transaction: record these finishes, then take these claims.
#[derive(Debug, Clone)]
pub struct RecordAndClaimParams<'a> {
    pub runner_id: i64,
    pub lease_ms: i64,
    pub filter: &'a Filter,
    pub finishes: Vec<FinishParams<'a>>,
    pub claims: Vec<ClaimParams<'a>>,
}

/// What [`QueueStore::record_and_claim`] did.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Per finish: false when the job was no longer ours (reaped meanwhile): nothing written.
    pub kept: Vec<bool>,
    /// Per claim request, the jobs claimed (possibly fewer than asked).
    pub claims: Vec<Vec<Claim>>,
}

/// A running job, with what the reaper needs to judge whether its holder still lives.
#[derive(Debug, Clone, PartialEq)]
pub struct StuckJob {
    pub job_id: i64,
    pub model: String,
    pub batch: String,
    pub token: i64,
    pub attempt_id: Option<i64>,
    pub max_attempts: Option<i64>,
    /// How long ago the lease expired, by the engine's clock (negative: not yet).
    pub lease_expired_ms: i64,
    pub runner_id: Option<i64>,
    /// The holder's record; None when the job names no runner or an unknown one.
    pub runner: Option<RunnerRecord>,
}

/// A stuck job to put back: its attempt ends `lost` (uncharged) and the job goes back to
/// pending, or to failed once lost more often than its budget. Fenced by `token`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescue {
    pub job_id: i64,
    pub model: String,
    pub token: i64,
    pub attempt_id: Option<i64>,
    pub max_attempts: Option<i64>,
    /// Stored as the job's last error and the attempt's error.
    pub error: String,
}

/// Failed and cancelled jobs back to pending.
#[derive(Debug, Clone, Copy)]
pub struct ResumeParams<'a> {
    pub filter: &'a Filter,
    /// Only jobs whose last attempt ended so.
    pub outcome: Option<Outcome>,
    /// More attempts each; None: a fresh budget of the model's max attempts.
    pub extra_attempts: Option<i64>,
    /// Only list what would be resumed.
    pub dry_run: bool,
}

/// Grade jobs for every generated job in scope, one per grader.
#[derive(Debug, Clone, Copy)]
pub struct EnqueueGradesParams<'a> {
    pub filter: &'a Filter,
    pub graders: &'a [String],
    pub rubric: &'a Rubric,
}

/// What [`QueueStore::enqueue_grades`] found and did. When `outputs` is 0 nothing was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GradesQueued {
    /// The rubric as stored.
    pub rubric_id: i64,
    /// Generated jobs in scope.
    pub outputs: i64,
    /// Of those, not yet done (their grades wait for them).
    pub waiting: i64,
    /// Grade jobs added (the rest were queued already).
    pub new: i64,
}

/// Jobs in a scope whose item lacks a variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar {
    pub count: i64,
    /// One of them to name: (batch, item id).
    pub example: Option<(String, String)>,
}

/// One item of an enqueue: its id, rendered prompt, and the JSON texts of its variables, chat
/// messages and request options.
#[derive(Debug, Clone, Copy)]
pub struct NewItem<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub vars: &'a str,
    pub messages: Option<&'a str>,
    pub options: Option<&'a str>,
}

/// An item already stored, as an enqueue met it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    pub prompt: String,
    pub vars: String,
    pub messages: Option<String>,
    pub options: Option<String>,
}

/// The jobs an enqueue added: ids `first..=last` (none when `first > last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewJobs {
    pub first: i64,
    pub last: i64,
}

/// The queue: every transition of a job's state.
pub trait QueueStore {
    /// Registers a runner (its heartbeat starts now) and returns its id.
    fn register_runner(&self, runner: &NewRunner) -> Result<i64>;

    /// A heartbeat: the runner's and its running jobs' leases run `lease_ms` from now.
    fn renew_leases(&self, runner_id: i64, lease_ms: i64) -> Result<()>;

    /// Marks a runner stopped, with a reason (`finished`, `interrupted`, `error`).
    fn stop_runner(&self, runner_id: i64, reason: &str) -> Result<()>;

    /// Marks runners found dead as stopped (`died`), unless they already are.
    fn mark_runners_died(&self, runner_ids: &[i64]) -> Result<()>;

    /// Finished attempts recorded and the next claims taken, in one transaction: claiming
    /// is state, attempt number, lease token and the attempt row together; finishing is
    /// fenced by the lease token. A grade job's verdict is stored with its finish.
    fn record_and_claim(&self, p: &RecordAndClaimParams) -> Result<Recorded>;

    /// Every running job not held by `except_runner`, with its holder's record: the reaper
    /// decides which are stuck.
    fn find_stuck(&self, except_runner: Option<i64>) -> Result<Vec<StuckJob>>;

    /// Puts stuck jobs back (see [`Rescue`]), in one transaction. Returns, per job actually
    /// rescued (its token still held), its index in `jobs` and the state it went to.
    fn rescue(&self, jobs: &[Rescue]) -> Result<Vec<(usize, JobState)>>;

    /// Finds stuck jobs, lets `pick` choose which to rescue, and rescues those, all in one
    /// write transaction (taken first, so what `pick` judges is what gets written). Returns
    /// what [`QueueStore::rescue`] returns, indexed into `pick`'s choice.
    fn reap(
        &self,
        except_runner: Option<i64>,
        pick: &mut dyn FnMut(Vec<StuckJob>) -> Vec<Rescue>,
    ) -> Result<Vec<(usize, JobState)>>;

    /// Every job the runner still holds back to pending, uncharged, its attempt
    /// `interrupted`. Returns how many.
    fn release_runner(&self, runner_id: i64) -> Result<usize>;

    /// Failed and cancelled jobs back to pending; returns their ids in order.
    fn resume(&self, p: &ResumeParams) -> Result<Vec<i64>>;

    /// Stores the rubric and queues grade jobs, in one transaction.
    fn enqueue_grades(&self, p: &EnqueueGradesParams) -> Result<GradesQueued>;

    /// Starts an enqueue: one transaction, committed by [`Enqueue::commit`], rolled back
    /// when dropped.
    fn enqueue(&self) -> Result<Box<dyn Enqueue + '_>>;

    /// The lowest id of a pending job of `model`: where a walk of [`QueueStore::runnable`]
    /// starts, past the done history of a long-lived database.
    fn first_pending(&self, model: &str) -> Result<Option<i64>>;

    /// Pending jobs of `model` in scope that could run now, with ids above `after`, in id
    /// order, at most `limit`: what `run --cache` looks up before anything is claimed. The
    /// claims are not taken (no attempt, token or lease).
    fn runnable(
        &self,
        model: &str,
        filter: &Filter,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Claim>>;

    /// The newest `ok` attempt answered under `key`, as a `cached` finish of it.
    fn cached_answer(&self, key: &str) -> Result<Option<Finish>>;

    /// Gives pending jobs their answers from the cache, in one transaction: a `cached`
    /// attempt each (not charged, no duration, no endpoint) and the job `done` (a grade job's
    /// verdict stored), fenced by its still being pending. Per answer: its attempt's id and
    /// number, or None when the job was taken meanwhile.
    fn answer_cached(
        &self,
        runner_id: i64,
        answers: &[(Claim, Finish)],
    ) -> Result<Vec<Option<(i64, i64)>>>;

    /// The ids (sorted) in `ids` that name no job.
    fn unknown_ids(&self, ids: &[i64]) -> Result<Vec<i64>>;

    /// Jobs in scope per state.
    fn state_counts(&self, filter: &Filter) -> Result<HashMap<JobState, i64>>;

    /// Models with pending jobs in scope.
    fn pending_models(&self, filter: &Filter) -> Result<Vec<String>>;

    /// Pending and running jobs of a model in scope.
    fn open_jobs(&self, filter: &Filter, model: &str) -> Result<u64>;

    /// Ms from now until the earliest pending job of the model in scope may run (≤ 0: now);
    /// None when it has none.
    fn next_runnable_in(&self, filter: &Filter, model: &str) -> Result<Option<i64>>;

    /// Whether work in scope remains: a running job, or a pending one whose parent (if any)
    /// is not failed, ignoring jobs of `stopped_models` (lanes that gave up).
    fn work_left(&self, filter: &Filter, stopped_models: &[String]) -> Result<bool>;

    /// Generated jobs in scope whose item has no variable `name`.
    fn items_missing_var(&self, filter: &Filter, name: &str) -> Result<MissingVar>;
}

/// Writing one enqueue's items and jobs, chunk by chunk, in one transaction.
pub trait Enqueue {
    /// Stores items of `batch` (an item already there is left as it is). When some were
    /// there already, returns what is stored for each of `items`, in order.
    fn add_items(&self, batch: &str, items: &[NewItem]) -> Result<Option<Vec<StoredItem>>>;

    /// Whether an item had jobs before this enqueue started.
    fn queued_before(&self, batch: &str, item_id: &str) -> Result<bool>;

    /// One generate job per (item id, model, repeat) (existing ones are kept); returns how
    /// many are new.
    fn add_jobs(&self, batch: &str, jobs: &[(&str, &str, i64)]) -> Result<u64>;

    /// Commits; returns the ids of the jobs added.
    fn commit(self: Box<Self>) -> Result<NewJobs>;
}

/// Models and rubrics.
pub trait Catalog {
    /// A model's settings; an unknown name gets the defaults (Ollama, unconfigured).
    fn model(&self, name: &str) -> Result<ModelConfig>;

    /// Every configured model, by name.
    fn models(&self) -> Result<Vec<ModelConfig>>;

    /// Creates or replaces a model's settings.
    fn save_model(&self, model: &ModelConfig) -> Result<()>;

    fn rubric(&self, id: i64) -> Result<Rubric>;

    /// Successful attempts of a model started in the last `window_ms`: count, nearest-rank
    /// p99 and max duration (ms). The raw material of timeout advice.
    fn ok_durations(&self, model: &str, window_ms: i64) -> Result<DurationSample>;

    /// Streamed successful attempts of a model started in the last `window_ms`: count and
    /// nearest-rank p99 of each one's longest silence between chunks (ms).
    fn ok_gaps(&self, model: &str, window_ms: i64) -> Result<(i64, Option<f64>)>;
}

/// Durations of successful attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurationSample {
    pub count: i64,
    pub p99_ms: Option<i64>,
    pub max_ms: Option<i64>,
}

/// An open database of any engine.
pub trait Store: QueueStore + Catalog + ReportSource + ExportSource + Send {
    /// Another handle on the same database, for another thread (the heartbeat).
    fn reopen(&self) -> Result<Box<dyn Store>>;

    /// Makes a database this command created visible under its name, once committed (see
    /// the SQLite engine's drafts). When it had to merge into one created meanwhile,
    /// returns the ids of the jobs it added. A no-op otherwise.
    fn publish(&mut self) -> Result<Option<NewJobs>>;
}
