//! A model's lane: its settings, its endpoints with their in-flight counts and rest periods,
//! and what it has done in this run.

use indicatif::ProgressBar;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::attempt::AttemptJob;
use crate::models::ModelConfig;

/// Attempts shorter than this (moving average) make a lane "fast": it keeps its next job
/// claimed and ready, so a finishing attempt thread starts it without waiting for the
/// coordinator's round trip. Slower lanes (any real model call) never do.
pub const FAST_ATTEMPT_MS: f64 = 100.0;

/// The first rest after an endpoint was unreachable; it doubles up to `MAX_REST`.
const FIRST_REST: Duration = Duration::from_secs(2);
const MAX_REST: Duration = Duration::from_secs(30);

pub struct Endpoint {
    pub url: String,
    pub in_flight: usize,
    rest: Duration,
    rest_until: Option<Instant>,
    down_since: Option<Instant>,
}

/// How an attempt's end changed its endpoint's standing.
pub enum Reach {
    Same,
    /// Unreachable after being fine: resting for this long.
    Down(Duration),
    /// Reachable again after being down.
    Up,
}

pub struct Lane {
    pub model: Arc<ModelConfig>,
    pub timeout: Duration,
    pub endpoints: Vec<Endpoint>,
    pub in_flight: usize,
    /// No claim is tried before this (nothing runnable was found).
    pub idle_until: Instant,
    /// Why the lane stopped taking work, if it did.
    pub stopped: Option<String>,
    /// With `--watch` the lane keeps probing a long outage; it is reported once.
    pub outage_reported: bool,
    pub done: u64,
    pub failed: u64,
    /// Start of each attempt in flight, by job id: the oldest is shown in progress.
    pub started: BTreeMap<i64, Instant>,
    pub bar: Option<ProgressBar>,
    /// Claimed jobs waiting for a slot of this lane (only while `lookahead`, at most one per
    /// slot); taken by the attempt thread that frees a slot, or started by the coordinator.
    pub ready: Arc<Mutex<VecDeque<AttemptJob>>>,
    /// Whether this lane keeps a job ready (decided by the coordinator).
    pub lookahead: bool,
    /// Moving average of attempt durations (ms) and how many were seen.
    pub avg_ms: f64,
    pub seen: u64,
    /// When this lane last started an attempt: lanes that share an endpoint take turns.
    pub last_claim: Option<Instant>,
}

impl Lane {
    pub fn new(model: ModelConfig, timeout: Duration) -> Lane {
        let endpoints = model
            .effective_endpoints()
            .into_iter()
            .map(|url| Endpoint {
                url,
                in_flight: 0,
                rest: Duration::ZERO,
                rest_until: None,
                down_since: None,
            })
            .collect();
        Lane {
            model: Arc::new(model),
            timeout,
            endpoints,
            in_flight: 0,
            idle_until: Instant::now(),
            stopped: None,
            outage_reported: false,
            done: 0,
            failed: 0,
            started: BTreeMap::new(),
            bar: None,
            ready: Arc::new(Mutex::new(VecDeque::new())),
            lookahead: false,
            avg_ms: 0.0,
            seen: 0,
            last_claim: None,
        }
    }

    /// Takes new settings (from `models set` while a `--watch` runner lives) when the lane is
    /// idle; endpoints that stay keep their rest state.
    pub fn reconfigure(&mut self, model: ModelConfig, timeout: Duration) {
        if self.in_flight > 0 || (*self.model == model && self.timeout == timeout) {
            return;
        }
        let fresh = Lane::new(model, timeout);
        let mut old = std::mem::take(&mut self.endpoints);
        self.endpoints = fresh
            .endpoints
            .into_iter()
            .map(|e| match old.iter().position(|o| o.url == e.url) {
                Some(i) => old.swap_remove(i),
                None => e,
            })
            .collect();
        self.model = fresh.model;
        self.timeout = timeout;
    }

    /// One endpoint per free slot, the least busy first, so work spreads evenly. `busy` gives
    /// the attempts in flight on an endpoint counted against this lane's concurrency: its own,
    /// plus those of the variants that send the same served model there.
    pub fn free_slots(
        &self,
        now: Instant,
        cap: usize,
        busy: &dyn Fn(&Endpoint) -> usize,
    ) -> Vec<String> {
        if self.stopped.is_some() || now < self.idle_until {
            return Vec::new();
        }
        let per = self.per_endpoint();
        // An endpoint back from a rest gets one probe, not its full concurrency.
        let mut load: Vec<(usize, usize, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.rest_until.is_none_or(|t| now >= t))
            .map(|(i, e)| (busy(e), i, if e.down_since.is_some() { 1 } else { per }))
            .collect();
        let mut slots = Vec::new();
        while slots.len() < cap {
            let best = load
                .iter_mut()
                .filter(|(n, _, max)| n < max)
                .min_by_key(|(n, i, _)| (*n, *i));
            let Some((n, i, _)) = best else { break };
            slots.push(self.endpoints[*i].url.clone());
            *n += 1;
        }
        slots
    }

    /// Attempts at once per endpoint: the concurrency, and the jobs kept ready.
    pub fn per_endpoint(&self) -> usize {
        self.model.concurrency.max(1) as usize + self.lookahead()
    }

    /// Records a successful attempt's duration.
    pub fn observe(&mut self, ms: i64) {
        self.avg_ms = if self.seen == 0 {
            ms as f64
        } else {
            0.8 * self.avg_ms + 0.2 * ms as f64
        };
        self.seen += 1;
    }

    /// How many jobs this lane keeps ready while `lookahead`: per slot, about 20 ms of work
    /// (1 to 8 jobs), so the coordinator can commit results in groups without a slot idling.
    pub fn lookahead(&self) -> usize {
        if !self.lookahead {
            return 0;
        }
        let per_slot = (20.0 / self.avg_ms.max(0.1)).clamp(1.0, 8.0) as usize;
        self.model.concurrency.max(1) as usize * per_slot
    }

    pub fn endpoint_mut(&mut self, url: &str) -> Option<&mut Endpoint> {
        self.endpoints.iter_mut().find(|e| e.url == url)
    }

    pub fn started(&mut self, job_id: i64, url: &str) {
        self.in_flight += 1;
        self.started.insert(job_id, Instant::now());
        if let Some(e) = self.endpoint_mut(url) {
            e.in_flight += 1;
        }
    }

    /// Records an attempt's end; says when its endpoint went down or came back.
    pub fn ended(&mut self, job_id: i64, url: &str, reachable: bool) -> Reach {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.started.remove(&job_id);
        let now = Instant::now();
        let Some(e) = self.endpoint_mut(url) else {
            return Reach::Same;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        if reachable {
            let was_down = e.down_since.is_some();
            e.rest = Duration::ZERO;
            e.rest_until = None;
            e.down_since = None;
            return if was_down { Reach::Up } else { Reach::Same };
        }
        // Attempts sent together fail together: one outage doubles the rest once.
        if e.rest_until.is_some_and(|t| now < t) {
            return Reach::Same;
        }
        e.rest = (e.rest * 2).clamp(FIRST_REST, MAX_REST);
        e.rest_until = Some(now + e.rest);
        if e.down_since.is_none() {
            e.down_since = Some(now);
            return Reach::Down(e.rest);
        }
        Reach::Same
    }

    /// The endpoints down for longer than `limit`, when every endpoint of the lane is.
    pub fn unreachable_past(&self, limit: Duration) -> Option<Vec<String>> {
        let now = Instant::now();
        let all_down = self
            .endpoints
            .iter()
            .all(|e| e.down_since.is_some_and(|t| now.duration_since(t) >= limit));
        all_down.then(|| self.endpoints.iter().map(|e| e.url.clone()).collect())
    }

    /// When the next resting endpoint may take work again.
    pub fn next_rest_end(&self) -> Option<Instant> {
        self.endpoints.iter().filter_map(|e| e.rest_until).min()
    }

    pub fn oldest_age(&self) -> Option<Duration> {
        self.started.values().min().map(|t| t.elapsed())
    }

    pub fn refresh_bar(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.done + self.failed);
            let oldest = self
                .oldest_age()
                .map(|d| format!(", oldest {}", crate::util::human_secs(d.as_secs_f64())))
                .unwrap_or_default();
            let state = match &self.stopped {
                Some(why) => format!(" — stopped: {why}"),
                None => String::new(),
            };
            bar.set_message(format!(
                "{} done, {} failed, {} in flight{oldest}{state}",
                self.done, self.failed, self.in_flight
            ));
        }
    }
}
