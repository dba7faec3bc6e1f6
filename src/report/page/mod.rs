//! `report --format html`: one self-contained page. Its data are the report's own section
//! tables, computed once by [`Sections`]; [`html`] lays them out as tables and [`charts`] draws
//! them as inline SVG (plotters). The page carries the same data as JSON for other tools.

pub mod charts;
pub mod html;

use anyhow::Result;
use serde_json::{json, Map, Value};
use std::io::Write;

use super::data::Sections;
use super::models::{self, Leaderboard};
use super::render::{rows_json, Table};
use super::{distribution, failed, timeline};
use crate::timefmt::iso_time;
use crate::util::now_ms;

/// Failed jobs listed on the page at most.
pub const FAILED_CAP: usize = 50;

/// Everything the page shows, as section tables.
pub struct PageData {
    /// What the page covers: batch, models, window.
    pub scope: String,
    pub generated: String,
    pub leaderboard: Leaderboard,
    pub models: Table,
    pub latency: Table,
    pub latency_cdf: Table,
    pub failures: Table,
    pub timeline: Table,
    /// `grades`, `graders`, `agreement`.
    pub grades: Vec<Table>,
    pub timeouts: Table,
    /// Tokens and cost per model.
    pub cost: Table,
    pub failed_jobs: Table,
}

pub fn collect(s: &Sections) -> Result<PageData> {
    let q = s.model_query();
    let leaderboard = models::leaderboard(s)?;
    let latency = s.model_latency()?.clone();
    Ok(PageData {
        scope: scope_text(s),
        generated: iso_time(now_ms()),
        models: leaderboard.table(),
        latency_cdf: distribution::cdf(s.store, q, &latency)?,
        latency,
        failures: s.model_failures()?.clone(),
        timeline: timeline::timeline(s.store, q)?,
        grades: s.grades()?.to_vec(),
        timeouts: s.timeouts()?.clone(),
        cost: s.model_cost()?.clone(),
        failed_jobs: failed::failed_jobs(s.store, q, FAILED_CAP)?,
        leaderboard,
    })
}

impl PageData {
    /// Every table on the page, in page order.
    pub fn tables(&self) -> Vec<&Table> {
        let mut all = vec![
            &self.models,
            &self.latency,
            &self.latency_cdf,
            &self.failures,
            &self.timeline,
        ];
        all.extend(self.grades.iter());
        all.extend([&self.timeouts, &self.cost, &self.failed_jobs]);
        all
    }

    /// The page's data as one JSON document: the verdict, the scope and each table's rows
    /// keyed as in `report --format json`.
    pub fn json(&self) -> Value {
        let mut tables = Map::new();
        for t in self.tables() {
            tables.insert(t.name.clone(), rows_json(t));
        }
        json!({
            "scope": self.scope,
            "verdict": self.leaderboard.verdict,
            "ranked_by": self.leaderboard.basis.describe(),
            "tables": tables,
        })
    }
}

fn scope_text(s: &Sections) -> String {
    let f = &s.q.filter;
    let mut parts = vec![match &f.batch {
        Some(b) => format!("batch {b}"),
        None => "all batches".to_string(),
    }];
    parts.push(if f.models.is_empty() {
        "all models".to_string()
    } else {
        format!("models {}", f.models.join(", "))
    });
    if f.ids.is_some() {
        parts.push("the jobs of an ids file".to_string());
    }
    parts.push(match s.q.since_ms {
        Some(since) => format!("attempts since {}", iso_time(since)),
        None => "all time".to_string(),
    });
    parts.join(" · ")
}

pub fn write(s: &Sections, out: &mut dyn Write) -> Result<()> {
    let data = collect(s)?;
    out.write_all(html::page(&data)?.as_bytes())?;
    out.flush()?;
    Ok(())
}
