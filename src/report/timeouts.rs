//! `report timeouts`: per model the configured timeout against what its successes took, and
//! the advice `--timeout auto` follows (2 × p99 of the last 7 days, at least 20 samples); for
//! streamed models the same for `--stall-timeout`, from the silences between chunks.

use anyhow::Result;
use serde_json::json;

use super::render::{secs, Table};
use super::Query;
use crate::db::Store;
use crate::domain::Outcome;
use crate::timeouts::{
    self, ADVICE_MAX_S, ADVICE_MIN_S, ADVICE_MIN_SAMPLES, ADVICE_WINDOW_MS, STALL_MAX_S,
    STALL_MIN_S,
};
use crate::util::now_ms;

pub fn timeouts(store: &dyn Store, q: &Query) -> Result<Table> {
    let mut t = Table::new(
        "timeouts",
        "Timeouts: configured vs observed (n, p99 and advice over the last 7 days)",
        &[
            "model",
            "timeout_s",
            "auto",
            "effective_s",
            "n",
            "p99_s",
            "max_s",
            "timeouts",
            "advice_s",
            "stall_timeout_s",
            "gap_p99_s",
            "stalls",
            "stall_advice_s",
        ],
    );
    // Timeouts seen: over --since, else over the same window as the advice.
    let since = q.since_ms.unwrap_or(now_ms() - ADVICE_WINDOW_MS);
    let mut few = Vec::new();
    let mut streamed = false;
    for name in super::models_in_scope(store, q)? {
        let model = store.model(&name)?;
        let sample = timeouts::samples(store, &name)?;
        let (n, p99_ms, max_ms) = (sample.count, sample.p99_ms, sample.max_ms);
        let advice = timeouts::advise(n, p99_ms);
        let effective = timeouts::effective_secs(&model, advice);
        let seen = store.outcomes_since(&name, Outcome::Timeout, since)?;
        if advice.is_none() {
            few.push(format!("{name} ({n} ok)"));
        }
        let (gaps, gap_p99) = timeouts::gap_samples(store, &name)?;
        let stall_advice = timeouts::advise_stall(gaps, gap_p99);
        let stalls = store.outcomes_since(&name, Outcome::Stall, since)?;
        streamed |= gaps > 0;
        t.push(vec![
            json!(name),
            json!(model.timeout()),
            json!(model.timeout_auto),
            json!(effective),
            json!(n),
            secs(p99_ms.map(|v| v as f64)),
            secs(max_ms.map(|v| v as f64)),
            json!(seen),
            advice.map_or(serde_json::Value::Null, |a| json!(a)),
            json!(model.settings.stall_timeout_s),
            secs(gap_p99),
            json!(stalls),
            stall_advice.map_or(serde_json::Value::Null, |a| json!(a)),
        ]);
    }
    if !few.is_empty() {
        t.notes.push(format!(
            "No advice yet for {}: fewer than {ADVICE_MIN_SAMPLES} successful attempts in the last 7 days (models on auto use their configured timeout meanwhile).",
            few.join(", ")
        ));
    }
    if !t.rows.is_empty() {
        t.notes.push(format!(
            "advice_s = 2 × p99, clamped to [{ADVICE_MIN_S:.0}s, {ADVICE_MAX_S:.0}s]; `llmbatch models set NAME --timeout auto` follows it."
        ));
    }
    if streamed {
        t.notes.push(format!(
            "gap_p99_s = p99 of the longest silence between chunks of each streamed success; stall_advice_s = 2 × gap_p99_s, clamped to [{STALL_MIN_S:.0}s, {STALL_MAX_S:.0}s], from {ADVICE_MIN_SAMPLES} samples: `llmbatch models set NAME --stall-timeout DUR`."
        ));
    }
    Ok(t)
}
