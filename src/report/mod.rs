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
use rusqlite::Connection;

use crate::db::{AttemptScope, Filter, GroupKey, ReportSource};

/// What every section is asked about: which jobs, since when, grouped how.
pub struct Query {
    pub filter: Filter,
    /// Only attempts started at or after this time (ms).
    pub since_ms: Option<i64>,
    pub by: Vec<GroupKey>,
}

impl Query {
    /// The attempts (or jobs) the query covers, as the store takes them.
    pub fn scope(&self) -> AttemptScope {
        AttemptScope {
            filter: self.filter.clone(),
            since_ms: self.since_ms,
        }
    }

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
pub use crate::db::report::rank;

/// Models a per-model section covers: configured ones and those with jobs or attempts, within
/// the filter.
pub fn models_in_scope(src: &dyn ReportSource, q: &Query) -> Result<Vec<String>> {
    src.models_in_scope(&q.filter)
}

/// Distinct `model` values of a table with an index leading on it (after `cond`'s equality).
pub fn skip_scan(conn: &Connection, table: &str, cond: &str) -> Result<Vec<String>> {
    crate::db::sqlite::report::skip_scan(conn, table, cond)
}

/// The first `k` columns of a row: the group a report row belongs to (model, batch, …).
pub fn group_key(r: &rusqlite::Row, k: usize) -> rusqlite::Result<Vec<String>> {
    (0..k).map(|i| r.get::<_, String>(i)).collect()
}
