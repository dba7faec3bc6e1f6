//! `reap`: return jobs whose runner died to the queue (or fail them when their budget is spent).

use anyhow::Result;
use serde_json::json;

use crate::cli::{Format, ReapArgs};
use crate::db::Store;
use crate::reaper::{self, Orphan};
use crate::report::render::{render, Table};

/// `quiet` (`-q`, for cron) silences the table and the summary line; rows asked for as CSV, JSON
/// or ids are still written.
pub fn run(a: &ReapArgs, quiet: bool, store: &dyn Store) -> Result<u8> {
    let rows: Vec<(Orphan, &str)> = if a.dry_run {
        let orphans = reaper::find_orphans(store, None)?;
        orphans.into_iter().map(|o| (o, "")).collect()
    } else {
        reaper::reap(store, None)?
            .into_iter()
            .map(|(o, state)| (o, state.as_str()))
            .collect()
    };
    let mut t = Table::new(
        "reaped",
        if a.dry_run { "Would reap" } else { "Reaped" },
        &[
            "id",
            "model",
            "batch",
            "runner",
            "lease_expired_s",
            "reason",
            "state",
        ],
    );
    t.empty = format!(
        "(no orphaned jobs{})",
        if a.dry_run { "" } else { ": nothing to reap" }
    );
    for (o, state) in &rows {
        t.push(vec![
            json!(o.job.job_id),
            json!(o.job.model),
            json!(o.job.batch),
            json!(o.runner),
            json!((o.job.lease_expired_ms.max(0) as f64 / 1000.0 * 10.0).round() / 10.0),
            json!(o.reason),
            json!(if a.dry_run { "running" } else { state }),
        ]);
    }
    if quiet && a.format.format == Format::Table {
        return Ok(0);
    }
    render(&[t], a.format.format, &mut std::io::stdout().lock())?;
    if a.format.format == Format::Table {
        let verb = if a.dry_run { "would reap" } else { "reaped" };
        eprintln!("llmbatch: {verb} {} orphaned job(s)", rows.len());
    }
    Ok(0)
}
