//! Report sections: each computes its rows once from SQL into a [`render::Table`].

pub mod grades;
pub mod render;
pub mod sections;

use rusqlite::types::Value as SqlValue;

use crate::cli::GroupKey;
use crate::db::jobs::Filter;

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
