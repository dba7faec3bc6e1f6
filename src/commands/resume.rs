//! `resume`: failed and cancelled jobs back to pending with a fresh (or given) attempt budget.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Format, ResumeArgs};
use crate::db::{ResumeParams, Store};

pub fn run(a: &ResumeArgs, store: &dyn Store) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, store)?;
    let ids = store.resume(&ResumeParams {
        filter: &filter,
        outcome: a.outcome.map(|o| o.0),
        extra_attempts: a.extra_attempts,
        dry_run: a.dry_run,
    })?;
    let verb = if a.dry_run { "would resume" } else { "resumed" };
    match a.format.format {
        Format::Json => crate::outln!(
            "{}",
            json!({ "resumed": ids.len(), "dry_run": a.dry_run, "ids": ids })
        )?,
        Format::Ids => {
            for id in &ids {
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
