//! Export rows from PostgreSQL, as the SQLite engine's (`src/db/sqlite/export.rs`). Each
//! listing is a query run through a cursor in batches (see `PgStore::each_fetched`), so memory
//! stays flat however many rows there are, and other reads (a job's grades) can run between
//! batches on the same connection and snapshot.

use postgres::Row;
use serde_json::{Map, Value};

use super::queue::Params;
use super::report::scope_on;
use crate::db::export::*;

/// Token counts under the names the backends use (normalized, Ollama native, OpenAI usage).
const PROMPT_TOKENS: &str = "COALESCE(a.timings::jsonb ->> 'prompt_tokens',
    a.timings::jsonb ->> 'prompt_eval_count', a.timings::jsonb #>> '{usage,prompt_tokens}')::numeric::bigint";
const OUTPUT_TOKENS: &str = "COALESCE(a.timings::jsonb ->> 'output_tokens',
    a.timings::jsonb ->> 'completion_tokens', a.timings::jsonb ->> 'eval_count',
    a.timings::jsonb #>> '{usage,completion_tokens}')::numeric::bigint";

pub fn outputs_sql(filter: &crate::db::Filter, p: &mut Params) -> String {
    let cond = scope_on(filter, "j", "id", p);
    format!(
        "SELECT j.id, j.batch, j.item_id, j.model, i.vars, i.prompt, j.state, j.attempts,
                j.last_outcome, COALESCE(j.last_error, a.error), a.output, a.reasoning,
                a.duration_ms, a.finished_at, {PROMPT_TOKENS}, {OUTPUT_TOKENS},
                COALESCE((a.timings::jsonb ->> 'done_reason') = 'length', false),
                a.ttft_ms, a.tpot_ms, i.messages, j.repeat
         FROM jobs j JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
              LEFT JOIN attempts a ON a.id = j.attempt_id AND j.state = 'done'
         WHERE j.kind = 'generate'{cond} ORDER BY j.id"
    )
}

pub fn output_row(r: &Row) -> OutputRow {
    let vars: String = r.get(4);
    OutputRow {
        job_id: r.get(0),
        batch: r.get(1),
        item_id: r.get(2),
        repeat: r.get(20),
        model: r.get(3),
        vars: serde_json::from_str(&vars).unwrap_or(Value::Object(Map::new())),
        prompt: r.get(5),
        state: r.get(6),
        attempts: r.get(7),
        last_outcome: r.get(8),
        error: r.get(9),
        output: r.get(10),
        reasoning: r.get(11),
        latency_ms: r.get(12),
        finished_at: r.get(13),
        prompt_tokens: r.get(14),
        output_tokens: r.get(15),
        truncated: r.get(16),
        ttft_ms: r.get(17),
        tpot_ms: r.get(18),
        messages: r
            .get::<_, Option<String>>(19)
            .and_then(|m| serde_json::from_str(&m).ok()),
    }
}

pub const GRADES_OF: &str = "SELECT gj.model, r.name, gj.state, g.pass, g.score, g.reason, g.fields
     FROM jobs gj JOIN rubrics r ON r.id = gj.rubric_id LEFT JOIN grades g ON g.job_id = gj.id
     WHERE gj.kind = 'grade' AND gj.parent_id = $1
     ORDER BY gj.model COLLATE \"C\", r.name COLLATE \"C\", gj.id";

pub fn grade_row(r: &Row) -> GradeRow {
    let fields: Option<String> = r.get(6);
    GradeRow {
        grader: r.get(0),
        rubric: r.get(1),
        state: r.get(2),
        pass: r.get::<_, Option<i64>>(3).map(|p| p != 0),
        score: r.get(4),
        reason: r.get(5),
        fields: fields
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or(Value::Null),
    }
}

pub fn grade_pairs_sql(filter: &crate::db::Filter, p: &mut Params) -> String {
    let cond = scope_on(filter, "p", "id", p);
    format!(
        "SELECT DISTINCT gj.model COLLATE \"C\", r.name COLLATE \"C\"
         FROM jobs gj JOIN jobs p ON p.id = gj.parent_id JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.kind = 'grade'{cond} ORDER BY 1, 2"
    )
}

pub fn attempts_sql(filter: &crate::db::Filter, p: &mut Params) -> String {
    let cond = scope_on(filter, "j", "id", p);
    format!(
        "SELECT a.job_id, a.endpoint, a.started_at, a.duration_ms, octet_length(i.prompt)::bigint,
                COALESCE(octet_length(a.output), 0)::bigint, a.outcome, a.exit_code, a.signal,
                j.model, j.batch, j.item_id
         FROM attempts a JOIN jobs j ON j.id = a.job_id
              JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         WHERE j.kind = 'generate' AND a.outcome IS NOT NULL{cond}
         ORDER BY a.started_at, a.id"
    )
}

pub fn attempt_row(r: &Row) -> AttemptRow {
    AttemptRow {
        job_id: r.get(0),
        endpoint: r.get(1),
        started_at: r.get(2),
        duration_ms: r.get(3),
        sent: r.get(4),
        received: r.get(5),
        outcome: r.get(6),
        exit_code: r.get(7),
        signal: r.get(8),
        model: r.get(9),
        batch: r.get(10),
        item_id: r.get(11),
    }
}

pub fn batch_results_sql(filter: &crate::db::Filter, p: &mut Params) -> String {
    let cond = scope_on(filter, "j", "id", p);
    format!(
        "SELECT j.id, j.item_id, j.model, j.state, j.last_outcome, COALESCE(j.last_error, a.error),
                a.id, a.http_status, a.output, a.reasoning, a.finished_at,
                {PROMPT_TOKENS}, {OUTPUT_TOKENS}, a.timings::jsonb ->> 'done_reason'
         FROM jobs j LEFT JOIN attempts a ON a.id = j.attempt_id
         WHERE j.kind = 'generate'{cond} ORDER BY j.id"
    )
}

pub fn batch_result_row(r: &Row) -> BatchResultRow {
    BatchResultRow {
        job_id: r.get(0),
        item_id: r.get(1),
        model: r.get(2),
        state: r.get(3),
        last_outcome: r.get(4),
        error: r.get(5),
        attempt_id: r.get(6),
        http_status: r.get(7),
        output: r.get(8),
        reasoning: r.get(9),
        finished_at: r.get(10),
        prompt_tokens: r.get(11),
        output_tokens: r.get(12),
        done_reason: r.get(13),
    }
}
