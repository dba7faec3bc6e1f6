//! `models set` / `models list`: per-model settings.

use anyhow::Result;
use serde_json::{json, Value};

use crate::cli::{ModelSetArgs, ModelsCommand};
use crate::db::{Catalog, Store};
use crate::models::{self, Backend, ModelConfig};
use crate::report::render::{render, Table};
use crate::usage;

pub fn run(cmd: &ModelsCommand, db: &mut dyn Store) -> Result<u8> {
    match cmd {
        ModelsCommand::Set(a) => set(a, db),
        ModelsCommand::List(f) => {
            let tables = [list_table(db)?];
            render(&tables, f.format, &mut std::io::stdout().lock())?;
            Ok(0)
        }
    }
}

fn set(a: &ModelSetArgs, db: &mut dyn Store) -> Result<u8> {
    check_set_args(a)?;
    let mut m = db.model(&a.name)?;
    let was_configured = m.configured;
    set_backend(a, &mut m, was_configured);
    set_timeout(a, &mut m)?;
    if let Some(c) = a.concurrency {
        m.concurrency = c;
    }
    if let Some(n) = a.max_attempts {
        m.max_attempts = n;
    }
    set_request_settings(a, &mut m)?;
    set_key_and_pacing(a, &mut m)?;
    set_streaming(a, &mut m)?;
    validate(&m)?;
    db.save_model(&m)?;
    db.publish()?;
    let verb = if was_configured { "updated" } else { "added" };
    crate::outln!("{verb} model {}: {}", m.name, describe(&m))?;
    Ok(0)
}

/// The arguments that can be refused before the model is read.
fn check_set_args(a: &ModelSetArgs) -> Result<()> {
    if a.name.trim().is_empty() {
        usage!("models set: the model name cannot be empty");
    }
    if let (Some(b), Some(_)) = (a.backend, &a.command) {
        if b != Backend::Command {
            usage!(
                "model {}: --command is only for --backend command; the {} backend calls --endpoint URLs",
                a.name,
                b.as_str()
            );
        }
    }
    for e in &a.endpoints {
        if let Err(why) = models::check_endpoint(e) {
            usage!("model {}: --endpoint {e:?} is not a server URL: {why} (e.g. http://gpu1:11434 or https://api.openai.com/v1)", a.name);
        }
    }
    Ok(())
}

/// The backend, its command template and its endpoints.
fn set_backend(a: &ModelSetArgs, m: &mut ModelConfig, was_configured: bool) {
    if let Some(b) = a.backend {
        m.backend = b;
    } else if a.command.is_some() {
        // A command template is only ever run by the command backend: never store it on an
        // Ollama model where it would be silently ignored.
        m.backend = Backend::Command;
    }
    if let Some(c) = &a.command {
        m.command = Some(c.clone());
    }
    if !a.endpoints.is_empty() {
        let port = if m.backend == Backend::Openai {
            8000
        } else {
            11434
        };
        m.endpoints = a
            .endpoints
            .iter()
            .map(|e| models::normalize_endpoint(e, port))
            .collect();
    } else if !was_configured {
        // No endpoint given: an Ollama model keeps following $OLLAMA_HOST where `run` runs,
        // rather than the one in effect when it was configured.
        m.endpoints.clear();
    }
}

/// `--timeout`: a duration, or `auto`.
fn set_timeout(a: &ModelSetArgs, m: &mut ModelConfig) -> Result<()> {
    if let Some(t) = &a.timeout {
        if t.trim().eq_ignore_ascii_case("auto") {
            m.timeout_auto = true;
        } else {
            let d = crate::util::parse_duration(t)
                .map_err(|e| crate::error::UsageError(format!("--timeout: {e}")))?;
            if d.is_zero() {
                usage!("--timeout must be more than zero");
            }
            m.timeout_s = Some(d.as_secs_f64());
            m.timeout_auto = false;
        }
    }
    Ok(())
}

/// What is sent with each request: options, keep-alive, thinking, the remote model's name,
/// system prompt, stdin mode and output format.
fn set_request_settings(a: &ModelSetArgs, m: &mut ModelConfig) -> Result<()> {
    for opt in &a.options {
        let Some((k, v)) = opt.split_once('=') else {
            usage!("--option {opt:?}: expected KEY=VALUE");
        };
        // Numbers and booleans go to the server as such; anything else as a string.
        let value = serde_json::from_str::<Value>(v.trim()).unwrap_or_else(|_| json!(v));
        m.settings.options.insert(k.trim().to_string(), value);
    }
    if let Some(k) = &a.keep_alive {
        m.settings.keep_alive = Some(k.clone());
    }
    if let Some(t) = &a.think {
        m.settings.think = Some(match t.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => json!(true),
            "false" | "no" | "off" => json!(false),
            level @ ("low" | "medium" | "high") => json!(level),
            other => usage!("--think {other:?}: expected true, false, low, medium or high"),
        });
    }
    if let Some(r) = &a.remote_model {
        if r.trim().is_empty() {
            usage!("model {}: --remote-model cannot be empty", a.name);
        }
        // The variant's own name again means "no variant".
        m.settings.remote_model = (r.trim() != m.name).then(|| r.trim().to_string());
    }
    if let Some(s) = &a.system {
        m.settings.system = Some(s.clone());
    }
    if let Some(stdin) = a.stdin {
        m.settings.stdin = Some(stdin);
    }
    if let Some(f) = &a.format_output {
        m.settings.format = Some(if f.trim() == "json" {
            json!("json")
        } else {
            serde_json::from_str(f).map_err(|e| {
                crate::error::UsageError(format!(
                    "--format-output: not `json` nor a JSON schema: {e}"
                ))
            })?
        });
    }
    Ok(())
}

/// The API key's variable, request pacing and prices.
fn set_key_and_pacing(a: &ModelSetArgs, m: &mut ModelConfig) -> Result<()> {
    if let Some(k) = &a.api_key_env {
        check_api_key_env(k)?;
        m.api_key_env = Some(k.clone());
    }
    // 0 turns pacing off.
    if let Some(n) = a.rpm {
        m.rpm = (n > 0).then_some(n);
    }
    if let Some(n) = a.tpm {
        m.tpm = (n > 0).then_some(n);
    }
    if let Some(p) = a.price_in {
        m.price_in = Some(p);
    }
    if let Some(p) = a.price_out {
        m.price_out = Some(p);
    }
    Ok(())
}

/// Streaming and its two deadlines.
fn set_streaming(a: &ModelSetArgs, m: &mut ModelConfig) -> Result<()> {
    if let Some(on) = a.stream {
        m.settings.stream = Some(on);
    }
    if let Some(d) = &a.stall_timeout {
        m.settings.stall_timeout_s = optional_duration("--stall-timeout", d)?;
    }
    if let Some(d) = &a.first_token_timeout {
        m.settings.first_token_timeout_s = optional_duration("--first-token-timeout", d)?;
    }
    Ok(())
}

/// `--api-key-env` takes a variable's name. A key pasted there instead would be stored and
/// listed, so refuse what cannot be a name, and a name that is not set here but looks like a
/// key. The value is never repeated in the message.
fn check_api_key_env(name: &str) -> Result<()> {
    let plausible = name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !plausible {
        usage!("--api-key-env takes the NAME of an environment variable (letters, digits and _, e.g. OPENAI_API_KEY), not the key itself; the value given was not stored");
    }
    if std::env::var_os(name).is_none() && looks_like_secret(name) {
        usage!("--api-key-env: no such variable is set, and the value given looks like a key rather than a variable's name; it was not stored. Export the key (export OPENAI_API_KEY=...) and give the NAME: --api-key-env OPENAI_API_KEY");
    }
    Ok(())
}

/// Long, with digits and lower case, and mixed case or very long: a token, not a variable
/// name (those are upper case by convention, and short).
fn looks_like_secret(text: &str) -> bool {
    let has = |f: fn(&char) -> bool| text.chars().any(|c| f(&c));
    text.len() >= 20
        && has(char::is_ascii_digit)
        && has(char::is_ascii_lowercase)
        && (has(char::is_ascii_uppercase) || text.len() >= 32)
}

/// A duration flag where `0` means "off".
fn optional_duration(flag: &str, text: &str) -> Result<Option<f64>> {
    let d = crate::util::parse_duration(text)
        .map_err(|e| crate::error::UsageError(format!("{flag}: {e}")))?;
    Ok((!d.is_zero()).then_some(d.as_secs_f64()))
}

fn validate(m: &ModelConfig) -> Result<()> {
    if m.backend == Backend::Command {
        let s = &m.settings;
        if s.stall_timeout_s.is_some() || s.first_token_timeout_s.is_some() {
            usage!(
                "model {}: --stall-timeout and --first-token-timeout apply to streamed HTTP answers (ollama, openai), not to command models",
                m.name
            );
        }
        let Some(cmd) = &m.command else {
            usage!(
                "model {}: --backend command needs --command 'TEMPLATE'",
                m.name
            );
        };
        if let Err(e) = shell_words::split(cmd) {
            usage!("model {}: cannot split --command {cmd:?}: {e}", m.name);
        }
        if cmd.trim().is_empty() {
            usage!("model {}: --command is empty", m.name);
        }
    }
    if m.backend == Backend::Openai && m.endpoints.is_empty() {
        usage!("model {}: --backend openai needs --endpoint URL", m.name);
    }
    Ok(())
}

fn describe(m: &ModelConfig) -> String {
    let target = match m.backend {
        Backend::Command => format!("command {:?}", m.command.clone().unwrap_or_default()),
        _ => format!(
            "{} at {}",
            m.backend.as_str(),
            m.effective_endpoints().join(", ")
        ),
    };
    let served = match &m.settings.remote_model {
        Some(r) => format!(" (sends model {r:?})"),
        None => String::new(),
    };
    let mut text = format!(
        "{target}{served}, timeout {}, concurrency {}, max attempts {}",
        timeout_text(m),
        m.concurrency,
        m.max_attempts
    );
    if let Some(n) = m.rpm {
        text.push_str(&format!(", {n} requests/min"));
    }
    if let Some(n) = m.tpm {
        text.push_str(&format!(", {n} tokens/min"));
    }
    if m.priced() {
        text.push_str(&format!(
            ", ${} in / ${} out per 1M tokens",
            m.price_in.unwrap_or(0.0),
            m.price_out.unwrap_or(0.0)
        ));
    }
    if m.backend != Backend::Command {
        let s = &m.settings;
        if !s.streams() {
            text.push_str(", streaming off");
        }
        if let Some(t) = s.stall_timeout_s {
            text.push_str(&format!(", stall timeout {t}s"));
        }
        if let Some(t) = s.first_token_timeout_s {
            text.push_str(&format!(", first-token timeout {t}s"));
        }
    }
    text
}

fn timeout_text(m: &ModelConfig) -> String {
    if m.timeout_auto {
        format!("auto (fallback {}s)", m.timeout())
    } else {
        format!("{}s", m.timeout())
    }
}

fn list_table(catalog: &dyn Catalog) -> Result<Table> {
    let mut t = Table::new(
        "models",
        "Models",
        &[
            "name",
            "backend",
            "served_model",
            "target",
            "timeout_s",
            "timeout_auto",
            "concurrency",
            "max_attempts",
            "settings",
            "api_key_env",
            "rpm",
            "tpm",
            "price_in",
            "price_out",
        ],
    );
    for m in catalog.models()? {
        let target = match m.backend {
            Backend::Command => m.command.clone().unwrap_or_default(),
            _ => m.effective_endpoints().join(" "),
        };
        t.push(vec![
            json!(m.name),
            json!(m.backend.as_str()),
            json!(m.served()),
            json!(target),
            json!(m.timeout()),
            json!(m.timeout_auto),
            json!(m.concurrency),
            json!(m.max_attempts),
            json!(serde_json::to_string(&m.settings)?),
            json!(m.api_key_env),
            json!(m.rpm),
            json!(m.tpm),
            json!(m.price_in),
            json!(m.price_out),
        ]);
    }
    t.notes.push(format!(
        "Unlisted model names run on Ollama at {} with defaults (timeout {}s, concurrency 1, max attempts 3).",
        models::ollama_host(),
        models::DEFAULT_TIMEOUT_S
    ));
    Ok(t)
}
