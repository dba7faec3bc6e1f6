//! Token sums over attempts, the raw material of `report cost` and `run --max-cost`.
//! Ollama reports `prompt_eval_count` / `eval_count`, OpenAI-compatible servers
//! `prompt_tokens` / `completion_tokens`; an attempt without either counts zero tokens.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};

use crate::db::store::{AttemptScope, GroupKey, TokenSum};

const PROMPT: &str =
    "COALESCE(json_extract(a.timings, '$.prompt_tokens'), json_extract(a.timings, '$.prompt_eval_count'), 0)";
const OUTPUT: &str =
    "COALESCE(json_extract(a.timings, '$.completion_tokens'), json_extract(a.timings, '$.eval_count'), 0)";

impl GroupKey {
    /// The SQL expression of the key on attempts.
    pub fn expr(self) -> &'static str {
        match self {
            GroupKey::Batch => "batch",
            GroupKey::Model => "model",
            GroupKey::Endpoint => "COALESCE(endpoint, '')",
        }
    }
}

impl AttemptScope {
    /// ` AND …` conditions on the attempts table under `alias`, with their parameters.
    pub fn sql(&self, alias: &str) -> (String, Vec<SqlValue>) {
        let (mut sql, mut args) = self.filter.sql_on(alias, "job_id");
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {alias}.started_at >= ?"));
            args.push(SqlValue::Integer(since));
        }
        (sql, args)
    }
}

/// Sums per group of `by` (the model among them) over the finished attempts in scope.
pub fn token_sums(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<Vec<TokenSum>> {
    let key_list = by.iter().map(|k| k.expr()).collect::<Vec<_>>().join(", ");
    let model_at = by
        .iter()
        .position(|k| *k == GroupKey::Model)
        .expect("cost groups include the model");
    let (cond, args) = scope.sql("a");
    let sql = format!(
        "SELECT {key_list}, COUNT(*), COUNT(DISTINCT CASE WHEN a.charged = 1 THEN a.job_id END), SUM({PROMPT}), SUM({OUTPUT})
         FROM attempts a WHERE a.outcome IS NOT NULL AND a.outcome <> 'cached'{cond}
         GROUP BY {key_list} ORDER BY {key_list}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let k = by.len();
    let rows = stmt.query_map(params_from_iter(args), |r| {
        let key = (0..k)
            .map(|i| r.get::<_, String>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
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
