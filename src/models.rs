//! Per-model settings: the `models` table, and the defaults that make an unconfigured name
//! mean "Ollama at $OLLAMA_HOST".

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const DEFAULT_TIMEOUT_S: f64 = 300.0;
pub const DEFAULT_CONCURRENCY: i64 = 1;
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
pub const DEFAULT_OLLAMA: &str = "http://127.0.0.1:11434";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Command,
    Ollama,
    Openai,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Command => "command",
            Backend::Ollama => "ollama",
            Backend::Openai => "openai",
        }
    }

    pub fn parse(text: &str) -> Backend {
        match text {
            "command" => Backend::Command,
            "openai" => Backend::Openai,
            _ => Backend::Ollama,
        }
    }
}

/// Backend settings kept as JSON in `models.settings`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Backend options: Ollama `options` (num_ctx, temperature…) or OpenAI body fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// `true`, `false` or a level (`low`, `medium`, `high`): sent explicitly when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub think: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Ollama `format`: `json` or a JSON schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Value>,
    /// False turns streaming off for servers that mishandle it (default: stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Once a stream has started, an attempt that receives nothing for this long ends `stall`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall_timeout_s: Option<f64>,
    /// The longest wait for the first bytes of the answer (else only the model timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_timeout_s: Option<f64>,
    /// What a command model reads on stdin (default: text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinFormat>,
    /// The model name the backend is sent, when it differs from ours: a variant
    /// (`qwen-t0`, `qwen-t9`) is one served model (`qwen2.5:7b`) with its own settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_model: Option<String>,
}

impl Settings {
    /// Whether HTTP calls stream (the default) or ask for one body.
    pub fn streams(&self) -> bool {
        self.stream.unwrap_or(true)
    }
}

/// A command model's stdin: the prompt as text (a chat item's conversation rendered), or the
/// chat messages as a JSON array of {role, content}.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StdinFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    pub backend: Backend,
    pub command: Option<String>,
    pub endpoints: Vec<String>,
    /// None = default; with `timeout_auto` this is the fallback while samples are few.
    pub timeout_s: Option<f64>,
    pub timeout_auto: bool,
    pub concurrency: i64,
    pub max_attempts: i64,
    pub settings: Settings,
    pub api_key_env: Option<String>,
    /// Pacing: requests and tokens per minute, per runner (None = unpaced).
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    /// USD per million input / output tokens (None = unpriced).
    pub price_in: Option<f64>,
    pub price_out: Option<f64>,
    /// False for a name never configured (zero-config Ollama).
    pub configured: bool,
}

impl ModelConfig {
    /// The settings an unconfigured model name gets: Ollama at `$OLLAMA_HOST`.
    pub fn unconfigured(name: &str) -> ModelConfig {
        ModelConfig {
            name: name.to_string(),
            backend: Backend::Ollama,
            command: None,
            endpoints: vec![ollama_host()],
            timeout_s: None,
            timeout_auto: false,
            concurrency: DEFAULT_CONCURRENCY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            settings: Settings::default(),
            api_key_env: None,
            rpm: None,
            tpm: None,
            price_in: None,
            price_out: None,
            configured: false,
        }
    }

    /// The model name the backend is sent: `--remote-model`, or our own name.
    pub fn served(&self) -> &str {
        self.settings.remote_model.as_deref().unwrap_or(&self.name)
    }

    /// Whether this model has a price for its tokens.
    pub fn priced(&self) -> bool {
        self.price_in.is_some() || self.price_out.is_some()
    }

    pub fn timeout(&self) -> f64 {
        self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)
    }

    /// The endpoints the lane spreads work over; HTTP models with none use the default.
    pub fn effective_endpoints(&self) -> Vec<String> {
        match self.backend {
            Backend::Command => vec![String::new()],
            Backend::Ollama if self.endpoints.is_empty() => vec![ollama_host()],
            Backend::Openai if self.endpoints.is_empty() => vec!["http://127.0.0.1:8000".into()],
            _ => self.endpoints.clone(),
        }
    }
}

/// `$OLLAMA_HOST` as a base URL: Ollama accepts `host`, `host:port` and full URLs there.
pub fn ollama_host() -> String {
    match std::env::var("OLLAMA_HOST") {
        Ok(h) if !h.trim().is_empty() => normalize_endpoint(&h, 11434),
        _ => DEFAULT_OLLAMA.to_string(),
    }
}

/// Whether `raw` can be an endpoint: `[http[s]://]host[:port][/path]`, as `normalize_endpoint`
/// completes it. Says what is wrong otherwise.
pub fn check_endpoint(raw: &str) -> std::result::Result<(), String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("it is empty".into());
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains spaces".into());
    }
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) => {
            if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
                return Err(format!("the scheme must be http or https, not {scheme:?}"));
            }
            rest
        }
        None => raw,
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 address in brackets holds colons of its own.
        Some((n, p)) if !host.ends_with(']') => (n, Some(p)),
        _ => (host, None),
    };
    if name.is_empty() {
        return Err("no host name".into());
    }
    let bracketed = name.starts_with('[') && name.ends_with(']');
    if !bracketed
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!("{name:?} is not a host name"));
    }
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(format!("{p:?} is not a port"));
        }
    }
    Ok(())
}

/// Adds a scheme and default port where missing and drops a trailing slash.
pub fn normalize_endpoint(raw: &str, default_port: u16) -> String {
    let raw = raw.trim().trim_end_matches('/');
    let (scheme, rest) = match raw.split_once("://") {
        Some((s, r)) => (s.to_string(), r.to_string()),
        None => ("http".to_string(), raw.to_string()),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest, String::new()),
    };
    // Ollama listens on 0.0.0.0 when told to; a client reaches it on loopback.
    let host = match host.strip_prefix("0.0.0.0") {
        Some(port) => format!("127.0.0.1{port}"),
        None if host.is_empty() => "127.0.0.1".to_string(),
        None => host,
    };
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host.ends_with(']');
    let host = if has_port || scheme == "https" || !path.is_empty() {
        host
    } else {
        format!("{host}:{default_port}")
    };
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::normalize_endpoint;

    #[test]
    fn endpoints_get_scheme_and_port() {
        assert_eq!(
            normalize_endpoint("localhost", 11434),
            "http://localhost:11434"
        );
        assert_eq!(
            normalize_endpoint("0.0.0.0:9999", 11434),
            "http://127.0.0.1:9999"
        );
        assert_eq!(
            normalize_endpoint("http://gpu1:11434/", 11434),
            "http://gpu1:11434"
        );
        assert_eq!(
            normalize_endpoint("https://api.example.com", 1),
            "https://api.example.com"
        );
    }
}
