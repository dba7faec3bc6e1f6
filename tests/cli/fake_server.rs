//! A small HTTP/1.1 test server on 127.0.0.1 that answers like Ollama's `/api/generate`, `/api/chat` and
//! OpenAI's `/v1/chat/completions`, recording every request; shared by the `http` and grading
//! tests.

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
    /// Reads the request, then says nothing until the client goes away (bounded).
    Hang,
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
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                401 => "Unauthorized",
                404 => "Not Found",
                503 => "Service Unavailable",
                _ => "Status",
            };
            let head = format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
            let _ = stream.flush();
        }
        Reply::Hang => {
            // Say nothing; end when the client closes (it was killed or gave up).
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
    }
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
