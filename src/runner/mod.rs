//! `run`: the coordinator. It alone writes results: it claims jobs per lane, hands each
//! attempt to a pool thread (which runs a child process), and records what comes back —
//! finishes and the next claims in one transaction. It never blocks on a model.
//!
//! Each pass of its loop (`Coordinator::work`) is a sequence of named steps, in files of
//! their own: take the results that came back (`handle_finished`, `accounting.rs`), check the
//! stop rules (`stop_rules.rs`), rescue the jobs of dead runners (`rescue.rs`), record the
//! results and claim what the scheduler plans in one store call (`claims.rs`, the pure
//! planner in `schedule.rs`), start the attempts (`spawn.rs`), then wait for the next result.

mod accounting;
mod cache;
mod claims;
mod heartbeat;
mod lane;
mod pace;
mod pool;
mod rescue;
mod schedule;
pub mod signals;
mod spawn;
mod stop_rules;

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
use schedule::Wanted;
pub use stop_rules::FailureLimit;

/// Attempts at once over all lanes when `--jobs` is not given.
const DEFAULT_JOBS: usize = 64;

/// The longest the coordinator sleeps before looking around again.
const TICK: Duration = Duration::from_secs(1);
/// How long a runner keeps trying a database it cannot reach (a PostgreSQL restart, a busy
/// file) before it stops with the error.
const DB_OUTAGE_LIMIT: Duration = Duration::from_secs(300);
/// How long results of a fast lane may gather before they are committed together.
const GATHER: Duration = Duration::from_millis(3);

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
    let mut coord = Coordinator::new(store, opts, runner_id, stop, heartbeat);
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
    coord.sign_off(&result);
    result?;
    let mut summary = std::mem::take(&mut coord.summary);
    summary.elapsed = coord.started.elapsed();
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

impl<'a> Coordinator<'a> {
    fn new(
        store: &'a dyn Store,
        opts: RunOptions,
        runner_id: i64,
        stop: Arc<StopSignal>,
        heartbeat: heartbeat::Heartbeat,
    ) -> Coordinator<'a> {
        let cap = opts.jobs.unwrap_or(DEFAULT_JOBS).clamp(1, 512);
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        Coordinator {
            store,
            runner_id,
            lanes: BTreeMap::new(),
            pool: pool::Pool::new(cap),
            cap,
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
        }
    }

    /// The runner's record says how it ended; the heartbeat and the bars stop.
    fn sign_off(&mut self, result: &Result<()>) {
        crate::logging::set_bars(None);
        drop(self.heartbeat.take());
        let reason = match (result, self.summary.signal) {
            (Err(_), _) => "error",
            (_, Some(_)) => "interrupted",
            _ => "finished",
        };
        let _ = self.store.stop_runner(self.runner_id, reason);
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

impl Coordinator<'_> {
    /// The coordinator's loop: one pass per result (or per wake), each a sequence of steps.
    fn work(&mut self, signals: &signals::SignalWatch) -> Result<()> {
        let mut pending: Vec<Done> = Vec::new();
        loop {
            if let Some(sig) = signals.received() {
                self.summary.signal = Some(sig);
            }
            self.handle_finished(&mut pending);
            let claiming = self.check_stop_rules();
            if claiming && Instant::now() >= self.next_reap {
                self.rescue()?;
            }
            // Results stay in `pending` while the database cannot take them (busy, or
            // PostgreSQL restarting), and are recorded on a later pass.
            let recorded = self.record_and_claim(&mut pending, claiming);
            let dispatched = self.soft(recorded)?.unwrap_or(0);
            self.stop_unreachable_lanes();
            for lane in self.lanes.values() {
                lane.refresh_bar();
            }
            // Results not yet recorded (a busy database) keep the runner here until they are.
            if self.in_flight == 0 && dispatched == 0 && pending.is_empty() {
                // The results just recorded may have reached a limit: judge it now, not a
                // tick later.
                let claiming = claiming && self.check_stop_rules();
                match self.when_idle(claiming)? {
                    Idle::Finished => return Ok(()),
                    Idle::LookAgain => continue,
                    Idle::Wait => {}
                }
            }
            self.wait_for_result(&mut pending);
        }
    }

    /// Takes in the results that came back since the last pass (letting a fast lane's gather).
    fn handle_finished(&mut self, pending: &mut Vec<Done>) {
        let arrived: Vec<Done> = self.rx.try_iter().collect();
        for done in arrived {
            self.receive(done, pending);
        }
        self.gather(pending);
    }

    /// Nothing in flight, nothing started, nothing to record: finish, or look again.
    fn when_idle(&mut self, claiming: bool) -> Result<Idle> {
        if let Some(since) = self.stale_since {
            // Claims wait for the heartbeat to come back, within the outage bound.
            if since.elapsed() > DB_OUTAGE_LIMIT {
                anyhow::bail!(
                    "the heartbeat could not be renewed for {}: stopping",
                    human_secs(DB_OUTAGE_LIMIT.as_secs_f64())
                );
            }
            if !self.stopping() {
                self.nap(TICK);
                return Ok(Idle::LookAgain);
            }
        }
        let left = self.work_left();
        if !claiming || !self.soft(left)?.unwrap_or(true) {
            if self.opts.watch && claiming {
                self.nap(self.opts.poll);
                let refreshed = self.refresh_lanes();
                self.soft(refreshed)?;
                return Ok(Idle::LookAgain);
            }
            return Ok(Idle::Finished);
        }
        let refreshed = self.refresh_lanes();
        self.soft(refreshed)?;
        Ok(Idle::Wait)
    }

    /// Waits for the next result, at most until something else may need doing.
    fn wait_for_result(&mut self, pending: &mut Vec<Done>) {
        match self.rx.recv_timeout(self.wait_time()) {
            Ok(done) => self.receive(done, pending),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the coordinator holds a sender")
            }
        }
    }

    /// How long to wait for a result before looking again: a lane's backoff, rest or pacer,
    /// or the next reap, whichever comes first, within a tick.
    fn wait_time(&self) -> Duration {
        let lanes = self.lanes.values().filter(|l| l.stopped.is_none());
        let wakes = lanes.flat_map(|l| std::iter::once(l.idle_until).chain(l.next_wake()));
        let reap = (!self.stopping()).then_some(self.next_reap);
        schedule::wait_time(Instant::now(), TICK, wakes.chain(reap))
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

/// What an idle pass leads to.
enum Idle {
    /// No work left in scope (or claims stopped): the run ends.
    Finished,
    /// Start the next pass at once (after a nap).
    LookAgain,
    /// Wait for a result or a wake as usual.
    Wait,
}
