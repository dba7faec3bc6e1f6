//! The queue's domain, free of any database: what an attempt's outcome means, what a claimed
//! job carries, what a finished attempt records, and the rule deciding where the job goes next.

use serde_json::{Map, Value};

/// What happened in one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

    /// What the outcome means, in a few words (shown by `--help`).
    pub fn about(self) -> &'static str {
        match self {
            Outcome::Ok => "An answer",
            Outcome::Timeout => "No answer within the model's timeout: killed",
            Outcome::Exit => "The command exited non-zero",
            Outcome::Crash => "Killed by a signal",
            Outcome::Spawn => "Could not start (bad command, bad URL); not retried",
            Outcome::Http => "An HTTP error (5xx retried, 4xx not)",
            Outcome::Unavailable => "The server could not be reached; not charged",
            Outcome::Empty => "No output",
            Outcome::Parse => "A grader's answer could not be read",
            Outcome::Lost => "The runner died; found by a reap",
            Outcome::Interrupted => "The runner was stopped by a signal; not charged",
            Outcome::Throttled => {
                "The server pushed back (429, 503, \"server busy\") or the quota ran out; not charged"
            }
            Outcome::Stall => "A streamed answer went silent past the model's `--stall-timeout`",
            Outcome::Cached => {
                "Answered from an earlier identical request (`run --cache`); not charged"
            }
        }
    }

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
    /// their own bound (the reaper fails a job lost more often than its budget), so a job that kills its runner still fails.
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

/// A job claimed by a runner, with everything its attempt needs.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job_id: i64,
    pub attempt_id: i64,
    pub number: i64,
    pub token: i64,
    pub started_at: i64,
    pub kind: JobKind,
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
    /// A grade job's verdict, read from the grader's answer.
    pub verdict: Option<Value>,
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
            verdict: None,
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

    /// The attempt's timings as stored: a grade job's verdict is kept there too, under `grade`.
    pub fn stored_timings(&self) -> Option<Value> {
        let Some(verdict) = &self.verdict else {
            return self.timings.clone();
        };
        let mut timings = self
            .timings
            .clone()
            .unwrap_or_else(|| Value::Object(Map::new()));
        if let Value::Object(m) = &mut timings {
            m.insert("grade".into(), verdict.clone());
        }
        Some(timings)
    }
}

/// Where a finished attempt sends its job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    Done,
    /// Back to pending, not before this many ms from now (the store's clock).
    Retry(i64),
    Failed,
}

impl Next {
    pub fn state(self) -> JobState {
        match self {
            Next::Done => JobState::Done,
            Next::Retry(_) => JobState::Pending,
            Next::Failed => JobState::Failed,
        }
    }
}

/// Where a job stands in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Pending,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a job asks of its model: an answer to an item's prompt, or a grade of another
/// job's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    Generate,
    Grade,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Generate => "generate",
            JobKind::Grade => "grade",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        [JobKind::Generate, JobKind::Grade]
            .into_iter()
            .find(|k| k.as_str() == s)
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
        return Next::Retry(wait);
    }
    if !f.outcome.charged() {
        return Next::Retry(0);
    }
    let used = claim.charged + 1;
    if !f.outcome.retryable(f.http_status) || used >= budget {
        return Next::Failed;
    }
    Next::Retry(backoff_ms(retry_base_ms, used))
}

/// `retry_base × 2^(n-1)` with ±25 % jitter, at most 10 minutes.
fn backoff_ms(retry_base_ms: i64, n: i64) -> i64 {
    let exp = 2f64.powi((n - 1).clamp(0, 20) as i32);
    let jitter = 0.75 + fastrand::f64() * 0.5;
    (retry_base_ms as f64 * exp * jitter).min(600_000.0) as i64
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
            kind: JobKind::Generate,
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

    /// The delay of a retry, in ms.
    fn delay(next: Next, _before: i64) -> i64 {
        match next {
            Next::Retry(t) => t,
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
            let before = 0;
            let d = delay(decide(&claim(charged), &f, 100, 1000), before);
            let nominal = 1000 * 2i64.pow(charged as u32);
            // ±25 % jitter, and the clock moved a little while deciding.
            assert!(
                d >= nominal * 3 / 4 && d <= nominal * 5 / 4,
                "attempt {}: delay {d} ms, nominal {nominal} ms",
                charged + 1
            );
        }
    }

    #[test]
    fn backoff_is_capped_at_ten_minutes() {
        let f = Finish::new(Outcome::Timeout, 5);
        let before = 0;
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
            let before = 0;
            let d = delay(decide(&claim(2), &f, 3, 60_000), before);
            assert!((0..5).contains(&d), "{outcome:?}: {d}");
        }
    }
}
