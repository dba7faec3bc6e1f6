//! Pacing a model's requests to its `--rpm` / `--tpm`: one token bucket per model in each
//! runner, holding no burst at all. Each request (and each of its estimated tokens) takes its
//! share of a minute; the next may start only when the shares taken so far have elapsed, so
//! requests are evenly spaced from the first one on and no window ever holds more than the
//! limit. Several runners on one database pace themselves independently: their rates add up.

use serde_json::{Map, Value};
use std::time::{Duration, Instant};

use crate::models::ModelConfig;

/// Characters per token when estimating a prompt's size before the call (English text and
/// code average 3.5–4; the reported usage corrects the estimate afterwards).
const CHARS_PER_TOKEN: usize = 4;

/// Option names that cap a request's output tokens (OpenAI, newer OpenAI, Ollama).
const MAX_TOKEN_OPTIONS: [&str; 3] = ["max_tokens", "max_completion_tokens", "num_predict"];

/// The max tokens option among `options`, if any.
fn max_tokens(options: &Map<String, Value>) -> Option<u64> {
    MAX_TOKEN_OPTIONS
        .iter()
        .find_map(|k| options.get(*k))
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
}

pub struct Pacer {
    rpm: Option<f64>,
    tpm: Option<f64>,
    /// When the request shares and token shares taken so far have elapsed.
    requests_free: Instant,
    tokens_free: Instant,
    /// The output tokens each request may use (the model's max tokens option), if set.
    max_output: Option<u64>,
}

impl Pacer {
    /// A pacer for a model with `--rpm` or `--tpm`; None when it has neither.
    pub fn for_model(m: &ModelConfig) -> Option<Pacer> {
        if m.rpm.is_none() && m.tpm.is_none() {
            return None;
        }
        let max_output = max_tokens(&m.settings.options);
        let now = Instant::now();
        Some(Pacer {
            rpm: m.rpm.map(|n| n as f64),
            tpm: m.tpm.map(|n| n as f64),
            requests_free: now,
            tokens_free: now,
            max_output,
        })
    }

    /// When the next request may be sent.
    pub fn ready_at(&self) -> Instant {
        self.requests_free.max(self.tokens_free)
    }

    /// Tokens a request is expected to use: its prompt plus the most it may answer.
    pub fn estimate(&self, prompt_chars: usize) -> u64 {
        prompt_chars.div_ceil(CHARS_PER_TOKEN) as u64 + self.max_output.unwrap_or(0)
    }

    /// As [`Pacer::estimate`], where an item's own max tokens option (a Batch API line's
    /// `max_tokens`) wins over the model's, as it does in the request.
    pub fn estimate_item(&self, prompt_chars: usize, item_options: &Map<String, Value>) -> u64 {
        match max_tokens(item_options) {
            Some(own) => prompt_chars.div_ceil(CHARS_PER_TOKEN) as u64 + own,
            None => self.estimate(prompt_chars),
        }
    }

    /// Takes the shares of one request of `tokens` (estimated) tokens.
    pub fn take(&mut self, tokens: u64) {
        let now = Instant::now();
        if let Some(rpm) = self.rpm {
            self.requests_free = self.requests_free.max(now) + share(1.0, rpm);
        }
        if let Some(tpm) = self.tpm {
            self.tokens_free = self.tokens_free.max(now) + share(tokens as f64, tpm);
        }
    }

    /// Corrects the token shares once the server reported what a request really used.
    pub fn correct(&mut self, estimated: u64, used: u64) {
        let Some(tpm) = self.tpm else { return };
        if used > estimated {
            self.tokens_free += share((used - estimated) as f64, tpm);
        } else {
            let back = share((estimated - used) as f64, tpm);
            // Never earlier than now: unused shares of the past are not a credit for a burst.
            let now = Instant::now();
            self.tokens_free = self
                .tokens_free
                .checked_sub(back)
                .map_or(now, |t| t.max(now));
        }
    }

    /// The limits, for messages: "120 requests/min, 6000 tokens/min".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.rpm {
            parts.push(format!("{r} requests/min"));
        }
        if let Some(t) = self.tpm {
            parts.push(format!("{t} tokens/min"));
        }
        parts.join(", ")
    }
}

/// The part of a minute that `amount` of a per-minute `limit` takes.
fn share(amount: f64, limit: f64) -> Duration {
    Duration::from_secs_f64((amount * 60.0 / limit).clamp(0.0, 3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_spaced_from_the_first() {
        let mut m = ModelConfig::unconfigured("m");
        m.rpm = Some(120);
        let mut p = Pacer::for_model(&m).unwrap();
        assert!(p.ready_at() <= Instant::now());
        p.take(0);
        let gap = p.ready_at().saturating_duration_since(Instant::now());
        assert!(gap > Duration::from_millis(450) && gap <= Duration::from_millis(500));
    }

    #[test]
    fn tokens_count_prompt_and_max_output_then_usage() {
        let mut m = ModelConfig::unconfigured("m");
        m.tpm = Some(6000);
        m.settings.options.insert("max_tokens".into(), json!(60));
        let mut p = Pacer::for_model(&m).unwrap();
        assert_eq!(p.estimate(160), 100);
        let mut own = Map::new();
        own.insert("max_completion_tokens".into(), json!(10));
        assert_eq!(
            p.estimate_item(160, &own),
            50,
            "a Batch API line's own limit wins"
        );
        assert_eq!(p.estimate_item(160, &Map::new()), 100);
        p.take(100); // 100 of 6000 a minute: 1 s
        let gap = p.ready_at().saturating_duration_since(Instant::now());
        assert!(gap > Duration::from_millis(950) && gap <= Duration::from_secs(1));
        p.correct(100, 50); // used half: half a second back
        let gap = p.ready_at().saturating_duration_since(Instant::now());
        assert!(gap > Duration::from_millis(450) && gap <= Duration::from_millis(500));
        assert!(Pacer::for_model(&ModelConfig::unconfigured("n")).is_none());
    }
}
