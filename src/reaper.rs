//! The reaper: decides which running jobs have lost their runner (by the one liveness rule,
//! [`crate::liveness::runner_life`]), puts them back through the store, marks their dead
//! runners stopped and kills what those left running. The store only lists and moves jobs.

use anyhow::Result;

use crate::db::{QueueStore, Rescue, StuckJob};
use crate::domain::JobState;
use crate::liveness::{runner_life, runner_token, RunnerLife};
use crate::util::human_secs;

/// A running job whose runner is gone or whose lease ran out.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub job: StuckJob,
    /// `host:pid` of its runner, or `unknown`.
    pub runner: String,
    pub reason: String,
    /// The token of a dead local runner, whose attempt processes may still be running.
    pub leftovers: Option<String>,
    /// Its runner is known dead (gone, or of an earlier boot) and not yet marked stopped.
    runner_dead: bool,
}

/// Finds orphans: running jobs whose runner on this host is dead (process gone, pid reused,
/// or an older boot), or whose lease expired while their runner is remote or suspended. A
/// running local runner keeps its jobs whatever its lease says: only a lock held by another
/// process can have kept its heartbeat from renewing. Jobs of `self_runner` are never orphans.
pub fn find_orphans(store: &dyn QueueStore, self_runner: Option<i64>) -> Result<Vec<Orphan>> {
    Ok(store
        .find_stuck(self_runner)?
        .into_iter()
        .filter_map(judge)
        .collect())
}

/// Why a running job is an orphan, or None while its runner holds it.
fn judge(job: StuckJob) -> Option<Orphan> {
    let Some(r) = job.runner.clone() else {
        return Some(orphan(
            job,
            "unknown".into(),
            "its runner is unknown".into(),
        ));
    };
    let name = format!("{}:{}", r.host, r.pid);
    if r.stopped {
        return Some(orphan(job, name, "its runner has stopped".into()));
    }
    let life = runner_life(&r.host, r.pid, r.pid_start.as_deref(), r.boot_id.as_deref());
    let expired = job.lease_expired_ms > 0;
    let reason = match life {
        RunnerLife::EarlierBoot => "its runner belongs to an earlier boot".to_string(),
        RunnerLife::Gone => format!("its runner (pid {}) is gone", r.pid),
        _ if life.holds_jobs(expired) => return None,
        _ if !expired => return None,
        RunnerLife::Suspended => format!(
            "its runner (pid {}) is suspended and its lease expired {} ago",
            r.pid,
            human_secs(job.lease_expired_ms as f64 / 1000.0)
        ),
        // Another host: only its heartbeat, on the database's clock, can tell.
        RunnerLife::Remote => format!(
            "its runner on {} sent no heartbeat and its lease expired {} ago",
            r.host,
            human_secs(job.lease_expired_ms as f64 / 1000.0)
        ),
        _ => format!(
            "its lease expired {} ago",
            human_secs(job.lease_expired_ms as f64 / 1000.0)
        ),
    };
    let mut o = orphan(job, name, reason);
    o.runner_dead = life.dead();
    if life == RunnerLife::Gone {
        o.leftovers = Some(runner_token(r.pid, r.pid_start.as_deref()));
    }
    Some(o)
}

fn rescue(o: &Orphan) -> Rescue {
    Rescue {
        job_id: o.job.job_id,
        model: o.job.model.clone(),
        token: o.job.token,
        attempt_id: o.job.attempt_id,
        max_attempts: o.job.max_attempts,
        error: format!("lost: {}", o.reason),
    }
}

fn orphan(job: StuckJob, runner: String, reason: String) -> Orphan {
    Orphan {
        job,
        runner,
        reason,
        leftovers: None,
        runner_dead: false,
    }
}

/// Reaps the orphans found now (not held by `self_runner`), judged and put back in one store
/// transaction: the attempt ends `lost`, not charged (whether its process ever started is
/// not known), and the job goes back to pending — or to failed once it has been lost more
/// times than its attempt budget. Returns the orphans reaped with the state each job went to.
pub fn reap(store: &dyn QueueStore, self_runner: Option<i64>) -> Result<Vec<(Orphan, JobState)>> {
    let mut orphans = Vec::new();
    let rescued = store.reap(self_runner, &mut |stuck| {
        orphans = stuck.into_iter().filter_map(judge).collect();
        orphans.iter().map(rescue).collect()
    })?;
    let reaped = rescued
        .into_iter()
        .map(|(i, state)| (orphans[i].clone(), state))
        .collect();
    // A local runner found dead is marked stopped, so reports stop calling it live, and what
    // its attempts left running is killed: its work must not go on beside the retry.
    let mut dead: Vec<i64> = orphans
        .iter()
        .filter(|o| o.runner_dead)
        .filter_map(|o| o.job.runner_id)
        .collect();
    dead.sort_unstable();
    dead.dedup();
    if !dead.is_empty() {
        store.mark_runners_died(&dead)?;
    }
    let mut tokens: Vec<&String> = orphans
        .iter()
        .filter_map(|o| o.leftovers.as_ref())
        .collect();
    tokens.sort();
    tokens.dedup();
    for token in tokens {
        let n = crate::exec::kill_leftovers(token);
        if n > 0 {
            log::warn!("killed {n} process(es) left running by dead runner {token}");
        }
    }
    Ok(reaped)
}
