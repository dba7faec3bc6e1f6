//! `run`: work the queue until nothing in scope is left, then say what happened.

use anyhow::Result;
use std::io::IsTerminal;

use crate::cli::{Cli, RunArgs};
use crate::db::Store;
use crate::error::{EXIT_ERROR, EXIT_FAILED, EXIT_OK};
use crate::runner::{self, signals, FailureLimit, RunOptions};
use crate::util::human_secs;

pub fn run(a: &RunArgs, store: &dyn Store, cli: &Cli) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, store)?;
    let max_failures = a
        .max_failures
        .as_deref()
        .map(FailureLimit::parse)
        .transpose()?;
    let opts = RunOptions {
        db_path: cli.db.clone(),
        filter,
        jobs: a.jobs.map(|j| j as usize),
        limit: a.limit,
        lease: a.lease.max(std::time::Duration::from_millis(300)),
        kill_grace: a.kill_grace,
        retry_base: a.retry_base,
        max_runtime: a.max_runtime,
        max_failures,
        unavailable_limit: a.unavailable_limit,
        max_cost: a.max_cost,
        watch: a.watch,
        poll: a.poll.max(std::time::Duration::from_millis(50)),
        progress: !cli.quiet && std::io::stderr().is_terminal(),
        cache: a.cache,
    };
    let s = runner::run(store, opts)?;
    if !cli.quiet {
        let cached = if a.cache {
            format!(" ({} answered from the cache)", s.cached)
        } else {
            String::new()
        };
        let mut line = format!(
            "llmbatch: {} done{cached}, {} failed, {} retried in {}",
            s.done,
            s.failed,
            s.retried,
            human_secs(s.elapsed.as_secs_f64())
        );
        if s.requeued > 0 {
            line.push_str(&format!(", {} back to pending", s.requeued));
        }
        if s.discarded > 0 {
            line.push_str(&format!(", {} late results discarded", s.discarded));
        }
        if let Some(sig) = s.signal {
            line.push_str(&format!(" — stopped by {}", signals::name(sig)));
        }
        if s.throttled > 0 {
            line.push_str(&format!(", {} throttled (not charged)", s.throttled));
        }
        if s.halted_on_failures {
            line.push_str(" — stopped at --max-failures");
        }
        if s.cost_capped {
            line.push_str(&format!(
                " — stopped claiming at --max-cost: ${:.4} of ${} spent in scope, the rest stays pending",
                s.spent,
                a.max_cost.unwrap_or(0.0)
            ));
        }
        eprintln!("{line}");
    }
    if let Some(sig) = s.signal {
        return Ok(signals::exit_code(sig) as u8);
    }
    if let Some((_, msg)) = s.stopped_lanes.first() {
        eprintln!("llmbatch: error: {msg}");
        return Ok(EXIT_ERROR);
    }
    if s.failed > 0 || s.halted_on_failures {
        return Ok(EXIT_FAILED);
    }
    Ok(EXIT_OK)
}
