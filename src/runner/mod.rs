//! `run`: the coordinator. It alone writes results: it claims jobs per lane, hands each
//! attempt to a pool thread (which runs a child process), and records what comes back —
//! finishes and the next claims in one transaction. It never blocks on a model.

mod accounting;
mod cache;
mod heartbeat;
mod lane;
mod pace;
mod pool;
pub mod signals;

use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::attempt::{self, AttemptJob};
use crate::db::{ClaimParams, Filter, FinishParams, NewRunner, RecordAndClaimParams, Store};
use crate::domain::{self, Claim, Finish, JobState, Next, Outcome};
use crate::exec::StopSignal;
use crate::reaper::{self, Orphan};
use crate::util::human_secs;
use lane::{End, Lane, Reach};

/// Attempts at once over all lanes when `--jobs` is not given.
const DEFAULT_JOBS: usize = 64;

/// Which lane plans a claim first: fewest attempts in flight, then the one served longest ago.
type TurnOrder = (usize, Option<Instant>);

/// The longest the coordinator sleeps before looking around again.
const TICK: Duration = Duration::from_secs(1);
/// How long a runner keeps trying a database it cannot reach (a PostgreSQL restart, a busy
/// file) before it stops with the error.
const DB_OUTAGE_LIMIT: Duration = Duration::from_secs(300);
/// How long results of a fast lane may gather before they are committed together.
const GATHER: Duration = Duration::from_millis(3);

#[derive(Debug, Clone, Copy)]
pub enum FailureLimit {
    Count(u64),
    Percent(f64),
}

impl FailureLimit {
    pub fn parse(text: &str) -> Result<FailureLimit> {
        let t = text.trim();
        let bad = || {
            anyhow::Error::new(crate::error::UsageError(format!(
                "invalid --max-failures {text:?}: expected a count (5) or a share (10%)"
            )))
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            Ok(FailureLimit::Percent(p))
        } else {
            Ok(FailureLimit::Count(t.parse().map_err(|_| bad())?))
        }
    }

    fn reached(self, failed: u64, attempts: u64) -> bool {
        match self {
            FailureLimit::Count(n) => failed >= n.max(1),
            // A share needs a few attempts to mean anything.
            FailureLimit::Percent(p) => {
                attempts >= 10 && failed as f64 * 100.0 >= p * attempts as f64
            }
        }
    }
}

pub struct RunOptions {
    pub db_path: PathBuf,
    pub filter: Filter,
    pub jobs: Option<usize>,
    pub limit: Option<u64>,
    pub lease: Duration,
    pub kill_grace: Duration,
    pub retry_base: Duration,
    pub max_runtime: Option<Duration>,
    pub max_failures: Option<FailureLimit>,
    pub unavailable_limit: Duration,
    pub max_cost: Option<f64>,
    pub watch: bool,
    pub poll: Duration,
    pub progress: bool,
    /// `--cache`: answer jobs from earlier identical requests before claiming any.
    pub cache: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub done: u64,
    /// Of `done`, the jobs answered from the cache.
    pub cached: u64,
    pub failed: u64,
    pub retried: u64,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub requeued: u64,
    pub discarded: u64,
    pub signal: Option<i32>,
    pub halted_on_failures: bool,
    /// Lanes stopped because every endpoint stayed unreachable or throttling, or the quota
    /// ran out: (model, message).
    pub stopped_lanes: Vec<(String, String)>,
    /// Attempts the servers throttled (not charged).
    pub throttled: u64,
    /// Recorded cost in scope (USD), when `--max-cost` is set.
    pub spent: f64,
    /// `--max-cost` was reached: claims stopped.
    pub cost_capped: bool,
    pub elapsed: Duration,
}

struct Done {
    claim: Claim,
    finish: Finish,
}

struct Coordinator<'a> {
    store: &'a dyn Store,
    opts: RunOptions,
    runner_id: i64,
    lanes: BTreeMap<String, Lane>,
    pool: pool::Pool,
    cap: usize,
    in_flight: usize,
    claimed: u64,
    stop: Arc<StopSignal>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    rubrics: HashMap<i64, Arc<crate::grading::Rubric>>,
    multi: Option<MultiProgress>,
    summary: Summary,
    started: Instant,
    next_reap: Instant,
    heartbeat: Option<heartbeat::Heartbeat>,
    /// Since when the heartbeat has gone unrenewed for over a lease: claims are paused.
    stale_since: Option<Instant>,
    /// Since when the database has failed every pass (busy or unreachable).
    db_trouble_since: Option<Instant>,
}

/// Runs jobs in scope until none is left (or a stop condition), then reports what it did.
pub fn run(store: &dyn Store, opts: RunOptions) -> Result<Summary> {
    let runner_id = register(store)?;
    let stop = Arc::new(StopSignal::default());
    let signals = signals::SignalWatch::install(stop.clone())?;
    let heartbeat = heartbeat::Heartbeat::start(store.reopen()?, runner_id, opts.lease)?;
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let mut coord = Coordinator {
        store,
        runner_id,
        lanes: BTreeMap::new(),
        pool: pool::Pool::new(opts.jobs.unwrap_or(DEFAULT_JOBS).clamp(1, 512)),
        cap: opts.jobs.unwrap_or(DEFAULT_JOBS).clamp(1, 512),
        in_flight: 0,
        claimed: 0,
        stop,
        tx,
        rx,
        rubrics: HashMap::new(),
        multi: opts
            .progress
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        summary: Summary::default(),
        started,
        next_reap: started,
        heartbeat: Some(heartbeat),
        stale_since: None,
        db_trouble_since: None,
        opts,
    };
    crate::logging::set_bars(coord.multi.clone());
    let mut result = coord.startup().and_then(|_| coord.work(&signals));
    if let Err(e) = &result {
        log::error!("stopping after an error: {e:#}");
        coord.abandon();
    }
    if result.is_ok() && coord.summary.signal.is_none() {
        // A signal that landed after the last look still decides the exit code.
        coord.summary.signal = signals.received();
    }
    if result.is_ok() && coord.in_flight > 0 {
        result = Err(anyhow::anyhow!("internal error: attempts left in flight"));
    }
    crate::logging::set_bars(None);
    drop(coord.heartbeat.take());
    let reason = match (&result, coord.summary.signal) {
        (Err(_), _) => "error",
        (_, Some(_)) => "interrupted",
        _ => "finished",
    };
    let _ = coord.store.stop_runner(runner_id, reason);
    if let Some(multi) = &coord.multi {
        let _ = multi.clear();
    }
    result?;
    let mut summary = std::mem::take(&mut coord.summary);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn register(store: &dyn Store) -> Result<i64> {
    let pid = std::process::id() as i64;
    store.register_runner(&NewRunner {
        host: crate::liveness::hostname(),
        pid,
        pid_start: crate::liveness::pid_start(pid),
        boot_id: crate::liveness::boot_id(),
    })
}

impl Coordinator<'_> {
    /// One line of what was found, then the orphans of dead runners back in the queue.
    fn startup(&mut self) -> Result<()> {
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

    /// Opens a lane for every model with pending work in scope.
    fn refresh_lanes(&mut self) -> Result<()> {
        let names = self.store.pending_models(&self.opts.filter)?;
        for name in names {
            if let Some(lane) = self.lanes.get_mut(&name) {
                if lane.in_flight == 0 {
                    let config = self.store.model(&name)?;
                    let timeout = crate::timeouts::effective(self.store, &config)?;
                    lane.reconfigure(config, timeout);
                } else if lane.model.timeout_auto {
                    // `--timeout auto` follows the advice as successes come in; new claims
                    // get it, attempts in flight keep theirs.
                    lane.timeout = crate::timeouts::effective(self.store, &lane.model)?;
                }
                continue;
            }
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
                let total = self.count_open(&name)?;
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
        }
        Ok(())
    }

    fn count_open(&self, model: &str) -> Result<u64> {
        self.store.open_jobs(&self.opts.filter, model)
    }

    fn work(&mut self, signals: &signals::SignalWatch) -> Result<()> {
        let mut pending: Vec<Done> = Vec::new();
        loop {
            if let Some(sig) = signals.received() {
                self.summary.signal = Some(sig);
            }
            let arrived: Vec<Done> = self.rx.try_iter().collect();
            for done in arrived {
                self.receive(done, &mut pending);
            }
            self.gather(&mut pending);
            let claiming = self.may_claim();
            if claiming && Instant::now() >= self.next_reap {
                let found = reaper::find_orphans(self.store, Some(self.runner_id));
                match self.soft(found)? {
                    Some(orphans) => {
                        let reaped = self.reap_now(orphans);
                        self.soft(reaped)?;
                    }
                    None => self.next_reap = Instant::now() + TICK,
                }
                // New models, and jobs put back by a reap or `resume`, get their lanes now.
                let refreshed = self.refresh_lanes();
                self.soft(refreshed)?;
            }
            // Results stay in `pending` while the database cannot take them (busy, or
            // PostgreSQL restarting), and are recorded on a later pass.
            let recorded = self.record_and_claim(&mut pending, claiming);
            let dispatched = self.soft(recorded)?.unwrap_or(0);
            self.check_unreachable();
            for lane in self.lanes.values() {
                lane.refresh_bar();
            }
            // Results not yet recorded (a busy database) keep the runner here until they are.
            if self.in_flight == 0 && dispatched == 0 && pending.is_empty() {
                if let Some(since) = self.stale_since {
                    // Claims wait for the heartbeat to come back, within the outage bound.
                    if since.elapsed() > DB_OUTAGE_LIMIT {
                        anyhow::bail!(
                            "the heartbeat could not be renewed for {}: stopping",
                            human_secs(DB_OUTAGE_LIMIT.as_secs_f64())
                        );
                    }
                    if self.summary.signal.is_none() && self.stop.level() == 0 {
                        self.nap(TICK);
                        continue;
                    }
                }
                let left = self.work_left();
                if !claiming || !self.soft(left)?.unwrap_or(true) {
                    if self.opts.watch && claiming {
                        self.nap(self.opts.poll);
                        let refreshed = self.refresh_lanes();
                        self.soft(refreshed)?;
                        continue;
                    }
                    return Ok(());
                }
                let refreshed = self.refresh_lanes();
                self.soft(refreshed)?;
            }
            match self.rx.recv_timeout(self.wait_time()) {
                Ok(done) => self.receive(done, &mut pending),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("the coordinator holds a sender")
                }
            }
        }
    }

    /// After an error: kill what is in flight and try once to put those jobs back.
    fn abandon(&mut self) {
        self.stop.request(StopSignal::KILL);
        let until = Instant::now() + self.opts.kill_grace + Duration::from_secs(2);
        let mut pending = Vec::new();
        while self.in_flight > 0 {
            match self
                .rx
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(done) => self.receive(done, &mut pending),
                Err(_) => break,
            }
        }
        if let Err(e) = self.record_and_claim(&mut pending, false) {
            log::warn!("could not record the attempts in flight: {e:#}");
        }
        // Whatever this runner still holds (results lost with the error, claims not started)
        // goes back to pending now, uncharged, rather than waiting to be reaped as `lost`.
        let released = self.store.release_runner(self.runner_id);
        match released {
            Ok(0) => {}
            Ok(n) => log::warn!("{n} job(s) this runner held went back to pending"),
            Err(e) => {
                log::warn!("could not put this runner's jobs back ({e:#}); the next run reaps them")
            }
        }
    }

    /// Sleeps up to `d`, waking early for a stop request.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while self.stop.level() == 0 && Instant::now() < until {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
            );
        }
    }

    /// While the fast lane still has half its ready work queued, lets results gather for up
    /// to `GATHER` before recording them: fewer, larger commits, no slot left idle.
    fn gather(&mut self, pending: &mut Vec<Done>) {
        let ahead = |c: &Self| {
            c.lanes.values().any(|l| l.lookahead)
                && c.lanes
                    .values()
                    .filter(|l| l.lookahead)
                    .all(|l| l.ready.lock().map_or(0, |r| r.len()) * 2 >= l.lookahead())
        };
        if pending.is_empty() || self.stop.level() > 0 || !ahead(self) {
            return;
        }
        let until = Instant::now() + GATHER;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(done) => self.receive(done, pending),
                Err(_) => break,
            }
            if !ahead(self) {
                break;
            }
        }
    }

    /// Whether new work may be claimed: no signal, runtime, failure limit or --limit reached.
    fn may_claim(&mut self) -> bool {
        if self.summary.signal.is_some() || self.stop.level() > 0 {
            return false;
        }
        // A runner whose heartbeat has not been renewed for a lease may have been reaped by
        // another host: it takes no more work until the heartbeat is renewed again.
        if let Some(hb) = &self.heartbeat {
            let stale = hb.stale_for(self.opts.lease);
            if stale.is_some() != self.stale_since.is_some() {
                self.stale_since = stale.is_some().then(Instant::now);
                match &stale {
                    Some(why) => log::warn!(
                        "heartbeat not renewed for over {} ({why}): stopped claiming, since this runner's jobs may have been reaped",
                        human_secs(self.opts.lease.as_secs_f64())
                    ),
                    None => log::warn!("heartbeat renewed again: claiming again"),
                }
            }
            if stale.is_some() {
                return false;
            }
        }
        if let Some(max) = self.opts.max_runtime {
            if self.started.elapsed() >= max {
                return false;
            }
        }
        if let Some(limit) = self.opts.max_failures {
            if limit.reached(self.summary.failed_attempts, self.summary.attempts) {
                if !self.summary.halted_on_failures {
                    log::warn!(
                        "{} of {} attempts failed: --max-failures reached, no more claims",
                        self.summary.failed_attempts,
                        self.summary.attempts
                    );
                }
                self.summary.halted_on_failures = true;
                return false;
            }
        }
        if let Some(cap) = self.opts.max_cost {
            if self.summary.spent >= cap {
                if !self.summary.cost_capped {
                    log::warn!(
                        "recorded cost in scope ${:.4} reached --max-cost ${cap}: no more claims",
                        self.summary.spent
                    );
                }
                self.summary.cost_capped = true;
                return false;
            }
        }
        self.opts.limit.is_none_or(|l| self.claimed < l)
    }

    /// How long to wait for a result before looking again.
    fn wait_time(&self) -> Duration {
        let now = Instant::now();
        let mut until = now + TICK;
        let claiming = self.summary.signal.is_none() && self.stop.level() == 0;
        let mut wakes: Vec<Instant> = Vec::new();
        for lane in self.lanes.values().filter(|l| l.stopped.is_none()) {
            wakes.push(lane.idle_until);
            wakes.extend(lane.next_wake());
        }
        if claiming {
            wakes.push(self.next_reap);
        }
        // Instants already past mean "nothing to wait for" (a full lane), not "wake at once".
        for t in wakes.into_iter().filter(|t| *t > now) {
            until = until.min(t);
        }
        until
            .saturating_duration_since(now)
            .max(Duration::from_millis(5))
    }

    /// What comes next for each finished job (done, retried, failed), its attempt marked
    /// interrupted first when the runner is stopping.
    fn decide(&self, results: &mut [Done]) -> Vec<Next> {
        let retry_base = self.opts.retry_base.as_millis() as i64;
        let stopping = self.summary.signal.is_some() || self.stop.level() > 0;
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

    /// Records finished attempts and claims replacements in one transaction, then starts them.
    fn record_and_claim(&mut self, results: &mut Vec<Done>, claiming: bool) -> Result<usize> {
        // The slots of these results were freed when they arrived (`receive`), so their
        // replacements are claimed in this same transaction.
        let mut dispatched = self.start_ready()?;
        // Results not yet counted must still stop the claims at --max-failures.
        let claiming =
            claiming && !self.failures_reached_with(results) && !self.cost_reached_with(results);
        let plan = if claiming {
            self.plan_claims()
        } else {
            Vec::new()
        };
        if results.is_empty() && plan.is_empty() {
            return Ok(dispatched);
        }
        let decided = self.decide(results);
        let timeouts: Vec<f64> = plan
            .iter()
            .map(|(model, _)| self.lanes[model].timeout.as_secs_f64())
            .collect();
        let recorded = self.store.record_and_claim(&RecordAndClaimParams {
            runner_id: self.runner_id,
            lease_ms: self.opts.lease.as_millis() as i64,
            filter: &self.opts.filter,
            finishes: results
                .iter()
                .zip(&decided)
                .map(|(done, &next)| FinishParams {
                    claim: &done.claim,
                    finish: &done.finish,
                    next,
                })
                .collect(),
            claims: plan
                .iter()
                .zip(&timeouts)
                .map(|((model, slots), &timeout_s)| ClaimParams {
                    model,
                    endpoints: slots,
                    timeout_s,
                })
                .collect(),
        })?;
        let decided: Vec<(Next, bool)> = decided.into_iter().zip(recorded.kept).collect();
        let claims: Vec<(String, usize, Vec<Claim>)> = plan
            .into_iter()
            .zip(recorded.claims)
            .map(|((model, slots), got)| (model, slots.len(), got))
            .collect();
        for (done, (next, kept)) in results.drain(..).zip(decided) {
            self.account(done, next, kept);
        }
        for (model, wanted, got) in claims {
            if !got.is_empty() {
                if let Some(lane) = self.lanes.get_mut(&model) {
                    lane.idle_pause = lane::FIRST_IDLE_PAUSE;
                }
            }
            if got.len() < wanted {
                self.idle_lane(&model)?;
            }
            for claim in got {
                self.dispatch(claim)?;
                dispatched += 1;
            }
        }
        Ok(dispatched)
    }

    /// A ready job whose lane has a free running slot (its attempts ended meanwhile without
    /// taking it) is started by the coordinator: a ready job never waits for nothing.
    fn start_ready(&mut self) -> Result<usize> {
        let mut started = 0;
        let limit = self.cap;
        let mut jobs = Vec::new();
        for lane in self.lanes.values() {
            let Ok(mut ready) = lane.ready.lock() else {
                continue;
            };
            let room = (lane.model.concurrency.max(1) as usize).min(limit);
            while !ready.is_empty() && lane.in_flight - ready.len() < room {
                jobs.extend(ready.pop_front());
            }
        }
        for job in jobs {
            self.start(job)?;
            started += 1;
        }
        Ok(started)
    }

    /// Keeps a job ready only for one fast lane with one endpoint, and only when neither
    /// --limit nor --max-failures asks for exact counts (a ready job may start before the
    /// coordinator has counted the result that just ended).
    fn update_lookahead(&mut self) {
        let single = self.lanes.len() == 1;
        let exact = self.opts.limit.is_some() || self.opts.max_failures.is_some();
        for lane in self.lanes.values_mut() {
            let fast = lane.seen >= 5 && lane.avg_ms < lane::FAST_ATTEMPT_MS;
            // A paced or throttled lane starts each job when its pacer and limits allow.
            lane.lookahead =
                single && !exact && fast && lane.endpoints.len() == 1 && !lane.held_back();
        }
    }

    /// Free slots per lane (each an endpoint), within the global cap and --limit.
    fn plan_claims(&self) -> Vec<(String, Vec<String>)> {
        let now = Instant::now();
        let extra: usize = self.lanes.values().map(|l| l.lookahead()).sum();
        let mut room = self
            .cap
            .saturating_add(extra)
            .saturating_sub(self.in_flight);
        if let Some(limit) = self.opts.limit {
            room = room.min(limit.saturating_sub(self.claimed) as usize);
        }
        // Variants of one served model on one server share its concurrency there: attempts
        // in flight per (endpoint, backend, served model), over every lane.
        let shared_key = |lane: &Lane, url: &str| {
            (
                url.to_string(),
                lane.model.backend.as_str(),
                lane.model.served().to_string(),
            )
        };
        let mut shared: HashMap<(String, &str, String), usize> = HashMap::new();
        for lane in self.lanes.values() {
            for e in lane.endpoints.iter().filter(|e| !e.url.is_empty()) {
                *shared.entry(shared_key(lane, &e.url)).or_default() += e.busy(now);
            }
        }
        let mut free: Vec<(&String, Vec<String>, TurnOrder)> = self
            .lanes
            .iter()
            .map(|(name, lane)| {
                let busy = |e: &lane::Endpoint| {
                    if e.url.is_empty() {
                        e.busy(now)
                    } else {
                        shared.get(&shared_key(lane, &e.url)).copied().unwrap_or(0)
                    }
                };
                let order = (lane.in_flight, lane.last_claim);
                (name, lane.free_slots(now, room, &busy), order)
            })
            .filter(|(_, slots, _)| !slots.is_empty())
            .collect();
        // One slot per lane per round, the lanes with the fewest attempts in flight first, so no
        // lane can take the whole cap from the others; among those, the one served longest ago,
        // so variants competing for a shared endpoint take turns.
        free.sort_by_key(|(_, _, order)| *order);
        let free: Vec<(&String, Vec<String>)> = free.into_iter().map(|(n, s, _)| (n, s)).collect();
        let mut plan: Vec<(String, Vec<String>)> = free
            .iter()
            .map(|(n, _)| ((*n).clone(), Vec::new()))
            .collect();
        let mut round = 0;
        while room > 0 {
            let mut gave = false;
            for ((name, slots), (_, taken)) in free.iter().zip(plan.iter_mut()) {
                if room > 0 && round < slots.len() {
                    let lane = &self.lanes[*name];
                    let url = &slots[round];
                    // A slot another variant took this round is no longer free.
                    let endpoint = lane.endpoints.iter().find(|e| e.url == *url);
                    if let (false, Some(e)) = (url.is_empty(), endpoint) {
                        let n = shared.entry(shared_key(lane, url)).or_default();
                        if *n >= lane.max_on(e) {
                            continue;
                        }
                        *n += 1;
                    }
                    taken.push(url.clone());
                    room -= 1;
                    gave = true;
                }
            }
            if !gave {
                break;
            }
            round += 1;
        }
        plan.retain(|(_, slots)| !slots.is_empty());
        plan
    }

    /// Nothing runnable now: look again when the earliest backoff ends (or within a tick).
    fn idle_lane(&mut self, model: &str) -> Result<()> {
        let next = self.store.next_runnable_in(&self.opts.filter, model)?;
        if let Some(lane) = self.lanes.get_mut(model) {
            let wait = match next {
                Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(TICK),
                // No clock will bring work, but what runs elsewhere (another runner, a parent)
                // may end any moment and retry or free a job: look again soon, then less often.
                _ => lane.idle_pause,
            };
            lane.idle_pause = (lane.idle_pause * 2).min(TICK);
            lane.idle_until = Instant::now() + wait;
            // Its turn at a shared endpoint is used up: the others go first next time.
            lane.last_claim = Some(Instant::now());
        }
        Ok(())
    }

    fn dispatch(&mut self, claim: Claim) -> Result<()> {
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
        if let Some(pacer) = lane.pacer.as_mut() {
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
            let room = (lane.model.concurrency.max(1) as usize).min(self.cap);
            let mut ready = lane
                .ready
                .lock()
                .map_err(|_| anyhow::anyhow!("ready queue poisoned"))?;
            let running = lane.in_flight - 1 - ready.len();
            if running >= room && ready.len() < lane.lookahead() {
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
                let finish = if stop.level() > 0 {
                    // Claimed but never started: back to pending, not charged.
                    Finish::new(Outcome::Interrupted, 0).error("runner stopped by a signal")
                } else {
                    // A panic must still report, or the coordinator would wait for it forever.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        attempt::execute(&job, &stop)
                    }))
                    .unwrap_or_else(|_| {
                        Finish::new(Outcome::Crash, 0).error("internal error: the attempt panicked")
                    })
                };
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

    fn rubric(&mut self, id: i64) -> Result<Arc<crate::grading::Rubric>> {
        if let Some(r) = self.rubrics.get(&id) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.store.rubric(id)?);
        self.rubrics.insert(id, r.clone());
        Ok(r)
    }

    /// Whether any job in scope may still run: pending (not in a stopped lane, and not waiting
    /// on a parent that failed, or that is pending where this run will never take it: out of
    /// scope or in a stopped lane) or running under another runner.
    fn work_left(&self) -> Result<bool> {
        let stopped: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.stopped.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        self.store.work_left(&self.opts.filter, &stopped)
    }

    /// A transient database error (see [`Self::db_trouble`]) becomes None; others stay errors.
    fn soft<T>(&mut self, r: Result<T>) -> Result<Option<T>> {
        match r {
            Ok(v) => {
                self.db_trouble_since = None;
                Ok(Some(v))
            }
            Err(e) if crate::db::is_transient(&e) => {
                self.db_trouble(e)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The database could not be used just now (a busy file, PostgreSQL restarting): what
    /// waits to be recorded stays in memory and a later pass tries again — for at most
    /// [`DB_OUTAGE_LIMIT`], after which the runner stops with the error.
    fn db_trouble(&mut self, e: anyhow::Error) -> Result<()> {
        let since = *self.db_trouble_since.get_or_insert_with(Instant::now);
        if since.elapsed() > DB_OUTAGE_LIMIT {
            return Err(e.context(format!(
                "the database stayed unavailable for {}",
                human_secs(DB_OUTAGE_LIMIT.as_secs_f64())
            )));
        }
        if crate::db::is_busy(&e) {
            log::warn!("database busy, will retry: {e:#}");
        } else {
            log::warn!("database unavailable, will retry: {e:#}");
            // Do not spin while it is down; the session reconnects with its own pauses.
            self.nap(Duration::from_millis(200));
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
