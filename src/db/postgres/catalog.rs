//! Models, rubrics and verdicts on PostgreSQL: the same rows as on SQLite.

use anyhow::{Context, Result};
use postgres::{GenericClient, Row};

use crate::db::store::DurationSample;
use crate::grading::Rubric;
use crate::models::{Backend, ModelConfig};

const MODEL_COLUMNS: &str = "name, backend, command, endpoints, timeout_s, timeout_auto,
    concurrency, max_attempts, settings, api_key_env, rpm, tpm, price_in, price_out";

fn model_from(r: &Row) -> ModelConfig {
    ModelConfig {
        name: r.get(0),
        backend: Backend::parse(r.get::<_, &str>(1)),
        command: r.get(2),
        endpoints: serde_json::from_str(r.get::<_, &str>(3)).unwrap_or_default(),
        timeout_s: r.get(4),
        timeout_auto: r.get::<_, i64>(5) != 0,
        concurrency: r.get(6),
        max_attempts: r.get(7),
        settings: serde_json::from_str(r.get::<_, &str>(8)).unwrap_or_default(),
        api_key_env: r.get(9),
        rpm: r.get(10),
        tpm: r.get(11),
        price_in: r.get(12),
        price_out: r.get(13),
        configured: true,
    }
}

pub fn load_model(c: &mut impl GenericClient, name: &str) -> Result<ModelConfig> {
    let row = c
        .query_opt(
            &format!("SELECT {MODEL_COLUMNS} FROM models WHERE name = $1"),
            &[&name],
        )
        .with_context(|| format!("cannot read settings of model {name}"))?;
    Ok(row
        .as_ref()
        .map(model_from)
        .unwrap_or_else(|| ModelConfig::unconfigured(name)))
}

pub fn list_models(c: &mut impl GenericClient) -> Result<Vec<ModelConfig>> {
    Ok(c.query(
        &format!("SELECT {MODEL_COLUMNS} FROM models ORDER BY name"),
        &[],
    )?
    .iter()
    .map(model_from)
    .collect())
}

pub fn save_model(c: &mut impl GenericClient, m: &ModelConfig) -> Result<()> {
    c.execute(
        "INSERT INTO models (name, backend, command, endpoints, timeout_s, timeout_auto,
                             concurrency, max_attempts, settings, api_key_env, updated_at,
                             rpm, tpm, price_in, price_out)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, llmbatch_now_ms(), $11, $12, $13, $14)
         ON CONFLICT (name) DO UPDATE SET backend = excluded.backend, command = excluded.command,
             endpoints = excluded.endpoints, timeout_s = excluded.timeout_s,
             timeout_auto = excluded.timeout_auto, concurrency = excluded.concurrency,
             max_attempts = excluded.max_attempts, settings = excluded.settings,
             api_key_env = excluded.api_key_env, updated_at = excluded.updated_at,
             rpm = excluded.rpm, tpm = excluded.tpm, price_in = excluded.price_in,
             price_out = excluded.price_out",
        &[
            &m.name,
            &m.backend.as_str(),
            &m.command,
            &serde_json::to_string(&m.endpoints)?,
            &m.timeout_s,
            &(m.timeout_auto as i64),
            &m.concurrency,
            &m.max_attempts,
            &serde_json::to_string(&m.settings)?,
            &m.api_key_env,
            &m.rpm,
            &m.tpm,
            &m.price_in,
            &m.price_out,
        ],
    )?;
    Ok(())
}

pub fn load_rubric(c: &mut impl GenericClient, id: i64) -> Result<Rubric> {
    let r = c
        .query_one(
            "SELECT name, body, pass_field, score_field, scale_min, scale_max, fields FROM rubrics WHERE id = $1",
            &[&id],
        )
        .with_context(|| format!("rubric {id} is missing"))?;
    let lo: Option<f64> = r.get(4);
    let hi: Option<f64> = r.get(5);
    Ok(Rubric {
        id,
        name: r.get(0),
        body: r.get(1),
        pass_field: r.get(2),
        score_field: r.get(3),
        scale: lo.zip(hi),
        fields: serde_json::from_str(r.get::<_, &str>(6)).unwrap_or_default(),
    })
}

/// Stores the rubric once per name and template (its header updated in place) and returns
/// its id.
pub fn save_rubric(c: &mut impl GenericClient, r: &Rubric) -> Result<i64> {
    let fields = serde_json::to_string(&r.fields)?;
    let lo = r.scale.map(|s| s.0);
    let hi = r.scale.map(|s| s.1);
    let existing = c.query_opt(
        "SELECT id FROM rubrics WHERE name = $1 AND body = $2",
        &[&r.name, &r.body],
    )?;
    if let Some(row) = existing {
        let id: i64 = row.get(0);
        let changed = c.execute(
            "UPDATE rubrics SET pass_field = $1, score_field = $2, scale_min = $3,
                    scale_max = $4, fields = $5
             WHERE id = $6 AND (pass_field IS DISTINCT FROM $1 OR score_field IS DISTINCT FROM $2
                    OR scale_min IS DISTINCT FROM $3 OR scale_max IS DISTINCT FROM $4
                    OR fields IS DISTINCT FROM $5)",
            &[&r.pass_field, &r.score_field, &lo, &hi, &fields, &id],
        )?;
        if changed > 0 {
            log::info!("rubric {}: header updated", r.name);
        }
        return Ok(id);
    }
    Ok(c.query_one(
        "INSERT INTO rubrics (name, body, pass_field, score_field, scale_min, scale_max, fields)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &r.name,
            &r.body,
            &r.pass_field,
            &r.score_field,
            &lo,
            &hi,
            &fields,
        ],
    )?
    .get(0))
}

/// Successful attempts of the model started in the last `window_ms` (database time): count,
/// nearest-rank p99 and max (ms), the same definition as on SQLite.
pub fn ok_durations(
    c: &mut impl GenericClient,
    model: &str,
    window_ms: i64,
) -> Result<DurationSample> {
    let r = c.query_one(
        "SELECT COUNT(*), MAX(duration_ms), llmbatch_now_ms() - $2 FROM attempts
         WHERE model = $1 AND outcome = 'ok' AND started_at >= llmbatch_now_ms() - $2",
        &[&model, &window_ms],
    )?;
    let (count, max_ms, since): (i64, Option<i64>, i64) = (r.get(0), r.get(1), r.get(2));
    if count == 0 {
        return Ok(DurationSample::default());
    }
    let rank = ((count as f64) * 0.99).ceil() as i64;
    let p99_ms: Option<i64> = c
        .query_opt(
            "SELECT duration_ms FROM attempts WHERE model = $1 AND outcome = 'ok' AND started_at >= $2
             ORDER BY duration_ms DESC LIMIT 1 OFFSET $3",
            &[&model, &since, &(count - rank)],
        )?
        .map(|r| r.get(0));
    Ok(DurationSample {
        count,
        p99_ms,
        max_ms,
    })
}

/// Successful streamed attempts of the model in the window (database time): how many, and
/// the nearest-rank p99 of their longest silence (ms).
pub fn ok_gaps(
    c: &mut impl GenericClient,
    model: &str,
    window_ms: i64,
) -> Result<(i64, Option<f64>)> {
    let r = c.query_one(
        "SELECT COUNT(*), llmbatch_now_ms() - $2 FROM attempts WHERE model = $1 AND outcome = 'ok'
             AND max_gap_ms IS NOT NULL AND started_at >= llmbatch_now_ms() - $2",
        &[&model, &window_ms],
    )?;
    let (n, since): (i64, i64) = (r.get(0), r.get(1));
    if n == 0 {
        return Ok((0, None));
    }
    let rank = ((n as f64) * 0.99).ceil() as i64;
    let p99: Option<f64> = c
        .query_opt(
            "SELECT max_gap_ms FROM attempts WHERE model = $1 AND outcome = 'ok'
                 AND max_gap_ms IS NOT NULL AND started_at >= $2
             ORDER BY max_gap_ms DESC LIMIT 1 OFFSET $3",
            &[&model, &since, &(n - rank)],
        )?
        .map(|r| r.get(0));
    Ok((n, p99))
}
