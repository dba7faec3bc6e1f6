//! `resume`: failed and cancelled jobs back to pending with a fresh (or given) attempt budget.

use anyhow::Result;
use rusqlite::{Connection, TransactionBehavior};
use serde_json::json;

use crate::cli::{Format, ResumeArgs};
use crate::db::jobs;

pub fn run(a: &ResumeArgs, conn: &mut Connection) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, conn)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let ids = jobs::resume(&tx, &filter, a.outcome, a.extra_attempts, a.dry_run)?;
    tx.commit()?;
    print(a, &ids)
}

/// `resume` on PostgreSQL: one statement.
pub fn run_pg(a: &ResumeArgs, client: &mut postgres::Client) -> Result<u8> {
    let filter = super::scope_filter_pg(&a.scope, client)?;
    let ids = crate::db::postgres::queue::resume(
        client,
        &filter,
        a.outcome,
        a.extra_attempts,
        a.dry_run,
    )?;
    print(a, &ids)
}

fn print(a: &ResumeArgs, ids: &[i64]) -> Result<u8> {
    let verb = if a.dry_run { "would resume" } else { "resumed" };
    match a.format.format {
        Format::Json => crate::outln!(
            "{}",
            json!({ "resumed": ids.len(), "dry_run": a.dry_run, "ids": ids })
        )?,
        Format::Ids => {
            for id in ids {
                crate::outln!("{id}")?;
            }
        }
        _ => {
            let grant = match a.extra_attempts {
                Some(n) => format!("{n} more attempt(s) each"),
                None => "a fresh attempt budget".to_string(),
            };
            crate::outln!("{verb} {} job(s) with {grant}", ids.len())?;
            if !a.dry_run && !ids.is_empty() {
                crate::outln!("run them with: llmbatch run")?;
            }
        }
    }
    Ok(0)
}
