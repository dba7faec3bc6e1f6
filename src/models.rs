//! Per-model settings: the `models` table, and the defaults that make an unconfigured name
//! mean "Ollama at $OLLAMA_HOST".

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
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

pub fn load(conn: &Connection, name: &str) -> Result<ModelConfig> {
    let row = conn
        .query_row(
            "SELECT name, backend, command, endpoints, timeout_s, timeout_auto, concurrency,
                    max_attempts, settings, api_key_env, rpm, tpm, price_in, price_out
             FROM models WHERE name = ?1",
            [name],
            from_row,
        )
        .optional()
        .with_context(|| format!("cannot read settings of model {name}"))?;
    Ok(row.unwrap_or_else(|| ModelConfig::unconfigured(name)))
}

pub fn list(conn: &Connection) -> Result<Vec<ModelConfig>> {
    let mut stmt = conn.prepare(
        "SELECT name, backend, command, endpoints, timeout_s, timeout_auto, concurrency,
                max_attempts, settings, api_key_env, rpm, tpm, price_in, price_out
         FROM models ORDER BY name",
    )?;
    let rows = stmt.query_map([], from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn from_row(r: &rusqlite::Row) -> rusqlite::Result<ModelConfig> {
    let endpoints: String = r.get(3)?;
    let settings: String = r.get(8)?;
    Ok(ModelConfig {
        name: r.get(0)?,
        backend: Backend::parse(&r.get::<_, String>(1)?),
        command: r.get(2)?,
        endpoints: serde_json::from_str(&endpoints).unwrap_or_default(),
        timeout_s: r.get(4)?,
        timeout_auto: r.get::<_, i64>(5)? != 0,
        concurrency: r.get(6)?,
        max_attempts: r.get(7)?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        api_key_env: r.get(9)?,
        rpm: r.get(10)?,
        tpm: r.get(11)?,
        price_in: r.get(12)?,
        price_out: r.get(13)?,
        configured: true,
    })
}

pub fn save(conn: &Connection, m: &ModelConfig) -> Result<()> {
    conn.execute(
        "INSERT INTO models (name, backend, command, endpoints, timeout_s, timeout_auto,
                             concurrency, max_attempts, settings, api_key_env, updated_at,
                             rpm, tpm, price_in, price_out)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (name) DO UPDATE SET backend = excluded.backend, command = excluded.command,
             endpoints = excluded.endpoints, timeout_s = excluded.timeout_s,
             timeout_auto = excluded.timeout_auto, concurrency = excluded.concurrency,
             max_attempts = excluded.max_attempts, settings = excluded.settings,
             api_key_env = excluded.api_key_env, updated_at = excluded.updated_at,
             rpm = excluded.rpm, tpm = excluded.tpm, price_in = excluded.price_in,
             price_out = excluded.price_out",
        params![
            m.name,
            m.backend.as_str(),
            m.command,
            serde_json::to_string(&m.endpoints)?,
            m.timeout_s,
            m.timeout_auto as i64,
            m.concurrency,
            m.max_attempts,
            serde_json::to_string(&m.settings)?,
            m.api_key_env,
            crate::util::now_ms(),
            m.rpm,
            m.tpm,
            m.price_in,
            m.price_out,
        ],
    )?;
    Ok(())
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
