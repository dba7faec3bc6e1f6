//! `reap`: return jobs whose runner died to the queue (or fail them when their budget is spent).

use anyhow::Result;
use rusqlite::{Connection, TransactionBehavior};
use serde_json::json;

use crate::cli::{Format, ReapArgs};
use crate::db::jobs;
use crate::report::render::{render, Table};

/// `quiet` (`-q`, for cron) silences the table and the summary line; rows asked for as CSV, JSON
/// or ids are still written.
pub fn run(a: &ReapArgs, quiet: bool, conn: &mut Connection) -> Result<u8> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let orphans = jobs::find_orphans(&tx, None)?;
    let rows: Vec<(jobs::Orphan, &str)> = if a.dry_run {
        orphans.into_iter().map(|o| (o, "")).collect()
    } else {
        jobs::reap(&tx, &orphans)?
    };
    tx.commit()?;
    print(a, quiet, &rows)
}

/// `reap` on PostgreSQL: orphans judged on the database's clock, each reap fenced.
pub fn run_pg(a: &ReapArgs, quiet: bool, client: &mut postgres::Client) -> Result<u8> {
    use crate::db::postgres::queue;
    let orphans = queue::find_orphans(client, None)?;
    let rows: Vec<(jobs::Orphan, &str)> = if a.dry_run {
        orphans.into_iter().map(|o| (o, "")).collect()
    } else {
        queue::reap(client, &orphans)?
    };
    print(a, quiet, &rows)
}

fn print(a: &ReapArgs, quiet: bool, rows: &[(jobs::Orphan, &str)]) -> Result<u8> {
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
    for (o, state) in rows {
        t.push(vec![
            json!(o.job_id),
            json!(o.model),
            json!(o.batch),
            json!(o.runner),
            json!((o.lease_expired_ms.max(0) as f64 / 1000.0 * 10.0).round() / 10.0),
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
