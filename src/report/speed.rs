//! Generation speed per model: output tokens per second of generation (decode speed, the prompt's
//! processing left out), from the backend's own timings where it reports them (Ollama's
//! `eval_count` / `eval_duration`), else from streamed answers: (output tokens − 1) / (e2e −
//! TTFT), the 1 / TPOT that servers report. The one place that decides what "tokens/s" means
//! for the leaderboard and the page.

use anyhow::Result;
use std::collections::BTreeMap;

use super::Query;
use crate::db::ReportSource;

/// Per model over successful attempts in scope: Σ output tokens / Σ generation seconds.
/// Models with neither token timings nor streamed answers are absent (unknown, not zero).
pub fn tokens_per_s(src: &dyn ReportSource, q: &Query) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for g in src.generation_sums(&q.scope())? {
        if let (Some(t), Some(s)) = (g.tokens, g.secs) {
            if s > 0.0 {
                out.insert(g.model, (t / s * 10.0).round() / 10.0);
            }
        }
    }
    Ok(out)
}
