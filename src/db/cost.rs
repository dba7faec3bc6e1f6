//! Token sums over attempts, the raw material of `report cost` and `run --max-cost`.
//! Ollama reports `prompt_eval_count` / `eval_count`, OpenAI-compatible servers
//! `prompt_tokens` / `completion_tokens`; an attempt without either counts zero tokens.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};

const PROMPT: &str =
    "COALESCE(json_extract(a.timings, '$.prompt_tokens'), json_extract(a.timings, '$.prompt_eval_count'), 0)";
const OUTPUT: &str =
    "COALESCE(json_extract(a.timings, '$.completion_tokens'), json_extract(a.timings, '$.eval_count'), 0)";

/// Tokens of one group of finished attempts (successful and failed alike).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSum {
    /// The group's key columns, in the order asked for.
    pub key: Vec<String>,
    pub model: String,
    pub attempts: i64,
    /// Distinct jobs with a charged attempt in the group: throttled, unreachable or
    /// interrupted attempts never reached the model, and a job they alone touched cost nothing.
    pub jobs: i64,
    pub prompt_tokens: i64,
    pub output_tokens: i64,
}

/// Sums per group of `keys` (SQL expressions on attempts `a`, `model` among them) over the
/// finished attempts matching `cond` (` AND …` on `a`, with `args`). A `cached` attempt is
/// left out: it repeats its source's token counts, but no model was called for it.
pub fn token_sums(
    conn: &Connection,
    keys: &[&str],
    cond: &str,
    args: Vec<SqlValue>,
) -> Result<Vec<TokenSum>> {
    let key_list = keys.join(", ");
    let model_at = keys
        .iter()
        .position(|k| *k == "model")
        .expect("cost groups include the model");
    let sql = format!(
        "SELECT {key_list}, COUNT(*), COUNT(DISTINCT CASE WHEN a.charged = 1 THEN a.job_id END), SUM({PROMPT}), SUM({OUTPUT})
         FROM attempts a WHERE a.outcome IS NOT NULL AND a.outcome <> 'cached'{cond}
         GROUP BY {key_list} ORDER BY {key_list}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let k = keys.len();
    let rows = stmt.query_map(params_from_iter(args), |r| {
        let key = crate::report::group_key(r, k)?;
        Ok(TokenSum {
            model: key[model_at].clone(),
            key,
            attempts: r.get(k)?,
            jobs: r.get(k + 1)?,
            prompt_tokens: r.get(k + 2)?,
            output_tokens: r.get(k + 3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
