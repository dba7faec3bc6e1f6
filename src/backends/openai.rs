//! OpenAI-compatible servers (vLLM, llama.cpp server, LM Studio, hosted APIs):
//! `POST {endpoint}/v1/chat/completions`, streamed as server-sent events with
//! `stream_options.include_usage` (the usage comes in a last chunk), or one body with
//! `--stream false`; token usage recorded.

use serde_json::{json, Map, Value};

use std::time::Instant;

use super::{answer, cut_short, failure, not_json, read_lines, status_failure, stream, Streamed};
use crate::backends::{WorkerRequest, WorkerResponse};

pub fn call(r: &WorkerRequest, key: Option<&str>) -> WorkerResponse {
    let base = r.endpoint.trim_end_matches('/');
    let url = chat_url(base);
    let hint = format!("is the server running at {base}?");
    let streamed = r.settings.streams();
    let mut ex = match stream::send(r, &url, &body(r), key, &hint, streamed) {
        Ok(ex) => ex,
        Err(resp) => return *resp,
    };
    if !(200..300).contains(&ex.status) || !ex.is_stream() {
        let text = match ex.whole_body(&url) {
            Ok(t) => t,
            Err(resp) => return *resp,
        };
        if !(200..300).contains(&ex.status) {
            return refused(r, base, &url, ex.status, &text);
        }
        // One body, asked for or not: parsed whole; no time to first token to measure.
        let mut resp = whole(&url, ex.status, &text);
        let tokens = resp
            .timings
            .as_ref()
            .and_then(|t| t["completion_tokens"].as_i64());
        resp.metrics = Some(ex.metrics(None, tokens));
        return resp;
    }
    let status = ex.status;
    let mut acc = Streamed::default();
    let mut sse = Sse::default();
    let mut end = End::default();
    let mut event = |acc: &mut Streamed, name: Option<String>, data: String, at| {
        chunk(acc, &mut end, name.as_deref(), &data, at).map_err(|e| {
            e.unwrap_or_else(|| Box::new(not_json(status, &url, &data, "an OpenAI stream event")))
        })
    };
    let read = read_lines(&mut ex, &mut acc, |acc, line, at| match sse.line(line) {
        Some((name, data)) => event(acc, name, data, at),
        None => Ok(()),
    });
    let read = read.and_then(|()| match sse.flush() {
        Some((name, data)) => event(&mut acc, name, data, ex.ended.unwrap_or_else(Instant::now)),
        None => Ok(()),
    });
    if let Err(resp) = read {
        return acc.failed(&ex, resp);
    }
    if !end.done && end.finish.is_none() {
        let resp = Box::new(cut_short(&ex, "`data: [DONE]` or a finish_reason"));
        return acc.failed(&ex, resp);
    }
    let finish = end.finish.as_deref();
    let tokens = end.usage["completion_tokens"].as_i64();
    let timings = timings(
        &json!({ "usage": end.usage, "timings": end.server }),
        finish,
    );
    acc.done(&ex, finish, timings, tokens)
}

/// What the last events of a stream say: why it stopped, the usage, `[DONE]`.
#[derive(Default)]
struct End {
    finish: Option<String>,
    usage: Value,
    done: bool,
    /// llama.cpp's server sends its own `timings` (prompt_ms, predicted_per_second, …).
    server: Value,
}

/// One SSE event: a chunk of the answer, the usage, `[DONE]`, or an error the server sent.
/// `Err(None)` is data that is not JSON.
fn chunk(
    acc: &mut Streamed,
    end: &mut End,
    name: Option<&str>,
    data: &str,
    at: Instant,
) -> Result<(), Option<Box<WorkerResponse>>> {
    if data.trim() == "[DONE]" {
        end.done = true;
        return Ok(());
    }
    let v: Value = serde_json::from_str(data).map_err(|_| None)?;
    if name == Some("error") || v.get("error").is_some() {
        // An error event may carry an HTTP-like code (vLLM, OpenAI); without one it is the
        // server failing part way, which another attempt may not meet.
        let code = v
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| (400..600).contains(c));
        return Err(Some(Box::new(failure(
            "http",
            code,
            format!(
                "the server failed part way through the answer: {}",
                super::error_text(data)
            ),
        ))));
    }
    if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        // vLLM and llama.cpp send `reasoning_content`; some servers `reasoning`.
        let reasoning = delta
            .get("reasoning_content")
            .or_else(|| delta.get("reasoning"))
            .and_then(Value::as_str);
        acc.push(delta.get("content").and_then(Value::as_str), reasoning, at);
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            end.finish = Some(f.to_string());
        }
    }
    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
        end.usage = u.clone();
    }
    if let Some(t) = v.get("timings").filter(|t| !t.is_null()) {
        end.server = t.clone();
    }
    Ok(())
}

/// Server-sent events: `event:` and `data:` lines, an event ends at a blank line.
#[derive(Default)]
struct Sse {
    name: Option<String>,
    data: Vec<String>,
}

impl Sse {
    /// Takes one line; returns an event (name, data) when a blank line ends one.
    fn line(&mut self, line: &str) -> Option<(Option<String>, String)> {
        if line.is_empty() {
            return self.flush();
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.name = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {} // comments (`: ping`), id, retry
        }
        None
    }

    /// The event in progress, if any (a body may end without the last blank line).
    fn flush(&mut self) -> Option<(Option<String>, String)> {
        let name = self.name.take();
        if self.data.is_empty() {
            return None;
        }
        Some((name, std::mem::take(&mut self.data).join("\n")))
    }
}

/// A whole (non-streamed) chat completion.
fn whole(url: &str, status: u16, body: &str) -> WorkerResponse {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return not_json(status, url, body, "chat completion JSON");
    };
    let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
        return not_json(status, url, body, "a chat completion (no `choices`)");
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let text = message.get("content").and_then(Value::as_str).unwrap_or("");
    // vLLM and llama.cpp send `reasoning_content`; some servers `reasoning`.
    let reasoning = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    answer(status, text, reasoning, finish, timings(&v, finish))
}

/// `{base}/v1/chat/completions`, without doubling a `/v1` the endpoint already has.
fn chat_url(base: &str) -> String {
    if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    }
}

/// Messages, then the model's options as body fields (max_tokens, temperature, …).
fn body(r: &WorkerRequest) -> Value {
    let s = &r.settings;
    let messages =
        crate::chat::request_messages(r.messages.as_deref(), &r.prompt, s.system.as_deref());
    let mut b = Map::new();
    b.insert("model".into(), json!(r.model));
    b.insert("messages".into(), Value::Array(messages));
    b.insert("stream".into(), json!(s.streams()));
    if s.streams() {
        b.insert("stream_options".into(), json!({"include_usage": true}));
    }
    match &s.think {
        // A level is OpenAI's reasoning effort; on/off is the chat template switch that
        // vLLM, SGLang and llama.cpp read for thinking models.
        Some(Value::String(level)) => {
            b.insert("reasoning_effort".into(), json!(level));
        }
        Some(Value::Bool(on)) => {
            b.insert(
                "chat_template_kwargs".into(),
                json!({"enable_thinking": on}),
            );
        }
        _ => {}
    }
    match &s.format {
        Some(Value::String(f)) if f == "json" => {
            b.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(schema) => {
            b.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
            );
        }
        None => {}
    }
    // The item's own options (a Batch API line's body fields) win over the model's.
    for (k, v) in s.options.iter().chain(&r.item_options) {
        if k != "messages" && k != "stream" && k != "stream_options" {
            b.insert(k.clone(), v.clone());
        }
    }
    Value::Object(b)
}

/// Token usage as the server reported it (null when it did not), and why it stopped.
/// `done_reason` mirrors `finish_reason` so truncated answers count like Ollama's; llama.cpp's
/// server adds its own `timings`, kept as `server_timings`.
fn timings(v: &Value, finish: Option<&str>) -> Value {
    let usage = v.get("usage").unwrap_or(&Value::Null);
    let num = |f: &str| {
        usage
            .get(f)
            .and_then(Value::as_i64)
            .map_or(Value::Null, |n| json!(n))
    };
    let reasoning_tokens = usage
        .get("completion_tokens_details")
        .and_then(|d| d.get("reasoning_tokens"))
        .and_then(Value::as_i64)
        .map_or(Value::Null, |n| json!(n));
    let mut t = json!({
        "prompt_tokens": num("prompt_tokens"),
        "completion_tokens": num("completion_tokens"),
        "total_tokens": num("total_tokens"),
        "reasoning_tokens": reasoning_tokens,
        "finish_reason": finish,
        "done_reason": finish,
    });
    if let Some(server) = v.get("timings").filter(|t| t.is_object()) {
        t["server_timings"] = server.clone();
    }
    t
}

/// A status that is not 2xx, with what it usually means on these servers.
fn refused(r: &WorkerRequest, base: &str, url: &str, status: u16, body: &str) -> WorkerResponse {
    let text = super::error_text(body);
    match status {
        404 if text.to_lowercase().contains("model") => failure(
            "http",
            Some(status),
            format!("model {} not found at {base}: {text}", r.model),
        ),
        404 => status_failure(
            status,
            url,
            body,
            " — does the endpoint serve /v1/chat/completions?",
        ),
        401 | 403 => {
            let hint = match &r.api_key_env {
                Some(var) => format!(" — check the API key in ${var}"),
                None => " — set the key's variable with `llmbatch models set … --api-key-env VAR`"
                    .to_string(),
            };
            status_failure(status, url, body, &hint)
        }
        _ => status_failure(status, url, body, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_is_not_doubled() {
        assert_eq!(
            chat_url("http://h:8000"),
            "http://h:8000/v1/chat/completions"
        );
        assert_eq!(
            chat_url("https://api.x.com/v1"),
            "https://api.x.com/v1/chat/completions"
        );
    }

    #[test]
    fn usage_missing_is_null() {
        let t = timings(&json!({"usage": {"prompt_tokens": 5}}), Some("length"));
        assert_eq!(t["prompt_tokens"], json!(5));
        assert_eq!(t["completion_tokens"], Value::Null);
        assert_eq!(t["done_reason"], json!("length"));
        assert!(t.get("server_timings").is_none());
        let t = timings(
            &json!({"usage": null, "timings": {"prompt_ms": 1.5, "predicted_per_second": 90.0}}),
            Some("stop"),
        );
        assert_eq!(t["server_timings"]["predicted_per_second"], json!(90.0));
    }
}
