//! The worker's wire format: the request the coordinator writes to a `worker` child's stdin and
//! the result the child prints on stdout. It belongs to the backends side; the coordinator
//! (`attempt.rs`) only builds requests and reads responses.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Metrics;
use crate::models::{Backend, Settings};

/// The request the HTTP worker reads on stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerRequest {
    pub backend: Backend,
    pub endpoint: String,
    pub model: String,
    pub prompt: String,
    /// A chat item's messages, sent as chat instead of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Value>>,
    /// The item's own request options (OpenAI body fields), over the model's.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub item_options: serde_json::Map<String, Value>,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The worker's own HTTP deadline, just under the model timeout.
    pub timeout_s: f64,
}

/// The result the HTTP worker writes on stdout.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResponse {
    pub outcome: String,
    #[serde(default)]
    pub http_status: Option<i64>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub reasoning: Option<String>,
    #[serde(default)]
    pub raw_output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub timings: Option<Value>,
    /// `throttled`: the server's Retry-After, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<i64>,
    /// `throttled`: the account's quota or credit is exhausted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quota_exhausted: bool,
    /// Time to first token, per output token, end to end; absent when nothing was measured.
    #[serde(default)]
    pub metrics: Option<Metrics>,
}
