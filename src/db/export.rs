//! The export side of the seam: rows streamed to a callback, so memory stays flat.

use anyhow::Result;
use serde_json::Value;

use super::store::Filter;

/// One generated job as exported, with its answer when done.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRow {
    pub job_id: i64,
    pub batch: String,
    pub item_id: String,
    /// The sample number of `enqueue --repeat`.
    pub repeat: i64,
    pub model: String,
    pub vars: Value,
    pub prompt: String,
    /// A chat item's messages (its prompt is then their rendered text).
    pub messages: Option<Value>,
    pub output: Option<String>,
    pub reasoning: Option<String>,
    pub state: String,
    pub attempts: i64,
    pub last_outcome: Option<String>,
    pub error: Option<String>,
    pub latency_ms: Option<i64>,
    /// Streamed answers: time to first token and per output token (ms).
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub finished_at: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    /// The answer was cut at a length (the model's limit, or llmbatch's 16 MiB capture bound).
    pub truncated: bool,
}

/// One grade of an output (a grade job, graded or not yet).
#[derive(Debug, Clone, PartialEq)]
pub struct GradeRow {
    pub grader: String,
    pub rubric: String,
    pub state: String,
    pub pass: Option<bool>,
    pub score: Option<f64>,
    pub reason: Option<String>,
    pub fields: Value,
}

/// One finished attempt of a generated job, for the joblog.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub job_id: i64,
    pub endpoint: Option<String>,
    pub started_at: i64,
    pub duration_ms: Option<i64>,
    /// Bytes of the prompt sent and the output received.
    pub sent: i64,
    pub received: i64,
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub model: String,
    pub batch: String,
    pub item_id: String,
}

/// A generated job as the OpenAI Batch API output file shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResultRow {
    pub job_id: i64,
    pub item_id: String,
    pub model: String,
    pub state: String,
    pub last_outcome: Option<String>,
    pub error: Option<String>,
    pub attempt_id: Option<i64>,
    pub http_status: Option<i64>,
    pub output: Option<String>,
    pub reasoning: Option<String>,
    pub finished_at: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub done_reason: Option<String>,
}

/// Rows for `export`. Read only; each `each_*` streams in order and returns how many rows.
pub trait ExportSource {
    /// The generated jobs in scope, by id.
    fn each_output(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(OutputRow) -> Result<()>,
    ) -> Result<u64>;

    /// The grades of one generated job, by grader, rubric and id.
    fn grades_of(&self, job_id: i64) -> Result<Vec<GradeRow>>;

    /// The distinct (grader, rubric) pairs grading the generated jobs in scope.
    fn grade_pairs(&self, filter: &Filter) -> Result<Vec<(String, String)>>;

    /// Finished attempts of the generated jobs in scope, by start.
    fn each_attempt(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(AttemptRow) -> Result<()>,
    ) -> Result<u64>;

    /// The generated jobs in scope with their last attempt, by id.
    fn each_batch_result(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(BatchResultRow) -> Result<()>,
    ) -> Result<u64>;
}
