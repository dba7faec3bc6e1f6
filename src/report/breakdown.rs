//! `report latency --breakdown`: where the time of successful HTTP attempts went, from
//! Ollama's own timings — queue + load, prompt evaluation, generation, and the client overhead
//! (wall time − total_duration) — p50/p95 each, cold starts (the model had to load) and warm
//! apart, and tokens/s. Percentiles by window functions in SQL: memory stays flat.

use anyhow::Result;
use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Value};

use super::render::{secs, Table};
use super::Query;

/// An attempt whose load took longer than this found its model unloaded: a cold start.
pub const COLD_LOAD_MS: f64 = 500.0;

/// (column prefix, SQL of the value in ms) for each phase.
const PHASES: [(&str, &str); 4] = [
    ("load", "json_extract(a.timings, '$.load_duration') / 1e6"),
    (
        "prompt",
        "json_extract(a.timings, '$.prompt_eval_duration') / 1e6",
    ),
    ("gen", "json_extract(a.timings, '$.eval_duration') / 1e6"),
    (
        "overhead",
        "a.duration_ms - json_extract(a.timings, '$.total_duration') / 1e6",
    ),
];

pub fn breakdown(conn: &Connection, q: &Query) -> Result<Table> {
    let cols = q.group_cols();
    let keys: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let key_list = keys.join(", ");
    let key_select: String = cols
        .iter()
        .map(|(name, expr)| format!("{expr} AS {name}, "))
        .collect();
    let (cond, args) = q.attempt_sql("a");
    let part = format!("PARTITION BY {key_list}, start");
    let mut metrics = String::new();
    let mut windows = String::new();
    let mut picks = String::new();
    for (name, expr) in PHASES {
        metrics.push_str(&format!(", {expr} AS {name}"));
        windows.push_str(&format!(
            ", COUNT({name}) OVER ({part}) AS n_{name},
               ROW_NUMBER() OVER ({part} ORDER BY {name} NULLS LAST) AS r_{name}"
        ));
        for p in [0.50, 0.95] {
            // Nearest rank, ceil(p × n), as in the latency section.
            let rank = format!(
                "MAX(1, CAST({p} * n_{name} AS INTEGER) + ({p} * n_{name} > CAST({p} * n_{name} AS INTEGER)))"
            );
            picks.push_str(&format!(
                ", MAX(CASE WHEN r_{name} = {rank} THEN {name} END)"
            ));
        }
    }
    let sql = format!(
        "WITH t AS (
             SELECT {key_select}
                    CASE WHEN COALESCE(json_extract(a.timings, '$.load_duration'), 0) / 1e6 > {COLD_LOAD_MS}
                         THEN 'cold' ELSE 'warm' END AS start,
                    json_extract(a.timings, '$.eval_count') AS tokens,
                    json_extract(a.timings, '$.eval_duration') AS eval_ns{metrics}
             FROM attempts a
             WHERE a.outcome = 'ok' AND a.timings IS NOT NULL
               AND json_extract(a.timings, '$.total_duration') IS NOT NULL{cond}),
         r AS (SELECT *, COUNT(*) OVER ({part}) AS n{windows} FROM t)
         SELECT {key_list}, start, MAX(n){picks},
                SUM(CASE WHEN eval_ns > 0 THEN tokens END)
                    / (SUM(CASE WHEN tokens IS NOT NULL AND eval_ns > 0 THEN eval_ns END) / 1e9)
         FROM r GROUP BY {key_list}, start ORDER BY {key_list}, start DESC"
    );
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
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let k = keys.len();
    while let Some(r) = rows.next()? {
        let mut row: Vec<Value> = (0..k)
            .map(|i| r.get::<_, String>(i).map(Value::String))
            .collect::<rusqlite::Result<_>>()?;
        row.push(json!(r.get::<_, String>(k)?));
        row.push(json!(r.get::<_, i64>(k + 1)?));
        for i in 0..PHASES.len() * 2 {
            row.push(secs(r.get::<_, Option<f64>>(k + 2 + i)?));
        }
        let tps: Option<f64> = r.get(k + 2 + PHASES.len() * 2)?;
        row.push(tps.map_or(Value::Null, |v| json!((v * 10.0).round() / 10.0)));
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
