//! HTTP backends (Ollama, OpenAI-compatible), run inside the `worker` child process: one
//! request in on stdin, one HTTP call with its own deadlines, one result out on stdout. The
//! coordinator can kill this process at the model timeout, so nothing here can hang a run.
//! The server is never asked whether it is busy: the request is sent and the server queues it.

mod ollama;
mod openai;
mod stream;
mod wire;

pub use wire::{WorkerRequest, WorkerResponse};

use anyhow::{Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;
use std::time::Instant;

use crate::models::Backend;
use crate::text::split_thinking;

/// Connecting takes milliseconds on a live server; longer means the host is not there.
const CONNECT_MAX: Duration = Duration::from_secs(10);
/// The most of a response body kept; with the answer and its raw text both in the result,
/// this keeps the worker's stdout under the runner's capture limit.
const MAX_BODY: u64 = 4 * 1024 * 1024;
/// How much of an unexpected body an error message quotes.
const QUOTE_CHARS: usize = 200;

/// `llmbatch worker`: reads a [`WorkerRequest`], makes the call, prints a [`WorkerResponse`].
pub fn worker_main() -> Result<u8> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read the worker request on stdin")?;
    let request: WorkerRequest =
        serde_json::from_slice(&input).context("the worker request is not valid JSON")?;
    let response = call(&request);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &response)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(0)
}

/// One attempt against the request's backend, every failure mapped to an outcome.
pub fn call(r: &WorkerRequest) -> WorkerResponse {
    let key = match api_key(r) {
        Ok(k) => k,
        Err(resp) => return *resp,
    };
    // A server may echo what it was sent: the coordinator redacts the key from everything
    // it records (attempt::redact_api_key).
    match r.backend {
        Backend::Openai => openai::call(r, key.as_deref()),
        _ => ollama::call(r, key.as_deref()),
    }
}

/// The API key from the variable named by `--api-key-env`, if the model has one.
fn api_key(r: &WorkerRequest) -> std::result::Result<Option<String>, Box<WorkerResponse>> {
    let Some(var) = r.api_key_env.as_deref() else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
        _ => Err(Box::new(failure(
            "spawn",
            None,
            format!(
                "the API key variable {var} (--api-key-env) is not set in the environment of `llmbatch run`"
            ),
        ))),
    }
}

/// What came back from the server: its status, body text and the wait it asked for.
struct Reply {
    status: u16,
    body: String,
    retry_after_ms: Option<i64>,
}

fn transport(t: &ureq::Transport, url: &str, timeout: Duration, down_hint: &str) -> WorkerResponse {
    use std::error::Error;
    let io = t
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(|e| e.kind());
    let detail = t
        .source()
        .map(|s| s.to_string())
        .or_else(|| t.message().map(str::to_string))
        .unwrap_or_else(|| t.kind().to_string());
    match t.kind() {
        ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => failure(
            "unavailable",
            None,
            format!("cannot connect: {detail} — {down_hint}"),
        ),
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => failure(
            "spawn",
            None,
            format!("invalid endpoint URL {url}: {detail}"),
        ),
        ureq::ErrorKind::Io
            if matches!(
                io,
                Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
            ) =>
        {
            timed_out(url, timeout)
        }
        _ => failure(
            "http",
            None,
            format!("no HTTP answer from {url} (did the server restart or crash?): {detail}"),
        ),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

fn timed_out(url: &str, timeout: Duration) -> WorkerResponse {
    failure(
        "timeout",
        None,
        format!(
            "no answer from {url} within {} (just under the model's timeout): gave up",
            crate::util::human_secs(timeout.as_secs_f64())
        ),
    )
}

fn failure(outcome: &str, status: Option<u16>, error: String) -> WorkerResponse {
    WorkerResponse {
        outcome: outcome.to_string(),
        http_status: status.map(i64::from),
        error: Some(error),
        ..WorkerResponse::default()
    }
}

/// The server's own words from an error body: `{"error": "…"}` (Ollama), `{"error":
/// {"message": …}}` (OpenAI), `{"message": …}` (vLLM), `{"detail": …}`; else the first bytes.
fn error_text(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let e = v.get("error");
        e.and_then(Value::as_str)
            .or_else(|| e.and_then(|e| e.get("message")).and_then(Value::as_str))
            .or_else(|| v.get("message").and_then(Value::as_str))
            .or_else(|| v.get("detail").and_then(Value::as_str))
            .map(str::to_string)
    });
    from_json.unwrap_or_else(|| quote(body))
}

/// The first bytes of a body, quoted, for messages about answers we could not read.
fn quote(body: &str) -> String {
    let t = body.trim();
    if t.is_empty() {
        return "an empty body".to_string();
    }
    let head: String = t.chars().take(QUOTE_CHARS).collect();
    let more = if head.len() < t.len() { "…" } else { "" };
    format!("{:?}{more}", head)
}

/// The wait a server asked for, in ms: `retry-after-ms` (OpenAI's, milliseconds), else
/// `Retry-After` in seconds or as an HTTP date (RFC 9110). Unreadable or past: None.
fn retry_after(ms: Option<&str>, header: Option<&str>, now: std::time::SystemTime) -> Option<i64> {
    if let Some(ms) = ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(ms.ceil() as i64);
        }
    }
    let h = header?.trim();
    if let Ok(s) = h.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).ceil() as i64);
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(h)
        .ok()?;
    let now = jiff::Timestamp::try_from(now).ok()?;
    let wait = at.as_millisecond() - now.as_millisecond();
    (wait > 0).then_some(wait)
}

/// Backpressure, which is never the job's fault: 429, 503 or a "server busy" answer (Ollama's
/// 503 when its queue is full) end `throttled` with the server's Retry-After; an exhausted quota
/// or credit (OpenAI's 429 `insufficient_quota`, a 402) ends `throttled` marked
/// `quota_exhausted`, which stops the lane. None for any other answer.
fn backpressure(reply: &Reply, url: &str) -> Option<WorkerResponse> {
    // A 2xx is an answer, whatever its text says (a model may well write "server busy").
    if (200..300).contains(&reply.status) {
        return None;
    }
    let text = error_text(&reply.body);
    let busy = text.to_lowercase().contains("server busy");
    let quota = quota_exhausted(reply.status, &reply.body);
    if !(quota || busy || matches!(reply.status, 429 | 503)) {
        return None;
    }
    let status = reply.status;
    let mut resp = if quota {
        failure(
            "throttled",
            Some(status),
            format!("HTTP {status} from {url}: quota exhausted: {text}"),
        )
    } else {
        let wait = reply
            .retry_after_ms
            .map(|ms| {
                format!(
                    ", Retry-After {}",
                    crate::util::human_secs(ms as f64 / 1000.0)
                )
            })
            .unwrap_or_default();
        failure(
            "throttled",
            Some(status),
            format!("HTTP {status} (server busy{wait}) from {url}: {text}"),
        )
    };
    resp.retry_after_ms = reply.retry_after_ms;
    resp.quota_exhausted = quota;
    Some(resp)
}

/// Whether an error body says the account is out of quota or credit (retrying cannot help),
/// as opposed to a rate limit (waiting helps). A bare "quota" is not enough: some APIs call
/// their per-minute limits quotas.
fn quota_exhausted(status: u16, body: &str) -> bool {
    const CODES: [&str; 5] = [
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "insufficient_credits",
        "insufficient_balance",
    ];
    if status == 402 {
        return true;
    }
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&v);
    let coded = ["code", "type"].iter().any(|k| {
        e.get(*k)
            .and_then(Value::as_str)
            .is_some_and(|c| CODES.contains(&c))
    });
    let msg = error_text(body).to_lowercase();
    coded
        || msg.contains("exceeded your current quota")
        || msg.contains("credit balance is too low")
        || msg.contains("check your plan and billing")
}

/// Maps a non-2xx status to an `http` failure (retried by the coordinator for 408 and 5xx).
fn status_failure(status: u16, url: &str, body: &str, hint: &str) -> WorkerResponse {
    let text = error_text(body);
    failure(
        "http",
        Some(status),
        format!("HTTP {status} from {url}: {text}{hint}"),
    )
}

/// A 2xx body that is not the JSON this backend answers with.
fn not_json(status: u16, url: &str, body: &str, expected: &str) -> WorkerResponse {
    failure(
        "http",
        Some(status),
        format!(
            "HTTP {status} from {url} is not {expected}: {}",
            quote(body)
        ),
    )
}

/// A finished answer: reasoning kept apart, `empty` when nothing is left of the answer.
/// `reasoning` is what the server sent apart (`thinking`, `reasoning_content`); a `<think>`
/// block in the text is split off too. `stop` is the server's reason for stopping.
fn answer(
    status: u16,
    text: &str,
    reasoning: Option<&str>,
    stop: Option<&str>,
    timings: Value,
) -> WorkerResponse {
    let (output, inline) = split_thinking(text);
    let parts: Vec<&str> = reasoning
        .map(str::trim)
        .into_iter()
        .chain(inline.as_deref())
        .filter(|s| !s.is_empty())
        .collect();
    let reasoning = (!parts.is_empty()).then(|| parts.join("\n\n"));
    let mut resp = WorkerResponse {
        outcome: "ok".to_string(),
        http_status: Some(i64::from(status)),
        timings: Some(timings),
        ..WorkerResponse::default()
    };
    if output.is_empty() {
        resp.outcome = "empty".to_string();
        let stop = stop
            .map(|s| format!(" (done_reason: {s})"))
            .unwrap_or_default();
        resp.error = Some(if reasoning.is_some() {
            format!("no answer after the reasoning: thinking used up the budget{stop}")
        } else {
            format!("the server answered with no text{stop}")
        });
    }
    if output != text {
        resp.raw_output = Some(text.to_string());
    }
    resp.output = Some(output);
    resp.reasoning = reasoning;
    resp
}

/// A streamed answer as it builds up: text and reasoning, and when the first of either came.
#[derive(Default)]
struct Streamed {
    text: String,
    reasoning: String,
    first_text: Option<Instant>,
}

impl Streamed {
    fn push(&mut self, text: Option<&str>, reasoning: Option<&str>, at: Instant) {
        let text = text.unwrap_or("");
        let reasoning = reasoning.unwrap_or("");
        if !(text.is_empty() && reasoning.is_empty()) {
            self.first_text.get_or_insert(at);
        }
        self.text.push_str(text);
        self.reasoning.push_str(reasoning);
    }

    /// The finished answer, with its metrics.
    fn done(
        self,
        ex: &stream::Exchange,
        stop: Option<&str>,
        timings: Value,
        tokens: Option<i64>,
    ) -> WorkerResponse {
        let reasoning = (!self.reasoning.is_empty()).then_some(self.reasoning.as_str());
        let mut resp = answer(ex.status, &self.text, reasoning, stop, timings);
        resp.metrics = Some(ex.metrics(self.first_text, tokens));
        resp
    }

    /// A failure part way: what was measured and the partial text are kept with it.
    fn failed(self, ex: &stream::Exchange, resp: Box<WorkerResponse>) -> WorkerResponse {
        let mut resp = *resp;
        resp.metrics = Some(ex.metrics(self.first_text, None));
        if !self.text.is_empty() {
            resp.raw_output = Some(self.text);
        }
        resp
    }
}

/// Reads a streamed body to its end, handing each complete line to `line`; the first failure
/// (a deadline, a stall, an error the server sent) ends it with the partial answer kept.
fn read_lines(
    ex: &mut stream::Exchange,
    acc: &mut Streamed,
    mut line: impl FnMut(&mut Streamed, &str, Instant) -> std::result::Result<(), Box<WorkerResponse>>,
) -> std::result::Result<(), Box<WorkerResponse>> {
    let mut lines = stream::Lines::default();
    loop {
        match ex.next() {
            Ok(Some((bytes, at))) => {
                for l in lines.feed(&bytes) {
                    line(acc, &l, at)?;
                }
            }
            Ok(None) => break,
            Err(resp) => return Err(resp),
        }
    }
    if let Some(l) = lines.rest() {
        line(acc, &l, ex.ended.unwrap_or_else(Instant::now))?;
    }
    Ok(())
}

/// A stream that ended before the server said it was done: the connection was cut.
fn cut_short(ex: &stream::Exchange, what: &str) -> WorkerResponse {
    failure(
        "http",
        None,
        format!(
            "HTTP {} from {}: the stream ended before {what} (did the server restart or crash?)",
            ex.status, ex.url
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_ms_seconds_and_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_470);
        assert_eq!(retry_after(Some("250"), Some("3"), now), Some(250));
        assert_eq!(retry_after(None, Some("3"), now), Some(3000));
        assert_eq!(retry_after(None, Some("1.5"), now), Some(1500));
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480: ten seconds after `now`.
        assert_eq!(
            retry_after(None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), now),
            Some(10_000)
        );
        assert_eq!(
            retry_after(None, Some("Wed, 21 Oct 2015 07:27:00 GMT"), now),
            None
        );
        assert_eq!(retry_after(None, Some("soon"), now), None);
        assert_eq!(retry_after(Some("x"), None, now), None);
    }

    #[test]
    fn quota_is_told_from_a_rate_limit() {
        let openai = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert!(quota_exhausted(429, openai));
        assert!(quota_exhausted(402, "{}"));
        let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(!quota_exhausted(429, rate));
        let gemini = r#"{"error":{"code":429,"message":"Quota exceeded for metric: generate_content_requests per minute","status":"RESOURCE_EXHAUSTED"}}"#;
        assert!(!quota_exhausted(429, gemini));
    }

    #[test]
    fn backpressure_is_throttled() {
        let reply = |status: u16, body: &str| Reply {
            status,
            body: body.to_string(),
            retry_after_ms: Some(1000),
        };
        let busy =
            r#"{"error":"server busy, please try again.  maximum pending requests exceeded"}"#;
        let r = backpressure(&reply(503, busy), "u").unwrap();
        assert_eq!(
            (r.outcome.as_str(), r.retry_after_ms),
            ("throttled", Some(1000))
        );
        assert!(!r.quota_exhausted);
        assert!(backpressure(&reply(500, busy), "u").is_some());
        assert!(backpressure(&reply(500, r#"{"error":"boom"}"#), "u").is_none());
        assert!(backpressure(&reply(404, "{}"), "u").is_none());
        let answer = r#"{"response":"The server busy? You exceeded your current quota of jokes."}"#;
        assert!(backpressure(&reply(200, answer), "u").is_none());
        let q = r#"{"error":{"message":"out","code":"insufficient_quota"}}"#;
        assert!(backpressure(&reply(429, q), "u").unwrap().quota_exhausted);
    }

    #[test]
    fn error_text_reads_each_server_shape() {
        assert_eq!(
            error_text(r#"{"error":"model \"x\" not found, try pulling it first"}"#),
            "model \"x\" not found, try pulling it first"
        );
        assert_eq!(
            error_text(r#"{"error":{"message":"bad key","type":"auth"}}"#),
            "bad key"
        );
        assert_eq!(error_text(r#"{"object":"error","message":"nope"}"#), "nope");
        assert_eq!(error_text("<html>oops</html>"), "\"<html>oops</html>\"");
    }

    #[test]
    fn empty_after_reasoning_is_empty() {
        let r = answer(
            200,
            "<think>long</think>",
            None,
            Some("length"),
            Value::Null,
        );
        assert_eq!(r.outcome, "empty");
        assert!(r.error.unwrap().contains("thinking used up the budget"));
        assert_eq!(r.reasoning.as_deref(), Some("long"));
        let r = answer(200, "hi", Some("hmm"), Some("stop"), Value::Null);
        assert_eq!(r.outcome, "ok");
        assert_eq!(r.output.as_deref(), Some("hi"));
        assert_eq!(r.reasoning.as_deref(), Some("hmm"));
        assert_eq!(r.raw_output, None);
    }
}
