//! Chat messages per item: checking them at enqueue, the text they render to (the item's
//! prompt, for reports, graders and command models), and the model's system prompt.

use serde_json::{json, Map, Value};

/// A `messages` value as the chat APIs take it: a non-empty array of `{role, content}` objects,
/// content being text or an array of content parts. Says what is wrong otherwise.
pub fn check(v: &Value) -> Result<Vec<Value>, String> {
    let Value::Array(list) = v else {
        return Err(format!(
            "`messages` must be a JSON array of {{role, content}} objects, not {}",
            short(v)
        ));
    };
    if list.is_empty() {
        return Err("`messages` is empty".to_string());
    }
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if role.is_none_or(|r| r.trim().is_empty()) {
            return Err(format!("message {} has no `role`", i + 1));
        }
        match m.get("content") {
            Some(Value::String(_) | Value::Array(_)) => {}
            // An assistant turn that only called tools has null content.
            Some(Value::Null) if role == Some("assistant") => {}
            _ => return Err(format!("message {} has no text `content`", i + 1)),
        }
    }
    Ok(list.clone())
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// The text of a message's content: a string, or the `text` of its content parts.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The conversation as one text, `role: content` per message, blank lines between: the item's
/// prompt for reports and exports, `{prompt}` for graders, stdin for a plain command model.
pub fn render(messages: &[Value]) -> String {
    messages
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            let text = content_text(m.get("content").unwrap_or(&Value::Null));
            format!("{role}: {text}")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Puts `text` as the content of the last user message (appends one when there is none):
/// where a `--template` renders for a messages item.
pub fn set_last_user(messages: &mut Vec<Value>, text: String) {
    let last_user = messages
        .iter_mut()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    match last_user {
        Some(m) => m["content"] = Value::String(text),
        None => messages.push(json!({"role": "user", "content": text})),
    }
}

/// The messages sent: the item's own (or its prompt as one user message), with the model's
/// system prompt first unless the conversation brings its own.
pub fn request_messages(
    messages: Option<&[Value]>,
    prompt: &str,
    system: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::new();
    let has_system = messages.is_some_and(|ms| {
        ms.iter()
            .any(|m| m.get("role").and_then(Value::as_str) == Some("system"))
    });
    if let Some(system) = system.filter(|_| !has_system) {
        out.push(json!({"role": "system", "content": system}));
    }
    match messages {
        Some(ms) => out.extend(ms.iter().cloned()),
        None => out.push(json!({"role": "user", "content": prompt})),
    }
    out
}

/// Ollama's /api/chat takes content as text only: content parts are joined into it.
pub fn text_only(messages: Vec<Value>) -> Vec<Value> {
    messages
        .into_iter()
        .map(|mut m| {
            if let Some(content) = m.get("content").filter(|c| c.is_array()) {
                m["content"] = Value::String(content_text(content));
            }
            m
        })
        .collect()
}

/// Per-item request options (OpenAI body fields) in Ollama's terms: token limits become
/// `num_predict`, `response_format` the top-level `format`; the rest are Ollama options under
/// the same names (temperature, top_p, seed, stop, …). Returns (options, format).
pub fn ollama_options(item: &Map<String, Value>) -> (Map<String, Value>, Option<Value>) {
    let mut options = Map::new();
    let mut format = None;
    for (k, v) in item {
        match k.as_str() {
            "max_tokens" | "max_completion_tokens" => {
                options.insert("num_predict".into(), v.clone());
            }
            "response_format" => {
                format = match v.get("type").and_then(Value::as_str) {
                    Some("json_object") => Some(json!("json")),
                    Some("json_schema") => {
                        v.get("json_schema").and_then(|s| s.get("schema")).cloned()
                    }
                    _ => None,
                };
            }
            _ => {
                options.insert(k.clone(), v.clone());
            }
        }
    }
    (options, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_is_prepended_only_when_absent() {
        let own = vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "hi"}),
        ];
        let sent = request_messages(Some(&own), "", Some("model system"));
        assert_eq!(sent, own);
        let user = vec![json!({"role": "user", "content": "hi"})];
        let sent = request_messages(Some(&user), "", Some("model system"));
        assert_eq!(
            sent[0],
            json!({"role": "system", "content": "model system"})
        );
        assert_eq!(sent.len(), 2);
        let plain = request_messages(None, "p", None);
        assert_eq!(plain, vec![json!({"role": "user", "content": "p"})]);
    }

    #[test]
    fn render_and_template_target() {
        let mut ms = vec![
            json!({"role": "system", "content": "s"}),
            json!({"role": "user", "content": [{"type": "text", "text": "a"}]}),
            json!({"role": "assistant", "content": "b"}),
            json!({"role": "user", "content": "c"}),
        ];
        assert_eq!(
            render(&ms),
            "system: s\n\nuser: a\n\nassistant: b\n\nuser: c"
        );
        set_last_user(&mut ms, "templated".into());
        assert_eq!(ms[3]["content"], json!("templated"));
        assert!(check(&json!([{"role": "user"}])).is_err());
        assert!(check(&json!([])).is_err());
        assert!(check(&json!("hi")).is_err());
    }
}
