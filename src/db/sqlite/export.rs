//! Export rows from SQLite, streamed row by row.

use anyhow::Result;
use rusqlite::params_from_iter;
use serde_json::{Map, Value};

use super::Db;
use crate::db::export::*;
use crate::db::store::Filter;

/// Token counts under the names the backends use (normalized, Ollama native, OpenAI usage).
const PROMPT_TOKENS: &str = "CASE WHEN json_valid(a.timings) THEN COALESCE(
    json_extract(a.timings, '$.prompt_tokens'), json_extract(a.timings, '$.prompt_eval_count'),
    json_extract(a.timings, '$.usage.prompt_tokens')) END";
const OUTPUT_TOKENS: &str = "CASE WHEN json_valid(a.timings) THEN COALESCE(
    json_extract(a.timings, '$.output_tokens'), json_extract(a.timings, '$.completion_tokens'),
    json_extract(a.timings, '$.eval_count'), json_extract(a.timings, '$.usage.completion_tokens')) END";

impl ExportSource for Db {
    fn each_output(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(OutputRow) -> Result<()>,
    ) -> Result<u64> {
        let (cond, args) = filter.sql("j");
        let sql = format!(
            "SELECT j.id, j.batch, j.item_id, j.model, i.vars, i.prompt, j.state, j.attempts,
                    j.last_outcome, COALESCE(j.last_error, a.error), a.output, a.reasoning,
                    a.duration_ms, a.finished_at, {PROMPT_TOKENS}, {OUTPUT_TOKENS},
                    CASE WHEN json_valid(a.timings)
                         THEN json_extract(a.timings, '$.done_reason') = 'length' ELSE 0 END,
                    a.ttft_ms, a.tpot_ms, i.messages, j.repeat
             FROM jobs j JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
                  LEFT JOIN attempts a ON a.id = j.attempt_id AND j.state = 'done'
             WHERE j.kind = 'generate'{cond} ORDER BY j.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let vars: String = r.get(4)?;
            each(OutputRow {
                job_id: r.get(0)?,
                batch: r.get(1)?,
                item_id: r.get(2)?,
                repeat: r.get(20)?,
                model: r.get(3)?,
                vars: serde_json::from_str(&vars).unwrap_or(Value::Object(Map::new())),
                prompt: r.get(5)?,
                state: r.get(6)?,
                attempts: r.get(7)?,
                last_outcome: r.get(8)?,
                error: r.get(9)?,
                output: r.get(10)?,
                reasoning: r.get(11)?,
                latency_ms: r.get(12)?,
                finished_at: r.get(13)?,
                prompt_tokens: r.get(14)?,
                output_tokens: r.get(15)?,
                truncated: r.get::<_, Option<bool>>(16)?.unwrap_or(false),
                ttft_ms: r.get(17)?,
                tpot_ms: r.get(18)?,
                messages: r
                    .get::<_, Option<String>>(19)?
                    .and_then(|m| serde_json::from_str(&m).ok()),
            })?;
            n += 1;
        }
        Ok(n)
    }

    fn grades_of(&self, job_id: i64) -> Result<Vec<GradeRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT gj.model, r.name, gj.state, g.pass, g.score, g.reason, g.fields
             FROM jobs gj JOIN rubrics r ON r.id = gj.rubric_id LEFT JOIN grades g ON g.job_id = gj.id
             WHERE gj.kind = 'grade' AND gj.parent_id = ?1 ORDER BY gj.model, r.name, gj.id",
        )?;
        let rows = stmt.query_map([job_id], |r| {
            let fields: Option<String> = r.get(6)?;
            Ok(GradeRow {
                grader: r.get(0)?,
                rubric: r.get(1)?,
                state: r.get(2)?,
                pass: r.get::<_, Option<i64>>(3)?.map(|p| p != 0),
                score: r.get(4)?,
                reason: r.get(5)?,
                fields: fields
                    .and_then(|f| serde_json::from_str(&f).ok())
                    .unwrap_or(Value::Null),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn grade_pairs(&self, filter: &Filter) -> Result<Vec<(String, String)>> {
        let (cond, args) = filter.sql("p");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT DISTINCT gj.model, r.name FROM jobs gj JOIN jobs p ON p.id = gj.parent_id
                  JOIN rubrics r ON r.id = gj.rubric_id
             WHERE gj.kind = 'grade'{cond} ORDER BY gj.model, r.name"
        ))?;
        let pairs = stmt
            .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(pairs)
    }

    fn each_attempt(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(AttemptRow) -> Result<()>,
    ) -> Result<u64> {
        let (cond, args) = filter.sql("j");
        let sql = format!(
            "SELECT a.job_id, a.endpoint, a.started_at, a.duration_ms, length(CAST(i.prompt AS BLOB)),
                    COALESCE(length(CAST(a.output AS BLOB)), 0), a.outcome, a.exit_code, a.signal,
                    j.model, j.batch, j.item_id
             FROM attempts a JOIN jobs j ON j.id = a.job_id
                  JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
             WHERE j.kind = 'generate' AND a.outcome IS NOT NULL{cond}
             ORDER BY a.started_at, a.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            each(AttemptRow {
                job_id: r.get(0)?,
                endpoint: r.get(1)?,
                started_at: r.get(2)?,
                duration_ms: r.get(3)?,
                sent: r.get(4)?,
                received: r.get(5)?,
                outcome: r.get(6)?,
                exit_code: r.get(7)?,
                signal: r.get(8)?,
                model: r.get(9)?,
                batch: r.get(10)?,
                item_id: r.get(11)?,
            })?;
            n += 1;
        }
        Ok(n)
    }

    fn each_batch_result(
        &self,
        filter: &Filter,
        each: &mut dyn FnMut(BatchResultRow) -> Result<()>,
    ) -> Result<u64> {
        let (cond, args) = filter.sql("j");
        let sql = format!(
            "SELECT j.id, j.item_id, j.model, j.state, j.last_outcome, COALESCE(j.last_error, a.error),
                    a.id, a.http_status, a.output, a.reasoning, a.finished_at,
                    {PROMPT_TOKENS}, {OUTPUT_TOKENS},
                    CASE WHEN json_valid(a.timings) THEN json_extract(a.timings, '$.done_reason') END
             FROM jobs j LEFT JOIN attempts a ON a.id = j.attempt_id
             WHERE j.kind = 'generate'{cond} ORDER BY j.id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            each(BatchResultRow {
                job_id: r.get(0)?,
                item_id: r.get(1)?,
                model: r.get(2)?,
                state: r.get(3)?,
                last_outcome: r.get(4)?,
                error: r.get(5)?,
                attempt_id: r.get(6)?,
                http_status: r.get(7)?,
                output: r.get(8)?,
                reasoning: r.get(9)?,
                finished_at: r.get(10)?,
                prompt_tokens: r.get(11)?,
                output_tokens: r.get(12)?,
                done_reason: r.get(13)?,
            })?;
            n += 1;
        }
        Ok(n)
    }
}
