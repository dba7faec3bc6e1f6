//! Reading an HTTP answer as it arrives. The call runs on its own thread and hands over the
//! head and each piece of the body with its arrival time; the worker's main thread waits on
//! them with the model's deadlines: the whole attempt, the first bytes (`--first-token-timeout`)
//! and the silence between pieces once the stream has started (`--stall-timeout`). A thread
//! left blocked in a read is harmless: the worker process exits right after.

use serde_json::Value;
use std::io::Read;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use super::{failure, timed_out, transport, MAX_BODY};
use crate::backends::{WorkerRequest, WorkerResponse};
use crate::domain::Metrics;
use crate::util::human_secs;

/// What the call thread reports, in order: the head, body pieces, then the end or a failure.
enum Event {
    Head {
        status: u16,
        content_type: String,
        retry_after_ms: Option<i64>,
    },
    Data(Vec<u8>),
    End,
    Transport(Box<ureq::Transport>),
    ReadFailed(std::io::Error),
}

/// One HTTP exchange in flight, read under the model's deadlines.
pub struct Exchange {
    rx: Receiver<(Instant, Event)>,
    pub url: String,
    /// When the request went out: the zero of TTFT and e2e.
    pub sent: Instant,
    deadline: Instant,
    timeout: Duration,
    /// The wait for the first bytes, when bounded (streamed requests only).
    first: Option<Duration>,
    stall: Option<Duration>,
    pub status: u16,
    pub content_type: String,
    /// The wait the server asked for (`retry-after-ms`, `Retry-After`), in ms.
    pub retry_after_ms: Option<i64>,
    first_data: Option<Instant>,
    last_data: Option<Instant>,
    /// When the body ended (or reading stopped).
    pub ended: Option<Instant>,
    max_gap: Duration,
    down_hint: String,
}

/// Sends the request on its own thread and waits for the response head.
pub fn send(
    r: &WorkerRequest,
    url: &str,
    body: &Value,
    key: Option<&str>,
    down_hint: &str,
    streamed: bool,
) -> Result<Exchange, Box<WorkerResponse>> {
    let timeout = Duration::from_secs_f64(r.timeout_s.max(0.1));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(timeout.min(super::CONNECT_MAX))
        .timeout(timeout)
        .build();
    let mut req = agent.post(url).set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    let (tx, rx) = mpsc::channel();
    let text = body.to_string();
    let sent = Instant::now();
    thread::spawn(move || call(req, &text, &tx));
    let seconds = |s: Option<f64>| s.filter(|s| *s > 0.0).map(Duration::from_secs_f64);
    let mut ex = Exchange {
        rx,
        url: url.to_string(),
        sent,
        deadline: sent + timeout,
        timeout,
        first: seconds(r.settings.first_token_timeout_s).filter(|_| streamed),
        stall: seconds(r.settings.stall_timeout_s).filter(|_| streamed),
        status: 0,
        content_type: String::new(),
        retry_after_ms: None,
        first_data: None,
        last_data: None,
        ended: None,
        max_gap: Duration::ZERO,
        down_hint: down_hint.to_string(),
    };
    match ex.wait()? {
        (
            _,
            Event::Head {
                status,
                content_type,
                retry_after_ms,
            },
        ) => {
            ex.status = status;
            ex.content_type = content_type.to_ascii_lowercase();
            ex.retry_after_ms = retry_after_ms;
            Ok(ex)
        }
        (_, other) => Err(Box::new(ex.failed(other))),
    }
}

/// The call thread: send, report the head, then every piece of the body as it is read.
fn call(req: ureq::Request, body: &str, tx: &mpsc::Sender<(Instant, Event)>) {
    let resp = match req.send_string(body) {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(ureq::Error::Transport(t)) => {
            let _ = tx.send((Instant::now(), Event::Transport(Box::new(t))));
            return;
        }
    };
    let head = Event::Head {
        status: resp.status(),
        content_type: resp.content_type().to_string(),
        retry_after_ms: super::retry_after(
            resp.header("retry-after-ms"),
            resp.header("retry-after"),
            std::time::SystemTime::now(),
        ),
    };
    if tx.send((Instant::now(), head)).is_err() {
        return;
    }
    let mut reader = resp.into_reader().take(MAX_BODY);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let event = match reader.read(&mut buf) {
            Ok(0) => Event::End,
            Ok(n) => Event::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Event::ReadFailed(e),
        };
        let last = !matches!(event, Event::Data(_));
        if tx.send((Instant::now(), event)).is_err() || last {
            return;
        }
    }
}

impl Exchange {
    /// Whether the server answered with a stream (else one body, whatever was asked).
    pub fn is_stream(&self) -> bool {
        self.content_type.contains("ndjson") || self.content_type.contains("event-stream")
    }

    /// The next piece of the body and when it arrived; None at its end.
    pub fn next(&mut self) -> Result<Option<(Vec<u8>, Instant)>, Box<WorkerResponse>> {
        match self.wait()? {
            (at, Event::Data(bytes)) => {
                if let Some(last) = self.last_data {
                    self.max_gap = self.max_gap.max(at - last);
                }
                self.first_data.get_or_insert(at);
                self.last_data = Some(at);
                Ok(Some((bytes, at)))
            }
            (at, Event::End) => {
                self.ended = Some(at);
                Ok(None)
            }
            (_, other) => Err(Box::new(self.failed(other))),
        }
    }

    /// The whole body as text (a non-streamed answer, or an error body).
    pub fn read_all(&mut self) -> Result<String, Box<WorkerResponse>> {
        let mut bytes = Vec::new();
        while let Some((piece, _)) = self.next()? {
            bytes.extend_from_slice(&piece);
        }
        Ok(crate::text::lossy(&bytes))
    }

    /// A body that is not a stream (an answer sent whole, or an error): its text, unless it is
    /// the server pushing back, which ends the attempt `throttled`.
    pub fn whole_body(&mut self, url: &str) -> Result<String, Box<WorkerResponse>> {
        let reply = super::Reply {
            status: self.status,
            body: self.read_all()?,
            retry_after_ms: self.retry_after_ms,
        };
        match super::backpressure(&reply, url) {
            Some(throttled) => Err(Box::new(throttled)),
            None => Ok(reply.body),
        }
    }

    /// Waits for the next event under whichever deadline applies now.
    fn wait(&mut self) -> Result<(Instant, Event), Box<WorkerResponse>> {
        let now = Instant::now();
        let (until, why) = self.limit();
        match self.rx.recv_timeout(until.saturating_duration_since(now)) {
            Ok(ev) => Ok(ev),
            Err(RecvTimeoutError::Timeout) => {
                self.ended = Some(Instant::now());
                Err(Box::new(self.expired(why)))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.ended = Some(Instant::now());
                Err(Box::new(failure(
                    "http",
                    None,
                    format!("the HTTP call to {} stopped without an answer", self.url),
                )))
            }
        }
    }

    /// The next deadline and what it is: the whole attempt, the first bytes, or a stall.
    fn limit(&self) -> (Instant, Limit) {
        let mut best = (self.deadline, Limit::Whole);
        let next = match self.last_data {
            Some(last) => self.stall.map(|s| (last + s, Limit::Stall)),
            None => self.first.map(|f| (self.sent + f, Limit::First)),
        };
        if let Some(n) = next.filter(|n| n.0 < best.0) {
            best = n;
        }
        best
    }

    fn expired(&self, why: Limit) -> WorkerResponse {
        match why {
            Limit::Whole => timed_out(&self.url, self.timeout),
            Limit::First => failure(
                "timeout",
                None,
                format!(
                    "no answer from {} within the first-token timeout of {} (--first-token-timeout): gave up",
                    self.url,
                    human_secs(self.first.unwrap_or_default().as_secs_f64())
                ),
            ),
            Limit::Stall => failure(
                "stall",
                Some(self.status),
                format!(
                    "the stream from {} went silent for {} (--stall-timeout), {} into the answer: stopped",
                    self.url,
                    human_secs(self.stall.unwrap_or_default().as_secs_f64()),
                    human_secs(
                        self.last_data
                            .map_or(0.0, |l| (l - self.sent).as_secs_f64())
                    ),
                ),
            ),
        }
    }

    fn failed(&self, ev: Event) -> WorkerResponse {
        match ev {
            Event::Transport(t) => transport(&t, &self.url, self.timeout, &self.down_hint),
            Event::ReadFailed(e) if super::is_timeout(&e) => timed_out(&self.url, self.timeout),
            Event::ReadFailed(e) => failure(
                "http",
                None,
                format!(
                    "HTTP {} from {}, but reading the answer failed: {e}",
                    self.status, self.url
                ),
            ),
            _ => failure(
                "http",
                None,
                format!("the HTTP call to {} answered out of order", self.url),
            ),
        }
    }

    /// The measured latency: TTFT when `first_text` is known, TPOT when more than one token.
    pub fn metrics(&self, first_text: Option<Instant>, output_tokens: Option<i64>) -> Metrics {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let end = self.ended.or(self.last_data).unwrap_or_else(Instant::now);
        let e2e = end.saturating_duration_since(self.sent);
        let ttft = first_text.map(|t| t.saturating_duration_since(self.sent));
        let tpot = match (ttft, output_tokens) {
            (Some(t), Some(n)) if n > 1 => Some(ms(e2e.saturating_sub(t)) / (n - 1) as f64),
            _ => None,
        };
        Metrics {
            ttft_ms: ttft.map(ms),
            tpot_ms: tpot.map(|v| (v * 1e3).round() / 1e3),
            e2e_ms: Some(ms(e2e)),
            output_tokens,
            max_gap_ms: first_text.map(|_| ms(self.max_gap)),
        }
    }
}

#[derive(Clone, Copy)]
enum Limit {
    Whole,
    First,
    Stall,
}

/// Cuts a byte stream into lines; a line is decoded only once complete, so a character split
/// across two pieces is never damaged.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        // Only the new bytes are searched: a long line arriving in many pieces costs linear time.
        let Some(i) = bytes.iter().rposition(|b| *b == b'\n') else {
            self.buf.extend_from_slice(bytes);
            return Vec::new();
        };
        let cut = self.buf.len() + i;
        self.buf.extend_from_slice(bytes);
        let rest = self.buf.split_off(cut + 1);
        let done = std::mem::replace(&mut self.buf, rest);
        // `done` ends with the newline: split what comes before it.
        done[..done.len() - 1]
            .split(|b| *b == b'\n')
            .map(|l| crate::text::lossy(l.strip_suffix(b"\r").unwrap_or(l)))
            .collect()
    }

    /// What is left after the body ended without a final newline.
    pub fn rest(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        (!rest.is_empty()).then(|| crate::text::lossy(rest.strip_suffix(b"\r").unwrap_or(&rest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_characters_split_across_pieces() {
        let text = "héllo 🎉\nsecond line\r\nthird";
        let bytes = text.as_bytes();
        let mut lines = Lines::default();
        let mut got = Vec::new();
        for b in bytes.chunks(1) {
            got.extend(lines.feed(b));
        }
        got.extend(lines.rest());
        assert_eq!(got, vec!["héllo 🎉", "second line", "third"]);
        let mut lines = Lines::default();
        assert_eq!(lines.feed(b"a\n\nb\n"), vec!["a", "", "b"]);
        assert_eq!(lines.rest(), None);
    }
}
