//! Start-up and rescue: the state line, the orphans of dead runners back in the queue (at
//! start and every half lease), and a lane for every model with pending work in scope.

use super::*;

impl Coordinator<'_> {
    /// One line of what was found, then the orphans of dead runners back in the queue.
    pub(super) fn startup(&mut self) -> Result<()> {
        if self.opts.max_cost.is_some() {
            self.summary.spent = crate::report::cost::spent(self.store, &self.opts.filter)?;
        }
        let counts = self.store.state_counts(&self.opts.filter)?;
        let orphans = reaper::find_orphans(self.store, Some(self.runner_id))?;
        let n = |s: JobState| counts.get(&s).copied().unwrap_or(0);
        log::info!(
            "runner {} found {} pending, {} running ({} orphaned), {} done, {} failed",
            self.runner_id,
            n(JobState::Pending),
            n(JobState::Running),
            orphans.iter().filter(|o| self.in_scope(o)).count(),
            n(JobState::Done),
            n(JobState::Failed)
        );
        self.reap_now(orphans)?;
        self.refresh_lanes()?;
        if self.opts.max_cost.is_some() && !self.lanes.values().any(|l| l.model.priced()) {
            log::warn!(
                "--max-cost counts nothing here: no model in scope has prices (`llmbatch models set NAME --price-in USD --price-out USD`)"
            );
        }
        if self.opts.cache {
            self.answer_from_cache()?;
        }
        Ok(())
    }

    /// Every half lease: the orphans of dead runners back in the queue, then lanes for new
    /// models and for jobs put back by a reap or `resume`. A database that cannot answer just
    /// now is asked again within a tick.
    pub(super) fn rescue(&mut self) -> Result<()> {
        let found = reaper::find_orphans(self.store, Some(self.runner_id));
        match self.soft(found)? {
            Some(orphans) => {
                let reaped = self.reap_now(orphans);
                self.soft(reaped)?;
            }
            None => self.next_reap = Instant::now() + TICK,
        }
        let refreshed = self.refresh_lanes();
        self.soft(refreshed)?;
        Ok(())
    }

    /// Reaps when `found` holds orphans (judged again as they are put back).
    fn reap_now(&mut self, found: Vec<Orphan>) -> Result<()> {
        self.next_reap = Instant::now() + (self.opts.lease / 2).max(Duration::from_millis(500));
        if found.is_empty() {
            return Ok(());
        }
        let reaped = reaper::reap(self.store, Some(self.runner_id))?;
        for (o, state) in &reaped {
            log::warn!(
                "reaped job {} ({}): {}; back to {}",
                o.job.job_id,
                o.job.model,
                o.reason,
                state.as_str()
            );
            if *state == JobState::Failed && self.in_scope(o) {
                self.summary.failed += 1;
            }
        }
        Ok(())
    }

    fn in_scope(&self, o: &Orphan) -> bool {
        self.opts.filter.covers(&o.job.batch, &o.job.model)
    }

    /// Opens a lane for every model with pending work in scope; an idle lane takes new
    /// settings (`models set` while a `--watch` runner lives).
    pub(super) fn refresh_lanes(&mut self) -> Result<()> {
        let names = self.store.pending_models(&self.opts.filter)?;
        for name in names {
            let Some(lane) = self.lanes.get_mut(&name) else {
                self.open_lane(name)?;
                continue;
            };
            if lane.in_flight == 0 {
                let config = self.store.model(&name)?;
                let timeout = crate::timeouts::effective(self.store, &config)?;
                lane.reconfigure(config, timeout);
            } else if lane.model.timeout_auto {
                // `--timeout auto` follows the advice as successes come in; new claims
                // get it, attempts in flight keep theirs.
                lane.timeout = crate::timeouts::effective(self.store, &lane.model)?;
            }
        }
        Ok(())
    }

    fn open_lane(&mut self, name: String) -> Result<()> {
        let config = self.store.model(&name)?;
        if !config.configured {
            log::info!(
                "model {name} is not configured: using Ollama at {} (see `llmbatch models set`)",
                config.effective_endpoints().join(", ")
            );
        }
        let timeout = crate::timeouts::effective(self.store, &config)?;
        let mut lane = Lane::new(config, timeout);
        if let Some(multi) = &self.multi {
            let total = self.store.open_jobs(&self.opts.filter, &name)?;
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>16.bold} [{bar:30}] {pos}/{len} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(name.clone());
            lane.bar = Some(bar);
        }
        self.lanes.insert(name, lane);
        Ok(())
    }

    /// Whether any job in scope may still run: pending (not in a stopped lane, and not waiting
    /// on a parent that failed, or that is pending where this run will never take it: out of
    /// scope or in a stopped lane) or running under another runner.
    pub(super) fn work_left(&self) -> Result<bool> {
        let stopped: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.stopped.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        self.store.work_left(&self.opts.filter, &stopped)
    }
}
