//! Starting attempts: each claimed job goes to a pool thread (or, in a fast lane running at its
//! limit, waits ready for the next thread that frees a slot).

use super::*;

impl Coordinator<'_> {
    /// A ready job whose lane has a free running slot (its attempts ended meanwhile without
    /// taking it) is started by the coordinator: a ready job never waits for nothing.
    pub(super) fn spawn_ready(&mut self) -> Result<usize> {
        let mut jobs = Vec::new();
        for lane in self.lanes.values() {
            let Ok(mut ready) = lane.ready.lock() else {
                continue;
            };
            let room = schedule::running_room(lane.model.concurrency.max(1) as usize, self.cap);
            let n = schedule::ready_to_start(lane.in_flight, ready.len(), room);
            jobs.extend(ready.drain(..n));
        }
        let started = jobs.len();
        for job in jobs {
            self.start(job)?;
        }
        Ok(started)
    }

    /// Starts a claimed job's attempt, or keeps it ready when its lane runs at its limit.
    pub(super) fn dispatch(&mut self, claim: Claim) -> Result<()> {
        let rubric = match claim.rubric_id {
            Some(id) => Some(self.rubric(id)?),
            None => None,
        };
        let lane = self
            .lanes
            .get_mut(&claim.model)
            .expect("lane of a claimed job");
        lane.started(claim.job_id, &claim.endpoint);
        lane.last_claim = Some(Instant::now());
        pace(lane, &claim);
        log::debug!(
            "job {} ({}) attempt {} started",
            claim.job_id,
            claim.model,
            claim.number
        );
        let job = AttemptJob {
            claim,
            model: lane.model.clone(),
            timeout: lane.timeout,
            kill_grace: self.opts.kill_grace,
            rubric,
        };
        self.in_flight += 1;
        self.claimed += 1;
        // A lane at its running limit keeps the job ready for the next thread that frees a slot.
        let lane = &self.lanes[&job.claim.model];
        if lane.lookahead {
            let room = schedule::running_room(lane.model.concurrency.max(1) as usize, self.cap);
            let mut ready = lane
                .ready
                .lock()
                .map_err(|_| anyhow::anyhow!("ready queue poisoned"))?;
            let running = lane.in_flight - 1 - ready.len();
            if schedule::waits_ready(running, ready.len(), room, lane.lookahead()) {
                ready.push_back(job);
                return Ok(());
            }
        }
        self.start(job)
    }

    /// Runs an attempt on a pool thread; afterwards the thread takes its lane's ready job, if
    /// any, before reporting — so the coordinator, seeing the report, knows it was taken.
    fn start(&mut self, job: AttemptJob) -> Result<()> {
        let tx = self.tx.clone();
        let stop = self.stop.clone();
        let ready = self.lanes[&job.claim.model].ready.clone();
        self.pool.spawn(self.in_flight, move || {
            let mut job = job;
            loop {
                let finish = run_attempt(&job, &stop);
                let next = ready.lock().ok().and_then(|mut r| r.pop_front());
                let _ = tx.send(Done {
                    claim: job.claim,
                    finish,
                });
                match next {
                    Some(n) => job = n,
                    None => break,
                }
            }
        })
    }

    pub(super) fn rubric(&mut self, id: i64) -> Result<Arc<crate::grading::Rubric>> {
        if let Some(r) = self.rubrics.get(&id) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.store.rubric(id)?);
        self.rubrics.insert(id, r.clone());
        Ok(r)
    }
}

/// One attempt, on a pool thread.
fn run_attempt(job: &AttemptJob, stop: &StopSignal) -> Finish {
    if stop.level() > 0 {
        // Claimed but never started: back to pending, not charged.
        return Finish::new(Outcome::Interrupted, 0).error("runner stopped by a signal");
    }
    // A panic must still report, or the coordinator would wait for it forever.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| attempt::execute(job, stop)))
        .unwrap_or_else(|_| {
            Finish::new(Outcome::Crash, 0).error("internal error: the attempt panicked")
        })
}

/// Takes a paced lane's share of its rate for this claim's estimated tokens.
fn pace(lane: &mut Lane, claim: &Claim) {
    let Some(pacer) = lane.pacer.as_mut() else {
        return;
    };
    let chars = claim.prompt.chars().count()
        + claim
            .parent_output
            .as_ref()
            .map_or(0, |o| o.chars().count());
    // A grade job sends the rubric, never its item's own options.
    let tokens = match claim.rubric_id {
        Some(_) => pacer.estimate(chars),
        None => pacer.estimate_item(chars, &claim.options),
    };
    pacer.take(tokens);
    lane.estimates.insert(claim.job_id, tokens);
    log::debug!(
        "{}: paced at {}; next request not before {}",
        claim.model,
        pacer.describe(),
        human_secs(
            pacer
                .ready_at()
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        )
    );
}
