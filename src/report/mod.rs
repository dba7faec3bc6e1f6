//! Report sections: each computes its rows once from SQL into a [`render::Table`].

pub mod breakdown;
pub mod cost;
pub mod data;
pub mod distribution;
pub mod failed;
pub mod grades;
pub mod models;
pub mod page;
pub mod render;
pub mod sections;
pub mod speed;
pub mod throughput;
pub mod timeline;
pub mod timeouts;

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeSet;

use crate::db::{Filter, GroupKey};

/// What every section is asked about: which jobs, since when, grouped how.
pub struct Query {
    pub filter: Filter,
    /// Only attempts started at or after this time (ms).
    pub since_ms: Option<i64>,
    pub by: Vec<GroupKey>,
}

impl Query {
    /// Conditions on the attempts table under `alias`.
    pub fn attempt_sql(&self, alias: &str) -> (String, Vec<SqlValue>) {
        let (mut sql, mut args) = self.filter.sql_on(alias, "job_id");
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {alias}.started_at >= ?"));
            args.push(SqlValue::Integer(since));
        }
        (sql, args)
    }

    /// Conditions on the jobs table under `alias`, with --since on its time column `col`.
    pub fn job_sql(&self, alias: &str, col: &str) -> (String, Vec<SqlValue>) {
        let (mut sql, mut args) = self.filter.sql(alias);
        if let Some(since) = self.since_ms {
            sql.push_str(&format!(" AND {alias}.{col} >= ?"));
            args.push(SqlValue::Integer(since));
        }
        (sql, args)
    }

    /// The grouping keys in column order (default: model).
    pub fn group_keys(&self) -> Vec<GroupKey> {
        if self.by.is_empty() {
            return vec![GroupKey::Model];
        }
        [GroupKey::Batch, GroupKey::Model, GroupKey::Endpoint]
            .into_iter()
            .filter(|k| self.by.contains(k))
            .collect()
    }

    /// Grouping columns on attempts (default: model).
    pub fn group_cols(&self) -> Vec<(&'static str, &'static str)> {
        if self.by.is_empty() {
            return vec![("model", "model")];
        }
        let mut cols = Vec::new();
        for key in [GroupKey::Batch, GroupKey::Model, GroupKey::Endpoint] {
            if self.by.contains(&key) {
                cols.push(match key {
                    GroupKey::Batch => ("batch", "batch"),
                    GroupKey::Model => ("model", "model"),
                    GroupKey::Endpoint => ("endpoint", "COALESCE(endpoint, '')"),
                });
            }
        }
        cols
    }
}

/// Nearest-rank percentile positions (1-based) for `n` sorted values.
pub fn rank(p: f64, n: i64) -> i64 {
    ((p * n as f64).ceil() as i64).clamp(1, n.max(1))
}

/// Models a per-model section covers: configured ones and those with jobs or attempts, within
/// the filter. Distinct names come from index skip-scans, so a million rows cost nothing.
pub fn models_in_scope(conn: &Connection, q: &Query) -> Result<Vec<String>> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    if !q.filter.models.is_empty() {
        names.extend(q.filter.models.iter().cloned());
    } else {
        let mut stmt = conn.prepare_cached("SELECT name FROM models")?;
        for n in stmt.query_map([], |r| r.get::<_, String>(0))? {
            names.insert(n?);
        }
        names.extend(skip_scan(conn, "attempts", "")?);
        for state in ["pending", "running", "done", "failed", "cancelled"] {
            names.extend(skip_scan(conn, "jobs", &format!(" AND state = '{state}'"))?);
        }
    }
    if q.filter.batch.is_none() && q.filter.ids.is_none() && q.filter.models.is_empty() {
        return Ok(names.into_iter().collect());
    }
    // Keep the models with jobs in scope (a configured model with none is left out).
    let (cond, args) = q.filter.sql("j");
    let sql = format!("SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.model = ?{cond})");
    let mut stmt = conn.prepare(&sql)?;
    let mut kept = Vec::new();
    for name in names {
        let mut all = vec![SqlValue::Text(name.clone())];
        all.extend(args.iter().cloned());
        if stmt.query_row(params_from_iter(all), |r| r.get::<_, bool>(0))? {
            kept.push(name);
        }
    }
    Ok(kept)
}

/// Distinct `model` values of a table with an index leading on it (after `cond`'s equality).
pub fn skip_scan(conn: &Connection, table: &str, cond: &str) -> Result<Vec<String>> {
    let sql = format!(
        "WITH RECURSIVE m(x) AS (
             SELECT (SELECT MIN(model) FROM {table} WHERE 1 = 1{cond})
             UNION ALL
             SELECT (SELECT MIN(model) FROM {table} WHERE model > m.x{cond}) FROM m WHERE m.x IS NOT NULL)
         SELECT x FROM m WHERE x IS NOT NULL"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The first `k` columns of a row: the group a report row belongs to (model, batch, …).
pub fn group_key(r: &rusqlite::Row, k: usize) -> rusqlite::Result<Vec<String>> {
    (0..k).map(|i| r.get::<_, String>(i)).collect()
}
