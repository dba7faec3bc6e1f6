//! Ollama: `POST {endpoint}/api/generate` for a prompt, `/api/chat` for a chat item's messages,
//! streamed as NDJSON (one JSON object per line, the last with `done: true` and Ollama's own
//! timings), or one body with `--stream false`.

use serde_json::{json, Map, Value};

use super::{
    answer, cut_short, error_text, failure, not_json, read_lines, status_failure, stream, Streamed,
};
use crate::backends::{WorkerRequest, WorkerResponse};

/// Ollama's timing and token fields (durations in nanoseconds), kept as the server named them.
const TIMING_FIELDS: [&str; 6] = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
];

pub fn call(r: &WorkerRequest, key: Option<&str>) -> WorkerResponse {
    let base = r.endpoint.trim_end_matches('/');
    let chat = r.messages.is_some();
    let url = if chat {
        format!("{base}/api/chat")
    } else {
        format!("{base}/api/generate")
    };
    let hint = format!("is Ollama running at {base}?");
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
        let mut resp = whole(base, &url, ex.status, &text, chat);
        let tokens = resp.timings.as_ref().and_then(|t| t["eval_count"].as_i64());
        resp.metrics = Some(ex.metrics(None, tokens));
        return resp;
    }
    let status = ex.status;
    let mut acc = Streamed::default();
    let mut last: Option<Value> = None;
    let read = read_lines(&mut ex, &mut acc, |acc, line, at| {
        if line.trim().is_empty() {
            return Ok(());
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Err(Box::new(not_json(
                status,
                &url,
                line,
                "a line of Ollama's NDJSON stream",
            )));
        };
        if v.get("error").is_some() {
            return Err(Box::new(failure(
                "http",
                None,
                format!(
                    "Ollama at {base} failed part way through the answer: {}",
                    error_text(line)
                ),
            )));
        }
        let (text, thinking) = answer_fields(&v, chat);
        acc.push(text, thinking, at);
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            last = Some(v);
        }
        Ok(())
    });
    if let Err(resp) = read {
        return acc.failed(&ex, resp);
    }
    let Some(last) = last else {
        let resp = Box::new(cut_short(&ex, "Ollama said done"));
        return acc.failed(&ex, resp);
    };
    let stop = last.get("done_reason").and_then(Value::as_str);
    let tokens = last.get("eval_count").and_then(Value::as_i64);
    acc.done(&ex, stop, timings(&last), tokens)
}

/// The answer text and thinking of a chunk or a whole answer: /api/chat has them in
/// `message.content` / `message.thinking`, /api/generate in `response` / `thinking`.
fn answer_fields(v: &Value, chat: bool) -> (Option<&str>, Option<&str>) {
    let answered = if chat { v.get("message") } else { Some(v) };
    let field = |name: &str| answered.and_then(|a| a.get(name)).and_then(Value::as_str);
    if chat {
        (field("content"), field("thinking"))
    } else {
        (field("response"), field("thinking"))
    }
}

/// A whole (non-streamed) answer.
fn whole(base: &str, url: &str, status: u16, body: &str, chat: bool) -> WorkerResponse {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return not_json(status, url, body, "the JSON Ollama answers with");
    };
    let (text, thinking) = answer_fields(&v, chat);
    let Some(text) = text else {
        if v.get("error").is_some() {
            return failure(
                "http",
                Some(status),
                format!(
                    "Ollama at {base} answered with an error: {}",
                    error_text(body)
                ),
            );
        }
        return not_json(
            status,
            url,
            body,
            if chat {
                "an Ollama chat answer (no `message.content`)"
            } else {
                "an Ollama answer (no `response` field)"
            },
        );
    };
    let done_reason = v.get("done_reason").and_then(Value::as_str);
    answer(status, text, thinking, done_reason, timings(&v))
}

/// The request body: only what the model's settings and the item set, so Ollama's defaults
/// hold otherwise. A chat item's messages go as they are (the model's system prompt first
/// unless they have one); a prompt goes with the model's `system`.
fn body(r: &WorkerRequest) -> Value {
    let s = &r.settings;
    let mut b = Map::new();
    b.insert("model".into(), json!(r.model));
    match &r.messages {
        Some(messages) => {
            let sent = crate::chat::request_messages(Some(messages), "", s.system.as_deref());
            b.insert("messages".into(), json!(crate::chat::text_only(sent)));
        }
        None => {
            b.insert("prompt".into(), json!(r.prompt));
            if let Some(system) = &s.system {
                b.insert("system".into(), json!(system));
            }
        }
    }
    b.insert("stream".into(), json!(s.streams()));
    let (item_options, item_format) = crate::chat::ollama_options(&r.item_options);
    let mut options = s.options.clone();
    options.extend(item_options);
    if !options.is_empty() {
        b.insert("options".into(), Value::Object(options));
    }
    if let Some(k) = &s.keep_alive {
        // Ollama reads a bare number as seconds (-1 = forever) and a string as a Go duration.
        let v = match k.trim().parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => json!(k.trim()),
        };
        b.insert("keep_alive".into(), v);
    }
    if let Some(format) = item_format.as_ref().or(s.format.as_ref()) {
        b.insert("format".into(), format.clone());
    }
    // Thinking-capable models think when `think` is absent, so a setting is always sent.
    if let Some(think) = &s.think {
        b.insert("think".into(), think.clone());
    }
    Value::Object(b)
}

/// Ollama's own numbers; a field it did not send is unknown (null), never 0.
fn timings(v: &Value) -> Value {
    let mut t = Map::new();
    for f in TIMING_FIELDS {
        t.insert(
            f.into(),
            v.get(f)
                .and_then(Value::as_i64)
                .map_or(Value::Null, |n| json!(n)),
        );
    }
    let tokens_per_s = match (
        v.get("eval_count").and_then(Value::as_f64),
        v.get("eval_duration").and_then(Value::as_f64),
    ) {
        (Some(n), Some(ns)) if ns > 0.0 => json!((n / (ns / 1e9) * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    t.insert("tokens_per_s".into(), tokens_per_s);
    t.insert(
        "done_reason".into(),
        v.get("done_reason").cloned().unwrap_or(Value::Null),
    );
    Value::Object(t)
}

/// A status that is not 2xx, with Ollama's meaning of it.
fn refused(r: &WorkerRequest, base: &str, url: &str, status: u16, body: &str) -> WorkerResponse {
    let text = error_text(body);
    let lower = text.to_lowercase();
    match status {
        404 if lower.contains("not found") || lower.contains("model") => failure(
            "http",
            Some(status),
            format!(
                "model {m} not found at {base} — run `ollama pull {m}` ({text})",
                m = r.model
            ),
        ),
        404 => status_failure(status, url, body, " — is this an Ollama server?"),
        400 if lower.contains("think") => status_failure(
            status,
            url,
            body,
            &format!(
                " — turn thinking off: `llmbatch models set {} --think false`",
                r.model
            ),
        ),
        _ => status_failure(status, url, body, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Backend, Settings};

    fn request(settings: Settings) -> WorkerRequest {
        WorkerRequest {
            backend: Backend::Ollama,
            endpoint: "http://127.0.0.1:1".into(),
            model: "m".into(),
            prompt: "p".into(),
            messages: None,
            item_options: Map::new(),
            settings,
            api_key_env: None,
            timeout_s: 1.0,
        }
    }

    #[test]
    fn body_sends_only_what_is_set() {
        let b = body(&request(Settings::default()));
        assert_eq!(b, json!({"model": "m", "prompt": "p", "stream": true}));
        let mut s = Settings {
            think: Some(json!(false)),
            keep_alive: Some("-1".into()),
            ..Settings::default()
        };
        s.options.insert("num_ctx".into(), json!(8192));
        let b = body(&request(s));
        assert_eq!(b["think"], json!(false));
        assert_eq!(b["keep_alive"], json!(-1));
        assert_eq!(b["options"]["num_ctx"], json!(8192));
    }

    #[test]
    fn missing_timings_are_null() {
        let t = timings(&json!({"eval_count": 10, "eval_duration": 500_000_000u64}));
        assert_eq!(t["eval_count"], json!(10));
        assert_eq!(t["load_duration"], Value::Null);
        assert_eq!(t["tokens_per_s"], json!(20.0));
        assert_eq!(t["done_reason"], Value::Null);
    }
}
