//! A small HTTP/1.1 test server on 127.0.0.1 that answers like Ollama's `/api/generate` and
//! `/api/chat` and OpenAI's `/v1/chat/completions`, recording every request; shared by the
//! `http`, `stream`, `formats` and grading tests. Streams are sent as real servers send them:
//! chunked transfer encoding, Ollama NDJSON, OpenAI SSE with a role-only first chunk, a
//! usage-only last chunk, `[DONE]`.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Req {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// When the server had read the whole request (its own clock, for rate checks).
    pub at: Instant,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or("")
    }
}

/// What the server does with a request.
pub enum Reply {
    /// Status and JSON (or any) body, after a delay.
    Body(u16, String, Duration),
    /// Status, extra response headers (Retry-After, retry-after-ms, …) and body, at once.
    Headers(u16, Vec<(&'static str, String)>, String),
    /// Reads the request, then says nothing until the client goes away (bounded).
    Hang,
    /// A 200 answer sent with chunked transfer encoding, one chunk per piece, each piece after
    /// its delay (counted from the previous one); then the end, or silence with `hang`.
    Stream(Stream),
}

/// A streamed answer: content type, pieces of body with the wait before each.
pub struct Stream {
    pub content_type: &'static str,
    pub pieces: Vec<(Duration, Vec<u8>)>,
    pub hang: bool,
}

pub const NDJSON: &str = "application/x-ndjson";
pub const SSE: &str = "text/event-stream; charset=utf-8";

/// Ollama's NDJSON stream as `ollama serve` sends it: one object per token, then the `done`
/// object with the timings; the first token after `first`, each next one after `each`.
pub fn ollama_stream(model: &str, tokens: &[&str], first: Duration, each: Duration) -> Stream {
    let mut pieces = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let line = json!({"model": model, "created_at": "2026-11-23T03:00:00Z", "response": t, "done": false});
        pieces.push((
            if i == 0 { first } else { each },
            format!("{line}\n").into_bytes(),
        ));
    }
    let mut last = ollama_answer(model, "", None, "stop");
    last["eval_count"] = json!(tokens.len());
    pieces.push((Duration::ZERO, format!("{last}\n").into_bytes()));
    Stream {
        content_type: NDJSON,
        pieces,
        hang: false,
    }
}

/// Ollama's `/api/chat` NDJSON stream: as [`ollama_stream`], with each token in
/// `message.content` and a `done` object whose message is empty.
pub fn ollama_chat_stream(model: &str, tokens: &[&str], first: Duration, each: Duration) -> Stream {
    let mut pieces = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let line = json!({"model": model, "created_at": "2026-11-23T03:00:00Z",
                          "message": {"role": "assistant", "content": t}, "done": false});
        pieces.push((
            if i == 0 { first } else { each },
            format!("{line}\n").into_bytes(),
        ));
    }
    let mut last = ollama_chat_answer(model, "");
    last["eval_count"] = json!(tokens.len());
    pieces.push((Duration::ZERO, format!("{last}\n").into_bytes()));
    Stream {
        content_type: NDJSON,
        pieces,
        hang: false,
    }
}

/// An OpenAI SSE stream as vLLM sends it with `include_usage`: a role-only first chunk at
/// once, one chunk per token, a finish chunk, a usage-only chunk, then `data: [DONE]`.
pub fn openai_stream(model: &str, tokens: &[&str], first: Duration, each: Duration) -> Stream {
    let event = |v: Value| format!("data: {v}\n\n").into_bytes();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null,
               "finish_reason": finish}]})
    };
    let mut pieces = vec![(
        Duration::ZERO,
        event(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )),
    )];
    for (i, t) in tokens.iter().enumerate() {
        pieces.push((
            if i == 0 { first } else { each },
            event(chunk(json!({"content": t}), Value::Null)),
        ));
    }
    pieces.push((Duration::ZERO, event(chunk(json!({}), json!("stop")))));
    let n = tokens.len();
    pieces.push((
        Duration::ZERO,
        event(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
                     "model": model, "choices": [],
                     "usage": {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}})),
    ));
    pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
    Stream {
        content_type: SSE,
        pieces,
        hang: false,
    }
}

impl Stream {
    /// The same bytes cut into pieces of `n` bytes (characters split on purpose), each sent
    /// `gap` after the previous one.
    pub fn cut(self, n: usize, gap: Duration) -> Stream {
        let all: Vec<u8> = self.pieces.into_iter().flat_map(|(_, b)| b).collect();
        Stream {
            pieces: all.chunks(n).map(|c| (gap, c.to_vec())).collect(),
            ..self
        }
    }

    /// Keeps the first `n` pieces, then goes silent.
    pub fn then_silence(mut self, n: usize) -> Stream {
        self.pieces.truncate(n);
        self.hang = true;
        self
    }

    /// Inserts a piece of body after the first `n` pieces.
    pub fn insert(mut self, n: usize, bytes: &str) -> Stream {
        self.pieces
            .insert(n, (Duration::ZERO, bytes.as_bytes().to_vec()));
        self
    }
}

pub fn now_json(status: u16, body: Value) -> Reply {
    Reply::Body(status, body.to_string(), Duration::ZERO)
}

type Handler = dyn Fn(&Req, usize) -> Reply + Send + Sync;

/// A bounded test server: one thread per connection (at most `MAX_CONNS` at once), every read
/// and every hang with a deadline, stopped on drop.
pub struct Server {
    pub url: String,
    requests: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

const MAX_CONNS: usize = 32;
const HANG_MAX: Duration = Duration::from_secs(60);

impl Server {
    pub fn start(handler: impl Fn(&Req, usize) -> Reply + Send + Sync + 'static) -> Server {
        Server::on(
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"),
            handler,
        )
    }

    /// A server on a listener the test made (a port held closed until now).
    pub fn on(
        listener: TcpListener,
        handler: impl Fn(&Req, usize) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let addr: SocketAddr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let active = Arc::new(AtomicUsize::new(0));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let accept = thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if active.load(Ordering::SeqCst) >= MAX_CONNS {
                            continue; // dropped: the client sees a reset
                        }
                        active.fetch_add(1, Ordering::SeqCst);
                        let (h, r, s, a) =
                            (handler.clone(), reqs.clone(), stop2.clone(), active.clone());
                        thread::spawn(move || {
                            serve(stream, &*h, &r, &s);
                            a.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            url: format!("http://{addr}"),
            requests,
            stop,
            accept: Some(accept),
        }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(mut stream: TcpStream, handler: &Handler, reqs: &Mutex<Vec<Req>>, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let n = {
        let mut all = reqs.lock().unwrap();
        all.push(req.clone());
        all.iter().filter(|r| r.model() == req.model()).count()
    };
    match handler(&req, n) {
        Reply::Body(status, body, delay) => {
            sleep_unless_stopped(delay, stop);
            respond(&mut stream, status, &[], &body);
        }
        Reply::Headers(status, headers, body) => respond(&mut stream, status, &headers, &body),
        Reply::Hang => hang(&mut stream, stop),
        Reply::Stream(s) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n",
                s.content_type
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let _ = stream.set_nodelay(true);
            for (delay, bytes) in &s.pieces {
                sleep_unless_stopped(*delay, stop);
                let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                chunk.extend_from_slice(bytes);
                chunk.extend_from_slice(b"\r\n");
                if stream
                    .write_all(&chunk)
                    .and_then(|_| stream.flush())
                    .is_err()
                {
                    return; // the client went away
                }
            }
            if s.hang {
                hang(&mut stream, stop);
            } else {
                let _ = stream.write_all(b"0\r\n\r\n");
                let _ = stream.flush();
            }
        }
    }
}

/// Says nothing more; ends when the client closes (it was killed or gave up), bounded.
fn hang(stream: &mut TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let until = Instant::now() + HANG_MAX;
    let mut buf = [0u8; 64];
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        404 => "Not Found",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
         {extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
    let _ = stream.flush();
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10).min(until - Instant::now()));
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Req> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if data.len() > 1 << 20 {
            return None;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Req {
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    })
}

/// Ollama's non-streaming `/api/generate` answer, timing fields included (nanoseconds).
pub fn ollama_answer(
    model: &str,
    response: &str,
    thinking: Option<&str>,
    done_reason: &str,
) -> Value {
    let mut v = json!({
        "model": model,
        "created_at": "2026-11-23T03:00:00.000000Z",
        "response": response,
        "done": true,
        "done_reason": done_reason,
        "context": [1, 2, 3],
        "total_duration": 5_043_500_667u64,
        "load_duration": 5_025_959u64,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 325_953_000u64,
        "eval_count": 290,
        "eval_duration": 4_709_213_000u64
    });
    if let Some(t) = thinking {
        v["thinking"] = json!(t);
    }
    v
}

/// OpenAI's `/v1/chat/completions` answer with usage.
pub fn openai_answer(model: &str, content: &str, reasoning: Option<&str>) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(r) = reasoning {
        message["reasoning_content"] = json!(r);
    }
    json!({
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    })
}

/// Ollama's non-streaming `/api/chat` answer: the text in `message`, timings as for generate.
pub fn ollama_chat_answer(model: &str, content: &str) -> Value {
    json!({
        "model": model,
        "created_at": "2026-11-23T03:00:00.000000Z",
        "message": {"role": "assistant", "content": content},
        "done": true,
        "done_reason": "stop",
        "total_duration": 1_043_500_667u64,
        "load_duration": 5_025_959u64,
        "prompt_eval_count": 21,
        "prompt_eval_duration": 125_953_000u64,
        "eval_count": 9,
        "eval_duration": 409_213_000u64
    })
}

/// OpenAI's 429 for a rate limit, with its `Retry-After` (seconds) and `retry-after-ms`.
pub fn openai_rate_limited(retry_after_s: u64) -> Reply {
    Reply::Headers(
        429,
        vec![
            ("retry-after", retry_after_s.to_string()),
            ("retry-after-ms", (retry_after_s * 1000).to_string()),
            ("x-ratelimit-limit-requests", "3".to_string()),
            ("x-ratelimit-remaining-requests", "0".to_string()),
        ],
        json!({"error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1s.",
            "type": "requests",
            "param": null,
            "code": "rate_limit_exceeded"
        }})
        .to_string(),
    )
}

/// OpenAI's 429 when the account has no quota left (retrying cannot help).
pub fn openai_insufficient_quota() -> Reply {
    now_json(
        429,
        json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": null,
            "code": "insufficient_quota"
        }}),
    )
}

/// Ollama's answer when its queue is full (OLLAMA_MAX_QUEUE): 503 with no Retry-After.
pub fn ollama_server_busy() -> Reply {
    now_json(
        503,
        json!({"error": "server busy, please try again.  maximum pending requests exceeded"}),
    )
}

/// An OpenAI answer with the given token usage.
pub fn openai_usage(model: &str, content: &str, prompt: u64, completion: u64) -> Value {
    let mut v = openai_answer(model, content, None);
    v["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                        "total_tokens": prompt + completion});
    v
}

/// Seconds between the first and last of `reqs` (server clock), and the most requests seen
/// in any window of `window` seconds.
pub fn rate_figures(reqs: &[Req], window: f64) -> (f64, usize) {
    let mut at: Vec<Instant> = reqs.iter().map(|r| r.at).collect();
    at.sort();
    let span = match (at.first(), at.last()) {
        (Some(a), Some(b)) => (*b - *a).as_secs_f64(),
        _ => 0.0,
    };
    let mut most = 0;
    for (i, t) in at.iter().enumerate() {
        let n = at[i..]
            .iter()
            .take_while(|u| (**u - *t).as_secs_f64() < window)
            .count();
        most = most.max(n);
    }
    (span, most)
}

/// A port on 127.0.0.1 that refuses connections and that nobody else can take while this
/// lives: a socket bound to it but not listening, without SO_REUSEADDR (Linux lets another
/// socket share the port only when both set it). Binding, freeing and reusing a port instead
/// races with every other test. [`ClosedPort::open`] starts listening on the same socket.
pub struct ClosedPort {
    fd: std::os::fd::OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: plain socket calls on a descriptor this function owns, with a sockaddr_in of
        // the size given.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let ptr = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(
                libc::bind(fd.as_raw_fd(), ptr, size),
                0,
                "bind: {}",
                std::io::Error::last_os_error()
            );
            let mut len = size;
            assert_eq!(libc::getsockname(fd.as_raw_fd(), ptr, &mut len), 0);
            ClosedPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server comes up on this very port: no other process can have taken it meanwhile.
    pub fn open(self) -> TcpListener {
        use std::os::fd::AsRawFd;
        // SAFETY: listen(2) on the bound socket this value owns.
        let r = unsafe { libc::listen(self.fd.as_raw_fd(), 128) };
        assert_eq!(r, 0, "listen: {}", std::io::Error::last_os_error());
        TcpListener::from(self.fd)
    }
}
