//! Models and rubrics in SQLite, and the durations timeout advice is made of.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::db::store::DurationSample;
use crate::grading::Rubric;
use crate::models::{Backend, ModelConfig};
use crate::util::now_ms;

const MODEL_COLUMNS: &str = "name, backend, command, endpoints, timeout_s, timeout_auto,
    concurrency, max_attempts, settings, api_key_env, rpm, tpm, price_in, price_out";

pub fn model(conn: &Connection, name: &str) -> Result<ModelConfig> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {MODEL_COLUMNS} FROM models WHERE name = ?1"
        ))?
        .query_row([name], model_row)
        .optional()
        .with_context(|| format!("cannot read settings of model {name}"))?;
    Ok(row.unwrap_or_else(|| ModelConfig::unconfigured(name)))
}

pub fn models(conn: &Connection) -> Result<Vec<ModelConfig>> {
    let mut stmt = conn.prepare(&format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY name"))?;
    let rows = stmt.query_map([], model_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn model_row(r: &rusqlite::Row) -> rusqlite::Result<ModelConfig> {
    let endpoints: String = r.get(3)?;
    let settings: String = r.get(8)?;
    Ok(ModelConfig {
        name: r.get(0)?,
        backend: Backend::parse(&r.get::<_, String>(1)?),
        command: r.get(2)?,
        endpoints: serde_json::from_str(&endpoints).unwrap_or_default(),
        timeout_s: r.get(4)?,
        timeout_auto: r.get::<_, i64>(5)? != 0,
        concurrency: r.get(6)?,
        max_attempts: r.get(7)?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        api_key_env: r.get(9)?,
        rpm: r.get(10)?,
        tpm: r.get(11)?,
        price_in: r.get(12)?,
        price_out: r.get(13)?,
        configured: true,
    })
}

pub fn save_model(conn: &Connection, m: &ModelConfig) -> Result<()> {
    conn.execute(
        "INSERT INTO models (name, backend, command, endpoints, timeout_s, timeout_auto,
                             concurrency, max_attempts, settings, api_key_env, updated_at,
                             rpm, tpm, price_in, price_out)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (name) DO UPDATE SET backend = excluded.backend, command = excluded.command,
             endpoints = excluded.endpoints, timeout_s = excluded.timeout_s,
             timeout_auto = excluded.timeout_auto, concurrency = excluded.concurrency,
             max_attempts = excluded.max_attempts, settings = excluded.settings,
             api_key_env = excluded.api_key_env, updated_at = excluded.updated_at,
             rpm = excluded.rpm, tpm = excluded.tpm, price_in = excluded.price_in,
             price_out = excluded.price_out",
        params![
            m.name,
            m.backend.as_str(),
            m.command,
            serde_json::to_string(&m.endpoints)?,
            m.timeout_s,
            m.timeout_auto as i64,
            m.concurrency,
            m.max_attempts,
            serde_json::to_string(&m.settings)?,
            m.api_key_env,
            now_ms(),
            m.rpm,
            m.tpm,
            m.price_in,
            m.price_out,
        ],
    )?;
    Ok(())
}

pub fn rubric(conn: &Connection, id: i64) -> Result<Rubric> {
    conn.query_row(
        "SELECT name, body, pass_field, score_field, scale_min, scale_max, fields FROM rubrics WHERE id = ?1",
        [id],
        |r| {
            let lo: Option<f64> = r.get(4)?;
            let hi: Option<f64> = r.get(5)?;
            let fields: String = r.get(6)?;
            Ok(Rubric {
                id,
                name: r.get(0)?,
                body: r.get(1)?,
                pass_field: r.get(2)?,
                score_field: r.get(3)?,
                scale: lo.zip(hi),
                fields: serde_json::from_str(&fields).unwrap_or_default(),
            })
        },
    )
    .with_context(|| format!("rubric {id} is missing"))
}

/// Stores the rubric (once per name and template) and returns its id. A header changed
/// since (a fixed scale, say) is updated in place: it applies to verdicts read from now on.
pub fn save_rubric(conn: &Connection, rubric: &Rubric) -> Result<i64> {
    let existing: Option<i64> = conn
        .query_row(
            "SELECT id FROM rubrics WHERE name = ?1 AND body = ?2",
            params![rubric.name, rubric.body],
            |r| r.get(0),
        )
        .optional()?;
    let fields = serde_json::to_string(&rubric.fields)?;
    let (lo, hi) = (rubric.scale.map(|s| s.0), rubric.scale.map(|s| s.1));
    if let Some(id) = existing {
        let changed = conn.execute(
            "UPDATE rubrics SET pass_field = ?1, score_field = ?2, scale_min = ?3,
                    scale_max = ?4, fields = ?5
             WHERE id = ?6 AND (pass_field IS NOT ?1 OR score_field IS NOT ?2
                    OR scale_min IS NOT ?3 OR scale_max IS NOT ?4 OR fields IS NOT ?5)",
            params![rubric.pass_field, rubric.score_field, lo, hi, fields, id],
        )?;
        if changed > 0 {
            log::info!("rubric {}: header updated", rubric.name);
        }
        return Ok(id);
    }
    conn.execute(
        "INSERT INTO rubrics (name, body, pass_field, score_field, scale_min, scale_max, fields)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            rubric.name,
            rubric.body,
            rubric.pass_field,
            rubric.score_field,
            lo,
            hi,
            fields
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Successful attempts of the model in the window: count, nearest-rank p99 and max (ms).
pub fn ok_durations(conn: &Connection, model: &str, window_ms: i64) -> Result<DurationSample> {
    let since = now_ms() - window_ms;
    let (count, max_ms): (i64, Option<i64>) = conn
        .prepare_cached(
            "SELECT COUNT(*), MAX(duration_ms) FROM attempts
             WHERE model = ?1 AND outcome = 'ok' AND started_at >= ?2",
        )?
        .query_row(params![model, since], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if count == 0 {
        return Ok(DurationSample::default());
    }
    // Nearest-rank p99: the value at rank ceil(0.99 n), counted down from the top so the
    // (model, outcome, duration_ms, started_at) index is read for the last 1 % only.
    let rank = ((count as f64) * 0.99).ceil() as i64;
    let p99_ms: i64 = conn
        .prepare_cached(
            "SELECT duration_ms FROM attempts WHERE model = ?1 AND outcome = 'ok' AND started_at >= ?2
             ORDER BY duration_ms DESC LIMIT 1 OFFSET ?3",
        )?
        .query_row(params![model, since, count - rank], |r| r.get(0))?;
    Ok(DurationSample {
        count,
        p99_ms: Some(p99_ms),
        max_ms,
    })
}

/// Streamed successful attempts of the model in the window: count and nearest-rank p99 of
/// each attempt's longest silence between chunks (ms).
pub fn ok_gaps(conn: &Connection, model: &str, window_ms: i64) -> Result<(i64, Option<f64>)> {
    let since = now_ms() - window_ms;
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM attempts WHERE model = ?1 AND outcome = 'ok'
             AND max_gap_ms IS NOT NULL AND started_at >= ?2",
        params![model, since],
        |r| r.get(0),
    )?;
    if n == 0 {
        return Ok((0, None));
    }
    let rank = ((n as f64) * 0.99).ceil() as i64;
    let p99: f64 = conn.query_row(
        "SELECT max_gap_ms FROM attempts WHERE model = ?1 AND outcome = 'ok'
             AND max_gap_ms IS NOT NULL AND started_at >= ?2
         ORDER BY max_gap_ms DESC LIMIT 1 OFFSET ?3",
        params![model, since, n - rank],
        |r| r.get(0),
    )?;
    Ok((n, Some(p99)))
}
