//! Report sections: each turns typed rows from the store ([`crate::db::ReportSource`]) into a
//! [`render::Table`], once.

pub mod breakdown;
pub mod consistency;
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

    /// The grouping columns' names (default: model).
    pub fn group_cols(&self) -> Vec<&'static str> {
        self.group_keys()
            .into_iter()
            .map(GroupKey::column)
            .collect()
    }
}

/// Nearest-rank percentile positions (1-based) for `n` sorted values.
pub use crate::db::report::rank;

/// Models a per-model section covers: configured ones and those with jobs or attempts, within
/// the filter.
pub fn models_in_scope(src: &dyn ReportSource, q: &Query) -> Result<Vec<String>> {
    src.models_in_scope(&q.filter)
}
