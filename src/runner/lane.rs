//! A model's lane: its settings, its endpoints with their in-flight counts and rest periods,
//! and what it has done in this run.

use indicatif::ProgressBar;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::pace::Pacer;
use super::schedule::{self, EndpointView, LaneView};
use crate::attempt::AttemptJob;
use crate::models::ModelConfig;

/// The first rest after an endpoint was unreachable; it doubles up to `MAX_REST`.
const FIRST_REST: Duration = Duration::from_secs(2);
const MAX_REST: Duration = Duration::from_secs(30);
/// The rest after a throttle that named no Retry-After (Ollama's "server busy"): its queue
/// drains in seconds; the halved concurrency, not a growing rest, keeps the pressure off.
const THROTTLE_REST: Duration = Duration::from_secs(1);
/// The longest an attempt holds its slot after a throttle: one long Retry-After must not slow
/// the endpoint for minutes after it ended.
const MAX_HOLD: Duration = Duration::from_secs(10);

pub struct Endpoint {
    pub url: String,
    pub in_flight: usize,
    /// Attempts allowed at once (AIMD): halved on a throttle (at least 1), one more after a
    /// run of that many answers without one, up to the model's concurrency.
    pub limit: usize,
    /// Answers without a throttle since the limit last changed.
    ok_run: usize,
    rest: Duration,
    rest_until: Option<Instant>,
    down_since: Option<Instant>,
    /// Since when every answer of this endpoint was a throttle.
    throttled_since: Option<Instant>,
    /// After a throttle, until the limit is back to the model's concurrency, each attempt
    /// holds its slot for this long from its start even when answered sooner: a rate limit
    /// counts requests per period, and fast answers would otherwise let a small concurrency
    /// send far more requests than the period allows (Little's law).
    hold: Duration,
    /// Starts of answered attempts still holding their slot.
    held: VecDeque<Instant>,
}

impl Endpoint {
    fn new(url: String, concurrency: usize) -> Endpoint {
        Endpoint {
            url,
            in_flight: 0,
            limit: concurrency,
            ok_run: 0,
            rest: Duration::ZERO,
            rest_until: None,
            down_since: None,
            throttled_since: None,
            hold: Duration::ZERO,
            held: VecDeque::new(),
        }
    }

    /// Slots in use: attempts in flight and answered attempts still holding theirs.
    pub fn busy(&self, now: Instant) -> usize {
        self.in_flight + self.held.iter().filter(|t| **t + self.hold > now).count()
    }
}

/// How an attempt ended, for its endpoint's standing.
pub enum End {
    /// The server answered (whatever the answer).
    Answered,
    /// The server could not be reached.
    Unreachable,
    /// The server pushed back, asking to wait this long (Retry-After) if it said.
    Throttled(Option<Duration>),
}

/// How an attempt's end changed its endpoint's standing.
pub enum Reach {
    Same,
    /// Unreachable after being fine: resting for this long.
    Down(Duration),
    /// Reachable again after being down.
    Up,
    /// Throttled: resting this long (`by_server`: as its Retry-After asked), the allowed
    /// concurrency going from the first number to the second.
    Throttled {
        rest: Duration,
        by_server: bool,
        limit: (usize, usize),
    },
}

/// Endpoints that kept a lane from working past the limit: all of them, down or throttled.
pub struct Blocked {
    pub urls: Vec<String>,
    /// True when at least one was answering, but only with throttles.
    pub throttled: bool,
}

pub struct Lane {
    pub model: Arc<ModelConfig>,
    pub timeout: Duration,
    pub endpoints: Vec<Endpoint>,
    pub in_flight: usize,
    /// No claim is tried before this (nothing runnable was found).
    pub idle_until: Instant,
    /// How long the next such wait is when no backoff says when work comes: it doubles
    /// from [`schedule::FIRST_IDLE_PAUSE`] up to a second, and starts over once a claim takes a job.
    pub idle_pause: Duration,
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
    /// Throttled attempts in this run.
    pub throttled: u64,
    /// `--rpm` / `--tpm` pacing, if the model has either.
    pub pacer: Option<Pacer>,
    /// The tokens each paced attempt in flight was estimated at, by job id.
    pub estimates: BTreeMap<i64, u64>,
    /// Output tokens and time (ms, request to last byte) of this run's streamed answers.
    pub stream_tokens: i64,
    pub stream_ms: f64,
    /// When this lane last started an attempt: lanes that share an endpoint take turns.
    pub last_claim: Option<Instant>,
}

impl Lane {
    pub fn new(model: ModelConfig, timeout: Duration) -> Lane {
        let concurrency = model.concurrency.max(1) as usize;
        let endpoints = model
            .effective_endpoints()
            .into_iter()
            .map(|url| Endpoint::new(url, concurrency))
            .collect();
        Lane {
            timeout,
            endpoints,
            in_flight: 0,
            idle_until: Instant::now(),
            idle_pause: schedule::FIRST_IDLE_PAUSE,
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
            throttled: 0,
            pacer: Pacer::for_model(&model),
            estimates: BTreeMap::new(),
            stream_tokens: 0,
            stream_ms: 0.0,
            last_claim: None,
            model: Arc::new(model),
        }
    }

    /// Counts a finished streamed answer toward the tokens/s the progress bar shows.
    pub fn count_tokens(&mut self, f: &crate::domain::Finish) {
        let Some(m) = &f.metrics else { return };
        if let (Some(_), Some(n), Some(ms)) = (m.ttft_ms, m.output_tokens, m.e2e_ms) {
            self.stream_tokens += n;
            self.stream_ms += ms;
        }
    }

    /// Takes new settings (from `models set` while a `--watch` runner lives) when the lane is
    /// idle; endpoints that stay keep their rest state.
    pub fn reconfigure(&mut self, model: ModelConfig, timeout: Duration) {
        if self.in_flight > 0 || (*self.model == model && self.timeout == timeout) {
            return;
        }
        let fresh = Lane::new(model, timeout);
        let was = self.model.concurrency.max(1) as usize;
        let now = fresh.model.concurrency.max(1) as usize;
        let mut old = std::mem::take(&mut self.endpoints);
        self.endpoints = fresh
            .endpoints
            .into_iter()
            .map(|e| match old.iter().position(|o| o.url == e.url) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    // An endpoint at full speed follows a new --concurrency; a throttled one
                    // keeps its lower limit and grows back to it.
                    if kept.limit >= was {
                        kept.limit = now;
                    }
                    kept
                }
                None => e,
            })
            .collect();
        // A pacer keeps its spacing unless the limits changed.
        if (self.model.rpm, self.model.tpm) != (fresh.model.rpm, fresh.model.tpm) {
            self.pacer = fresh.pacer;
        }
        self.model = fresh.model;
        self.timeout = timeout;
    }

    /// The lane as the scheduler sees it at `now`.
    pub fn view<'a>(&'a self, name: &'a str, now: Instant) -> LaneView<'a> {
        LaneView {
            model: name,
            served: (self.model.backend.as_str(), self.model.served()),
            in_flight: self.in_flight,
            last_claim: self.last_claim,
            stopped: self.stopped.is_some(),
            idle_until: self.idle_until,
            paced_until: self.pacer.as_ref().map(Pacer::ready_at),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointView {
                    url: &e.url,
                    busy: e.busy(now),
                    max: self.max_on(e),
                    rest_until: e.rest_until,
                })
                .collect(),
        }
    }

    /// Attempts at once this lane may have on an endpoint: its concurrency and the jobs kept
    /// ready; one probe for an endpoint back from a rest; the AIMD limit for a throttled one.
    pub fn max_on(&self, e: &Endpoint) -> usize {
        if e.down_since.is_some() {
            return 1;
        }
        let concurrency = self.model.concurrency.max(1) as usize;
        e.limit.clamp(1, concurrency) + self.lookahead()
    }

    /// Whether a server of this lane is pushing back (or pacing applies): then every start
    /// must go through `free_slots`, never through a ready queue.
    pub fn held_back(&self) -> bool {
        let concurrency = self.model.concurrency.max(1) as usize;
        self.pacer.is_some()
            || self
                .endpoints
                .iter()
                .any(|e| e.limit < concurrency || e.throttled_since.is_some())
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

    /// How many jobs this lane keeps ready: none unless `lookahead`.
    pub fn lookahead(&self) -> usize {
        if !self.lookahead {
            return 0;
        }
        schedule::ready_depth(self.model.concurrency.max(1) as usize, self.avg_ms)
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

    /// Records an attempt's end; says when its endpoint went down, came back or was throttled.
    pub fn ended(&mut self, job_id: i64, url: &str, end: End) -> Reach {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = Instant::now();
        let began = self.started.remove(&job_id).unwrap_or(now);
        let concurrency = self.model.concurrency.max(1) as usize;
        let Some(e) = self.endpoint_mut(url) else {
            return Reach::Same;
        };
        e.in_flight = e.in_flight.saturating_sub(1);
        let hold = e.hold;
        e.held.retain(|t| *t + hold > now);
        if !e.hold.is_zero() && began + e.hold > now {
            // Starts arrive nearly in order; an out-of-order one only frees its slot late.
            e.held.push_back(began);
        }
        let wait = match end {
            End::Answered => {
                let was_down = e.down_since.is_some();
                e.rest = Duration::ZERO;
                e.down_since = None;
                e.throttled_since = None;
                // A throttle's rest stands even if an answer sent before it arrives after it.
                if was_down {
                    e.rest_until = None;
                }
                e.ok_run += 1;
                if e.ok_run >= e.limit && e.limit < concurrency {
                    e.limit += 1;
                    e.ok_run = 0;
                }
                if e.limit >= concurrency {
                    e.hold = Duration::ZERO;
                    e.held.clear();
                }
                return if was_down { Reach::Up } else { Reach::Same };
            }
            End::Throttled(wait) => wait,
            End::Unreachable => return Self::down(e, now),
        };
        e.down_since = None;
        e.ok_run = 0;
        e.throttled_since.get_or_insert(now);
        let by_server = wait.is_some();
        let rest = wait.unwrap_or(THROTTLE_REST);
        e.hold = e.hold.max(rest).min(MAX_HOLD);
        let until = now + rest;
        // Attempts sent together are throttled together: one episode halves the limit once;
        // a later Retry-After can only lengthen the rest.
        if e.rest_until.is_some_and(|t| now < t) {
            if e.rest_until.is_some_and(|t| t < until) {
                e.rest_until = Some(until);
            }
            return Reach::Same;
        }
        e.rest_until = Some(until);
        let before = e.limit.min(concurrency);
        e.limit = (before / 2).max(1);
        Reach::Throttled {
            rest,
            by_server,
            limit: (before, e.limit),
        }
    }

    /// An endpoint found unreachable: it rests, longer each time while the outage lasts.
    fn down(e: &mut Endpoint, now: Instant) -> Reach {
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

    /// The endpoints, when every one of them has been down or only throttling for longer
    /// than `limit`.
    pub fn blocked_past(&self, limit: Duration) -> Option<Blocked> {
        let now = Instant::now();
        let since = |e: &Endpoint| e.down_since.or(e.throttled_since);
        let all = self
            .endpoints
            .iter()
            .all(|e| since(e).is_some_and(|t| now.duration_since(t) >= limit));
        all.then(|| Blocked {
            urls: self.endpoints.iter().map(|e| e.url.clone()).collect(),
            throttled: self.endpoints.iter().any(|e| e.throttled_since.is_some()),
        })
    }

    /// When the lane may next have something to do: a resting endpoint back, or the pacer.
    pub fn next_wake(&self) -> Option<Instant> {
        let rest = self
            .endpoints
            .iter()
            .filter_map(|e| e.rest_until)
            .chain(
                self.endpoints
                    .iter()
                    .filter_map(|e| e.held.iter().map(|t| *t + e.hold).min()),
            )
            .min();
        let pace = self.pacer.as_ref().map(Pacer::ready_at);
        rest.into_iter().chain(pace).min()
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
            let rate = if self.stream_ms > 0.0 {
                format!(
                    ", {:.1} tok/s",
                    self.stream_tokens as f64 * 1000.0 / self.stream_ms
                )
            } else {
                String::new()
            };
            let state = match &self.stopped {
                Some(why) => format!(" — stopped: {why}"),
                None => String::new(),
            };
            let throttled = if self.throttled > 0 {
                format!(", {} throttled", self.throttled)
            } else {
                String::new()
            };
            bar.set_message(format!(
                "{} done, {} failed, {} in flight{throttled}{rate}{oldest}{state}",
                self.done, self.failed, self.in_flight
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Finish, Metrics, Outcome};

    #[test]
    fn the_scheduler_sees_a_throttled_endpoint_resting_at_half_its_limit() {
        let mut model = ModelConfig::unconfigured("m");
        model.concurrency = 4;
        let mut lane = Lane::new(model, Duration::from_secs(60));
        let url = lane.endpoints[0].url.clone();
        let now = Instant::now();
        assert_eq!(lane.view("m", now).endpoints[0].max, 4);
        lane.started(1, &url);
        assert_eq!(lane.view("m", now).endpoints[0].busy, 1);
        lane.ended(1, &url, End::Throttled(Some(Duration::from_secs(5))));
        let later = Instant::now();
        let view = lane.view("m", later);
        assert_eq!(view.endpoints[0].max, 2);
        assert!(view.endpoints[0].rest_until.is_some_and(|t| t > later));
        assert!(schedule::plan_claims(&[view], 64, later).is_empty());
    }

    #[test]
    fn the_bar_shows_tokens_per_second_of_streamed_answers() {
        let mut lane = Lane::new(ModelConfig::unconfigured("m"), Duration::from_secs(60));
        lane.bar = Some(ProgressBar::hidden());
        lane.refresh_bar();
        assert!(!lane.bar.as_ref().unwrap().message().contains("tok/s"));
        let mut f = Finish::new(Outcome::Ok, 2000);
        f.metrics = Some(Metrics {
            ttft_ms: Some(500.0),
            output_tokens: Some(30),
            e2e_ms: Some(2000.0),
            ..Metrics::default()
        });
        lane.count_tokens(&f);
        // An answer that was not streamed (no TTFT) is not counted.
        let mut whole = Finish::new(Outcome::Ok, 1000);
        whole.metrics = Some(Metrics {
            output_tokens: Some(1000),
            e2e_ms: Some(1000.0),
            ..Metrics::default()
        });
        lane.count_tokens(&whole);
        lane.refresh_bar();
        let msg = lane.bar.as_ref().unwrap().message();
        assert!(msg.contains(" in flight, 15.0 tok/s"), "{msg}");
    }
}
