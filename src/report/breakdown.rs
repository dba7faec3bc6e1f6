//! `report latency --breakdown`: where the time of successful HTTP attempts went, from
//! Ollama's own timings — queue + load, prompt evaluation, generation, and the client overhead
//! (wall time − total_duration) — p50/p95 each, cold starts (the model had to load) and warm
//! apart, and tokens/s. One pass in SQL, nearest-rank percentiles of the sorted samples in
//! memory (16 bytes per attempt: 16 MB for a million HTTP attempts; SQLite's window functions
//! took ten times as long).

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::render::{secs, Table};
use super::Query;
use crate::db::ReportSource;

/// An attempt whose load took longer than this found its model unloaded: a cold start.
pub const COLD_LOAD_MS: f64 = 500.0;

pub fn breakdown(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let keys: Vec<&str> = cols.clone();
    let mut groups: BTreeMap<(Vec<String>, bool), Group> = BTreeMap::new();
    for sample in src.phase_samples(&q.scope(), &q.group_keys(), COLD_LOAD_MS)? {
        let g = groups.entry((sample.key, sample.cold)).or_default();
        g.n += 1;
        if let (Some(t), Some(ns)) = (sample.eval_tokens, sample.eval_ns) {
            if ns > 0.0 {
                g.tokens += t;
                g.eval_s += ns / 1e9;
            }
        }
        for (values, v) in g.phases.iter_mut().zip(sample.phases_ms) {
            if let Some(v) = v {
                values.push(v as f32);
            }
        }
    }
    let mut header: Vec<&str> = keys.clone();
    header.extend([
        "start",
        "n",
        "load_p50_s",
        "load_p95_s",
        "prompt_p50_s",
        "prompt_p95_s",
        "gen_p50_s",
        "gen_p95_s",
        "overhead_p50_s",
        "overhead_p95_s",
        "tokens_per_s",
    ]);
    let mut t = Table::new(
        "latency_breakdown",
        "Where the time went (successful attempts with Ollama timings, seconds)",
        &header,
    );
    // Warm before cold within each group.
    let mut ordered: Vec<_> = groups.into_iter().collect();
    ordered.sort_by(|a, b| (&a.0 .0, a.0 .1).cmp(&(&b.0 .0, b.0 .1)));
    for ((key, cold), mut g) in ordered {
        let mut row: Vec<Value> = key.into_iter().map(Value::String).collect();
        row.push(json!(if cold { "cold" } else { "warm" }));
        row.push(json!(g.n));
        for values in g.phases.iter_mut() {
            values.sort_unstable_by(f32::total_cmp);
            for p in [0.50, 0.95] {
                let v = (!values.is_empty())
                    .then(|| values[(super::rank(p, values.len() as i64) - 1) as usize] as f64);
                row.push(secs(v));
            }
        }
        let tps = (g.eval_s > 0.0).then(|| (g.tokens / g.eval_s * 10.0).round() / 10.0);
        row.push(tps.map_or(Value::Null, |v| json!(v)));
        t.push(row);
    }
    if t.rows.is_empty() {
        t.notes.push(
            "No successful attempts with Ollama timings in scope: the breakdown needs the ollama backend."
                .into(),
        );
    } else {
        t.notes.push(format!(
            "cold = load_duration over {COLD_LOAD_MS:.0} ms (the model had to load); load includes queueing at the server; overhead = wall time − total_duration (worker process, HTTP)."
        ));
    }
    Ok(t)
}

/// One group's samples: each phase's values in ms (f32 — 16 bytes per attempt in scope).
#[derive(Default)]
struct Group {
    n: i64,
    phases: [Vec<f32>; 4],
    tokens: f64,
    eval_s: f64,
}
