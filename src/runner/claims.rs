//! Recording and claiming: what comes next for each finished job, the claims the scheduler
//! plans, and both in one store call (`record_and_claim`, one transaction per pass).

use super::*;
use crate::db::Recorded;

impl Coordinator<'_> {
    /// Records finished attempts and claims replacements in one transaction, then starts them.
    pub(super) fn record_and_claim(
        &mut self,
        results: &mut Vec<Done>,
        claiming: bool,
    ) -> Result<usize> {
        // The slots of these results were freed when they arrived (`receive`), so their
        // replacements are claimed in this same transaction.
        let mut dispatched = self.spawn_ready()?;
        // Results not yet counted must still stop the claims at --max-failures.
        let plan = if claiming && !self.halts_with(results) {
            self.plan_claims()
        } else {
            Vec::new()
        };
        if results.is_empty() && plan.is_empty() {
            return Ok(dispatched);
        }
        let decided = self.decide(results);
        let recorded = self.commit(results, &decided, &plan)?;
        for ((done, next), kept) in results.drain(..).zip(decided).zip(recorded.kept) {
            self.account(done, next, kept);
        }
        for (wanted, got) in plan.into_iter().zip(recorded.claims) {
            if !got.is_empty() {
                if let Some(lane) = self.lanes.get_mut(&wanted.model) {
                    lane.idle_pause = schedule::FIRST_IDLE_PAUSE;
                }
            }
            if got.len() < wanted.endpoints.len() {
                self.idle_lane(&wanted.model)?;
            }
            for claim in got {
                self.dispatch(claim)?;
                dispatched += 1;
            }
        }
        Ok(dispatched)
    }

    /// The one store call of a pass: these finishes recorded, these claims taken.
    fn commit(&self, results: &[Done], decided: &[Next], plan: &[Wanted]) -> Result<Recorded> {
        self.store.record_and_claim(&RecordAndClaimParams {
            runner_id: self.runner_id,
            lease_ms: self.opts.lease.as_millis() as i64,
            filter: &self.opts.filter,
            finishes: results
                .iter()
                .zip(decided)
                .map(|(done, &next)| FinishParams {
                    claim: &done.claim,
                    finish: &done.finish,
                    next,
                })
                .collect(),
            claims: plan
                .iter()
                .map(|w| ClaimParams {
                    model: &w.model,
                    endpoints: &w.endpoints,
                    timeout_s: self.lanes[&w.model].timeout.as_secs_f64(),
                })
                .collect(),
        })
    }

    /// What comes next for each finished job (done, retried, failed), its attempt marked
    /// interrupted first when the runner is stopping.
    fn decide(&self, results: &mut [Done]) -> Vec<Next> {
        let retry_base = self.opts.retry_base.as_millis() as i64;
        let stopping = self.stopping();
        let mut decided = Vec::with_capacity(results.len());
        for done in results.iter_mut() {
            if stopping {
                interrupted_by_stop(&mut done.finish);
            }
            let lane = self
                .lanes
                .get(&done.claim.model)
                .expect("lane of a claimed job");
            let budget = done.claim.max_attempts.unwrap_or(lane.model.max_attempts);
            decided.push(domain::decide(
                &done.claim,
                &done.finish,
                budget,
                retry_base,
            ));
        }
        decided
    }

    /// The claims to take now, planned by the scheduler from the lanes' free slots.
    fn plan_claims(&self) -> Vec<Wanted> {
        let now = Instant::now();
        let ready: usize = self.lanes.values().map(|l| l.lookahead()).sum();
        let limit_left = self.opts.limit.map(|l| l.saturating_sub(self.claimed));
        let room = schedule::room(self.cap, ready, self.in_flight, limit_left);
        let views: Vec<_> = self
            .lanes
            .iter()
            .map(|(name, lane)| lane.view(name, now))
            .collect();
        schedule::plan_claims(&views, room, now)
    }

    /// Decides for each lane whether it keeps jobs ready (see [`schedule::keeps_ready`]).
    pub(super) fn update_lookahead(&mut self) {
        let only_lane = self.lanes.len() == 1;
        let exact = self.opts.limit.is_some() || self.opts.max_failures.is_some();
        for lane in self.lanes.values_mut() {
            let speed = schedule::Speed {
                seen: lane.seen,
                avg_ms: lane.avg_ms,
                endpoints: lane.endpoints.len(),
                held_back: lane.held_back(),
            };
            lane.lookahead = schedule::keeps_ready(speed, only_lane, exact);
        }
    }

    /// Nothing runnable now: look again when the earliest backoff ends (or within a tick).
    fn idle_lane(&mut self, model: &str) -> Result<()> {
        let next = self.store.next_runnable_in(&self.opts.filter, model)?;
        if let Some(lane) = self.lanes.get_mut(model) {
            let wait = schedule::idle_wait(next, lane.idle_pause, TICK);
            lane.idle_pause = schedule::next_idle_pause(lane.idle_pause, TICK);
            lane.idle_until = Instant::now() + wait;
            // Its turn at a shared endpoint is used up: the others go first next time.
            lane.last_claim = Some(Instant::now());
        }
        Ok(())
    }
}

/// While the runner stops, a child that died of a stop signal (systemd signals the whole
/// cgroup, a terminal the whole process group) was interrupted, not broken: not charged.
fn interrupted_by_stop(f: &mut Finish) {
    let by_signal = f
        .signal
        .is_some_and(|s| i32::try_from(s).is_ok_and(crate::exec::is_stop_signal));
    let by_exit = f.exit_code.is_some_and(crate::exec::is_stop_exit);
    let hit = match f.outcome {
        Outcome::Crash => by_signal,
        Outcome::Exit => by_exit,
        _ => false,
    };
    if hit {
        f.outcome = Outcome::Interrupted;
        f.error = Some("runner stopped by a signal".into());
    }
}
