//! Templates: `{name}` placeholders filled from an item's variables. Used for prompt templates,
//! rubrics, and command templates (split into argv first, so no shell ever sees the prompt).

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Fills `{name}` from `lookup`. `{{` and `}}` are literal braces; a `{` not followed by a
/// name and `}` (JSON in a template, say) is kept as written. An unknown name is an error.
pub fn render(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if let Some(name) = placeholder(tail) {
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => bail!("unknown variable {{{name}}} in template"),
            }
            rest = &tail[name.len() + 2..];
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the placeholders in a template, in order of appearance.
pub fn placeholders(template: &str) -> Vec<String> {
    let names = std::cell::RefCell::new(Vec::new());
    let _ = render(template, &|name| {
        names.borrow_mut().push(name.to_string());
        Some(String::new())
    });
    names.into_inner()
}

fn placeholder(tail: &str) -> Option<&str> {
    let body = tail.strip_prefix('{')?;
    let end = body.find('}')?;
    let name = &body[..end];
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some(name)
}

/// A variable's value as template text: strings as they are, other JSON as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Looks names up in an item's variables.
pub fn vars_lookup(vars: &Map<String, Value>) -> impl Fn(&str) -> Option<String> + '_ {
    move |name| vars.get(name).map(value_text)
}

/// Splits a command template into argv the way a shell would, then fills each argument.
pub fn command_argv(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>> {
    let words = shell_words::split(template)
        .map_err(|e| anyhow::anyhow!("cannot split command template {template:?}: {e}"))?;
    if words.is_empty() {
        bail!("command template is empty");
    }
    words.iter().map(|w| render(w, lookup)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Map<String, Value> {
        serde_json::from_str(r#"{"topic":"cats","n":3}"#).unwrap()
    }

    #[test]
    fn fills_names_and_keeps_json() {
        let v = vars();
        let out = render(
            r#"Tell {n} jokes about {topic} as {"a": 1} {{x}}"#,
            &vars_lookup(&v),
        )
        .unwrap();
        assert_eq!(out, r#"Tell 3 jokes about cats as {"a": 1} {x}"#);
    }

    #[test]
    fn unknown_name_is_named() {
        let v = vars();
        let err = render("about {subject}", &vars_lookup(&v)).unwrap_err();
        assert!(err.to_string().contains("{subject}"));
    }

    #[test]
    fn command_words_are_not_shell() {
        let v: Map<String, Value> =
            serde_json::from_str(r#"{"topic":"$(touch x); rm -rf y"}"#).unwrap();
        let argv = command_argv("echo 'about {topic}' --flag", &vars_lookup(&v)).unwrap();
        assert_eq!(argv, vec!["echo", "about $(touch x); rm -rf y", "--flag"]);
    }
}
