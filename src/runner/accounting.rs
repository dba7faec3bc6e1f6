//! Accounting: a finished attempt gives back its slots, counts toward the run's summary (which
//! the stop rules read) and moves its lane's bar.

use super::*;

impl Coordinator<'_> {
    /// Gives back the slot of a finished attempt (global, lane and endpoint).
    pub(super) fn release(&mut self, done: &Done) {
        self.in_flight -= 1;
        let f = &done.finish;
        let end = match f.outcome {
            Outcome::Unavailable => End::Unreachable,
            Outcome::Throttled if !f.quota_exhausted => End::Throttled(
                f.retry_after_ms
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
            ),
            _ => End::Answered,
        };
        // Any end may make other work runnable (a graded parent, a freed slot): every lane
        // looks again now, and soon after that if it finds nothing.
        for lane in self.lanes.values_mut() {
            lane.idle_until = Instant::now();
            lane.idle_pause = super::schedule::FIRST_IDLE_PAUSE;
        }
        let lane = self
            .lanes
            .get_mut(&done.claim.model)
            .expect("lane of a claimed job");
        if let Some(estimated) = lane.estimates.remove(&done.claim.job_id) {
            if let (Some(pacer), Some(used)) = (
                lane.pacer.as_mut(),
                crate::report::cost::Usage::from_timings(f.timings.as_ref()),
            ) {
                pacer.correct(estimated, used.total());
            }
        }
        if f.outcome == Outcome::Throttled {
            lane.throttled += 1;
            self.summary.throttled += 1;
        }
        if f.quota_exhausted && lane.stopped.is_none() {
            let msg = format!(
                "model {}: quota exhausted at {} — {}; its jobs stay pending, nothing was charged (add credit or raise the limit, then run again)",
                done.claim.model,
                done.claim.endpoint,
                f.error.as_deref().unwrap_or("no detail")
            );
            log::error!("{msg}");
            lane.stopped = Some("quota exhausted".into());
            self.summary
                .stopped_lanes
                .push((done.claim.model.clone(), msg));
        }
        let reach = lane.ended(done.claim.job_id, &done.claim.endpoint, end);
        log_reach(lane, done, reach);
        if done.finish.outcome == Outcome::Ok {
            lane.observe(done.finish.duration_ms);
        }
        self.update_lookahead();
    }

    /// Takes a result in: its slot is free from now on; it is recorded with the next commit.
    pub(super) fn receive(&mut self, done: Done, pending: &mut Vec<Done>) {
        self.release(&done);
        pending.push(done);
    }

    /// Updates counters for a recorded attempt (its slot already released), and says what
    /// happened.
    pub(super) fn account(&mut self, done: Done, next: Next, kept: bool) {
        let Done { claim, finish } = done;
        let lane = self
            .lanes
            .get_mut(&claim.model)
            .expect("lane of a claimed job");
        let what = format!(
            "job {} ({}, {}/{})",
            claim.job_id, claim.model, claim.batch, claim.item_id
        );
        if !kept {
            self.summary.discarded += 1;
            log::warn!(
                "{what}: result of attempt {} ({}) discarded — the job was reaped meanwhile (lease lost)",
                claim.number,
                finish.outcome.as_str()
            );
            return;
        }
        self.summary.attempts += 1;
        if self.opts.max_cost.is_some() {
            let usage = crate::report::cost::Usage::from_timings(finish.timings.as_ref());
            if let Some(cost) = usage.and_then(|u| u.cost(&lane.model)) {
                self.summary.spent += cost;
            }
        }
        lane.count_tokens(&finish);
        if finish.outcome.charged() && finish.outcome != Outcome::Ok {
            self.summary.failed_attempts += 1;
        }
        let why = finish.error.as_deref().unwrap_or(finish.outcome.as_str());
        match next {
            Next::Done => {
                lane.done += 1;
                self.summary.done += 1;
            }
            Next::Failed => {
                lane.failed += 1;
                self.summary.failed += 1;
                log::warn!(
                    "{what} failed after attempt {}: {}: {why}",
                    claim.number,
                    finish.outcome.as_str()
                );
            }
            Next::Retry(_) if finish.outcome.charged() => {
                self.summary.retried += 1;
                log::info!(
                    "{what} attempt {} {}: {why}; will retry",
                    claim.number,
                    finish.outcome.as_str()
                );
            }
            Next::Retry(_) => {
                self.summary.requeued += 1;
                log::debug!("{what} back to pending: {why}");
            }
        }
    }
}

/// Says what an attempt's end did to its endpoint: throttled (resting, concurrency lowered),
/// down, or reachable again.
fn log_reach(lane: &mut Lane, done: &Done, reach: Reach) {
    match reach {
        Reach::Throttled {
            rest,
            by_server,
            limit,
        } => log::info!(
            "{} throttled ({}): resting it {}{}, concurrency {} → {} (not charged)",
            done.claim.endpoint,
            done.finish
                .http_status
                .map_or("busy".to_string(), |s| format!("HTTP {s}")),
            human_secs(rest.as_secs_f64()),
            if by_server {
                " as its Retry-After asks"
            } else {
                ""
            },
            limit.0,
            limit.1
        ),
        Reach::Down(rest) => log::warn!(
            "{} unreachable, resting it {} (its jobs wait, not charged): {}",
            if done.claim.endpoint.is_empty() {
                &done.claim.model
            } else {
                &done.claim.endpoint
            },
            human_secs(rest.as_secs_f64()),
            done.finish.error.as_deref().unwrap_or("unavailable")
        ),
        Reach::Up => {
            lane.outage_reported = false;
            log::info!("{} reachable again", done.claim.endpoint)
        }
        Reach::Same => {}
    }
}
