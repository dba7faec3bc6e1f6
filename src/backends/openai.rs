//! OpenAI-compatible servers (vLLM, llama.cpp server, LM Studio, hosted APIs):
//! `POST {endpoint}/v1/chat/completions`; token usage recorded.

use serde_json::{json, Map, Value};

use super::{answer, backpressure, failure, not_json, post, status_failure};
use crate::attempt::{WorkerRequest, WorkerResponse};

pub fn call(r: &WorkerRequest, key: Option<&str>) -> WorkerResponse {
    let base = r.endpoint.trim_end_matches('/');
    let url = chat_url(base);
    let hint = format!("is the server running at {base}?");
    let reply = match post(r, &url, &body(r), key, &hint) {
        Ok(reply) => reply,
        Err(resp) => return *resp,
    };
    if let Some(throttled) = backpressure(&reply, &url) {
        return throttled;
    }
    if !(200..300).contains(&reply.status) {
        return refused(r, base, &url, reply.status, &reply.body);
    }
    let Ok(v) = serde_json::from_str::<Value>(&reply.body) else {
        return not_json(reply.status, &url, &reply.body, "chat completion JSON");
    };
    let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
        return not_json(
            reply.status,
            &url,
            &reply.body,
            "a chat completion (no `choices`)",
        );
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let text = message.get("content").and_then(Value::as_str).unwrap_or("");
    // vLLM and llama.cpp send `reasoning_content`; some servers `reasoning`.
    let reasoning = message
        .get("reasoning_content")
        .or_else(|| message.get("reasoning"))
        .and_then(Value::as_str);
    let finish = choice.get("finish_reason").and_then(Value::as_str);
    answer(reply.status, text, reasoning, finish, timings(&v, finish))
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
    let mut messages = Vec::new();
    if let Some(system) = &s.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": r.prompt}));
    let mut b = Map::new();
    b.insert("model".into(), json!(r.model));
    b.insert("messages".into(), Value::Array(messages));
    b.insert("stream".into(), json!(false));
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
    for (k, v) in &s.options {
        if k != "messages" && k != "stream" {
            b.insert(k.clone(), v.clone());
        }
    }
    Value::Object(b)
}

/// Token usage as the server reported it (null when it did not), and why it stopped.
/// `done_reason` mirrors `finish_reason` so truncated answers count like Ollama's.
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
    json!({
        "prompt_tokens": num("prompt_tokens"),
        "completion_tokens": num("completion_tokens"),
        "total_tokens": num("total_tokens"),
        "reasoning_tokens": reasoning_tokens,
        "finish_reason": finish,
        "done_reason": finish,
    })
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
    }
}
