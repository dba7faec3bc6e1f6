//! The sections of one `report` call, each computed at most once: the tables printed, the
//! leaderboard built from them and the HTML page all read the same rows.

use anyhow::Result;
use std::cell::OnceCell;
use std::collections::BTreeMap;

use super::render::Table;
use super::{cost, grades, sections, speed, timeouts, Query};
use crate::db::{GroupKey, Store};

pub struct Sections<'a> {
    pub store: &'a dyn Store,
    /// The scope and grouping asked for.
    pub q: &'a Query,
    /// The same scope grouped by model: what the leaderboard and the page compare.
    by_model: Query,
    status: OnceCell<Vec<Table>>,
    latency: OnceCell<Table>,
    model_latency: OnceCell<Table>,
    failures: OnceCell<Table>,
    model_failures: OnceCell<Table>,
    timeouts: OnceCell<Table>,
    grades: OnceCell<Vec<Table>>,
    tokens: OnceCell<BTreeMap<String, f64>>,
    model_cost: OnceCell<Table>,
}

/// `OnceCell::get_or_try_init` is not stable yet: the same, by hand.
fn once<T>(cell: &OnceCell<T>, make: impl FnOnce() -> Result<T>) -> Result<&T> {
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let v = make()?;
    Ok(cell.get_or_init(|| v))
}

impl<'a> Sections<'a> {
    pub fn new(store: &'a dyn Store, q: &'a Query) -> Sections<'a> {
        Sections {
            store,
            q,
            by_model: Query {
                filter: q.filter.clone(),
                since_ms: q.since_ms,
                by: Vec::new(),
            },
            status: OnceCell::new(),
            latency: OnceCell::new(),
            model_latency: OnceCell::new(),
            failures: OnceCell::new(),
            model_failures: OnceCell::new(),
            timeouts: OnceCell::new(),
            grades: OnceCell::new(),
            tokens: OnceCell::new(),
            model_cost: OnceCell::new(),
        }
    }

    /// Whether the grouping asked for is by model alone (the default).
    fn grouped_by_model(&self) -> bool {
        self.q.by.is_empty() || self.q.by == [GroupKey::Model]
    }

    /// The by-model query: for sections that always compare models.
    pub fn model_query(&self) -> &Query {
        &self.by_model
    }

    /// `status` and, when jobs are running, `running`.
    pub fn status(&self) -> Result<&[Table]> {
        Ok(once(&self.status, || sections::status(self.store, self.q))?)
    }

    /// Latency grouped as asked (`--by`).
    pub fn latency(&self) -> Result<&Table> {
        if self.grouped_by_model() {
            return self.model_latency();
        }
        once(&self.latency, || sections::latency(self.store, self.q))
    }

    pub fn model_latency(&self) -> Result<&Table> {
        once(&self.model_latency, || {
            sections::latency(self.store, &self.by_model)
        })
    }

    /// Failures grouped as asked (`--by`).
    pub fn failures(&self) -> Result<&Table> {
        if self.grouped_by_model() {
            return self.model_failures();
        }
        once(&self.failures, || sections::failures(self.store, self.q))
    }

    pub fn model_failures(&self) -> Result<&Table> {
        once(&self.model_failures, || {
            sections::failures(self.store, &self.by_model)
        })
    }

    pub fn timeouts(&self) -> Result<&Table> {
        once(&self.timeouts, || timeouts::timeouts(self.store, self.q))
    }

    /// `grades`, `graders`, `agreement`.
    pub fn grades(&self) -> Result<&[Table]> {
        Ok(once(&self.grades, || grades::tables(self.store, self.q))?)
    }

    pub fn tokens_per_s(&self) -> Result<&BTreeMap<String, f64>> {
        once(&self.tokens, || speed::tokens_per_s(self.store, self.q))
    }

    /// Tokens and cost per model (empty cost where a model has no prices).
    pub fn model_cost(&self) -> Result<&Table> {
        once(&self.model_cost, || cost::cost(self.store, &self.by_model))
    }
}
