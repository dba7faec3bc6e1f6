//! Cost: tokens × the model's prices, computed here once for `report cost`, `run --max-cost`
//! and anything else that shows money (typed rows, rendered elsewhere).

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::render::Table;
use super::Query;
use crate::db::{AttemptScope, Filter, GroupKey, Store};
use crate::models::ModelConfig;

/// The tokens one attempt used, as its server reported them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    pub prompt: u64,
    pub output: u64,
}

impl Usage {
    /// From an attempt's timings (Ollama or OpenAI fields); None when the server said nothing.
    pub fn from_timings(timings: Option<&Value>) -> Option<Usage> {
        let t = timings?;
        let num = |a: &str, b: &str| t.get(a).or_else(|| t.get(b)).and_then(Value::as_u64);
        let prompt = num("prompt_tokens", "prompt_eval_count");
        let output = num("completion_tokens", "eval_count");
        (prompt.is_some() || output.is_some()).then(|| Usage {
            prompt: prompt.unwrap_or(0),
            output: output.unwrap_or(0),
        })
    }

    pub fn total(&self) -> u64 {
        self.prompt + self.output
    }

    /// What these tokens cost at the model's prices; None for an unpriced model.
    pub fn cost(&self, m: &ModelConfig) -> Option<f64> {
        price(m, self.prompt as f64, self.output as f64)
    }
}

/// USD for `prompt` input and `output` output tokens at the model's prices (per million).
fn price(m: &ModelConfig, prompt: f64, output: f64) -> Option<f64> {
    m.priced()
        .then(|| (prompt * m.price_in.unwrap_or(0.0) + output * m.price_out.unwrap_or(0.0)) / 1e6)
}

/// One row of `report cost`.
#[derive(Debug, Clone, PartialEq)]
pub struct CostRow {
    /// The group (`model`, or `batch`, `model` with `--by batch`, …).
    pub key: Vec<String>,
    pub model: String,
    pub attempts: i64,
    pub jobs: i64,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
    /// None when the model has no prices.
    pub cost_usd: Option<f64>,
    pub cost_per_1k_jobs_usd: Option<f64>,
}

/// The grouping keys of a cost query: the report's, with the model always among them
/// (prices are per model).
fn keys(q: &Query) -> Vec<GroupKey> {
    let mut keys = q.group_keys();
    if !keys.contains(&GroupKey::Model) {
        keys.push(GroupKey::Model);
    }
    keys
}

/// Tokens and cost per group, over successful and failed attempts alike, at today's prices.
pub fn rows(store: &dyn Store, q: &Query) -> Result<(Vec<&'static str>, Vec<CostRow>)> {
    let keys = keys(q);
    let scope = AttemptScope {
        filter: q.filter.clone(),
        since_ms: q.since_ms,
    };
    let mut configs: HashMap<String, ModelConfig> = HashMap::new();
    let mut out = Vec::new();
    for s in store.token_sums(&scope, &keys)? {
        if !configs.contains_key(&s.model) {
            configs.insert(s.model.clone(), store.model(&s.model)?);
        }
        let cost = price(
            &configs[&s.model],
            s.prompt_tokens as f64,
            s.output_tokens as f64,
        );
        out.push(CostRow {
            key: s.key,
            model: s.model,
            attempts: s.attempts,
            jobs: s.jobs,
            prompt_tokens: s.prompt_tokens,
            output_tokens: s.output_tokens,
            cost_usd: cost,
            cost_per_1k_jobs_usd: cost
                .filter(|_| s.jobs > 0)
                .map(|c| c * 1000.0 / s.jobs as f64),
        });
    }
    Ok((keys.iter().map(|k| k.column()).collect(), out))
}

/// The recorded cost of everything in `filter`'s scope, over all runs (for `run --max-cost`).
pub fn spent(store: &dyn Store, filter: &Filter) -> Result<f64> {
    let q = Query {
        filter: filter.clone(),
        since_ms: None,
        by: Vec::new(),
    };
    Ok(rows(store, &q)?.1.iter().filter_map(|r| r.cost_usd).sum())
}

/// Whether any model has prices (then the default `report` shows cost).
pub fn any_priced(store: &dyn Store) -> Result<bool> {
    Ok(store.models()?.iter().any(ModelConfig::priced))
}

/// Rounds USD for display without hiding fractions of a cent.
fn usd(v: f64) -> Value {
    json!((v * 1e6).round() / 1e6)
}

pub fn cost(store: &dyn Store, q: &Query) -> Result<Table> {
    let (cols, rows) = rows(store, q)?;
    let mut header = cols.clone();
    header.extend([
        "attempts",
        "jobs",
        "prompt_tokens",
        "output_tokens",
        "cost_usd",
        "cost_per_1k_jobs_usd",
    ]);
    let mut t = Table::new("cost", "Cost (successful and failed attempts)", &header);
    t.decimals = vec![
        ("cost_usd".to_string(), 6),
        ("cost_per_1k_jobs_usd".to_string(), 6),
    ];
    let mut total = 0.0;
    let mut unpriced = Vec::new();
    for r in rows {
        let mut row: Vec<Value> = r.key.into_iter().map(Value::String).collect();
        row.extend([
            json!(r.attempts),
            json!(r.jobs),
            json!(r.prompt_tokens),
            json!(r.output_tokens),
            r.cost_usd.map_or(Value::Null, usd),
            r.cost_per_1k_jobs_usd.map_or(Value::Null, usd),
        ]);
        total += r.cost_usd.unwrap_or(0.0);
        if r.cost_usd.is_none() && !unpriced.contains(&r.model) {
            unpriced.push(r.model);
        }
        t.push(row);
    }
    if !t.rows.is_empty() {
        t.notes.push(format!("total ${:.4}", total));
    }
    if !unpriced.is_empty() {
        t.notes.push(format!(
            "no prices for {}: set them with `llmbatch models set NAME --price-in USD --price-out USD` (per million tokens)",
            unpriced.join(", ")
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_both_servers_and_prices_per_million() {
        let ollama = json!({"prompt_eval_count": 26, "eval_count": 290});
        let openai = json!({"prompt_tokens": 12, "completion_tokens": 7});
        assert_eq!(
            Usage::from_timings(Some(&ollama)),
            Some(Usage {
                prompt: 26,
                output: 290
            })
        );
        let u = Usage::from_timings(Some(&openai)).unwrap();
        assert_eq!(u.total(), 19);
        assert_eq!(
            Usage::from_timings(Some(&json!({"done_reason": "stop"}))),
            None
        );
        let mut m = ModelConfig::unconfigured("m");
        assert_eq!(u.cost(&m), None);
        m.price_in = Some(1.0);
        m.price_out = Some(2.0);
        assert_eq!(u.cost(&m), Some((12.0 + 14.0) / 1e6));
    }
}
