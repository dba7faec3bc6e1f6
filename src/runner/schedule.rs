//! The scheduler: which lanes claim how many jobs on which endpoints, how many jobs a fast lane
//! keeps ready, and how long the coordinator may wait. Plain data in, plain data out: no
//! processes, no store, no clock reads (`now` is passed in), so every rule is unit-tested here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Attempts shorter than this (moving average) make a lane "fast": it keeps its next job
/// claimed and ready, so a finishing attempt thread starts it without waiting for the
/// coordinator's round trip. Slower lanes (any real model call) never do.
pub const FAST_ATTEMPT_MS: f64 = 100.0;

/// A lane is judged fast only after this many successful attempts.
const FAST_AFTER: u64 = 5;

/// One endpoint of a lane, as the planner sees it.
#[derive(Debug, Clone)]
pub struct EndpointView<'a> {
    /// Empty for a command lane (no server).
    pub url: &'a str,
    /// Slots this lane uses there: attempts in flight and answered ones still holding theirs.
    pub busy: usize,
    /// Attempts at once this lane may have there (its AIMD limit, one probe after an outage,
    /// plus the jobs kept ready).
    pub max: usize,
    /// Resting (unreachable or throttled) until then.
    pub rest_until: Option<Instant>,
}

/// One lane (a model), as the planner sees it.
#[derive(Debug, Clone)]
pub struct LaneView<'a> {
    pub model: &'a str,
    /// Backend and served model: variants that send the same served model to one server share
    /// its concurrency there.
    pub served: (&'a str, &'a str),
    pub in_flight: usize,
    /// When this lane last started an attempt: lanes that share an endpoint take turns.
    pub last_claim: Option<Instant>,
    /// A stopped lane (unreachable, throttled, quota) takes no work.
    pub stopped: bool,
    /// Nothing runnable was found: no claim is tried before this.
    pub idle_until: Instant,
    /// For a paced lane (`--rpm` / `--tpm`): when its pacer allows the next request.
    pub paced_until: Option<Instant>,
    pub endpoints: Vec<EndpointView<'a>>,
}

/// Jobs to claim for one model, one endpoint per job.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub model: String,
    pub endpoints: Vec<String>,
}

/// Attempts a server holds for one served model, over every lane sending it there.
type SharedKey<'a> = (&'a str, &'a str, &'a str);

fn shared_key<'a>(lane: &LaneView<'a>, url: &'a str) -> SharedKey<'a> {
    (url, lane.served.0, lane.served.1)
}

/// Slots free for new claims over all lanes: the global cap plus the jobs fast lanes keep
/// ready, less what is in flight, and never past `--limit` (`limit_left`: claims it allows).
pub fn room(cap: usize, ready_depth: usize, in_flight: usize, limit_left: Option<u64>) -> usize {
    let room = cap.saturating_add(ready_depth).saturating_sub(in_flight);
    match limit_left {
        Some(left) => room.min(usize::try_from(left).unwrap_or(usize::MAX)),
        None => room,
    }
}

/// Plans the next claims: free slots per lane (each an endpoint), at most `room` in all.
/// One slot per lane per round, the lanes with the fewest attempts in flight first, so no lane
/// can take the whole cap from the others; among those, the one served longest ago, so variants
/// competing for a shared endpoint take turns.
pub fn plan_claims(lanes: &[LaneView], mut room: usize, now: Instant) -> Vec<Wanted> {
    let mut shared: HashMap<SharedKey, usize> = HashMap::new();
    for lane in lanes {
        for e in lane.endpoints.iter().filter(|e| !e.url.is_empty()) {
            *shared.entry(shared_key(lane, e.url)).or_default() += e.busy;
        }
    }
    let mut free: Vec<(&LaneView, Vec<usize>)> = lanes
        .iter()
        .map(|lane| {
            let busy = |e: &EndpointView| match e.url {
                "" => e.busy,
                url => shared.get(&shared_key(lane, url)).copied().unwrap_or(0),
            };
            (lane, free_slots(lane, now, room, &busy))
        })
        .filter(|(_, slots)| !slots.is_empty())
        .collect();
    free.sort_by_key(|(lane, _)| (lane.in_flight, lane.last_claim));
    let mut plan: Vec<Wanted> = free
        .iter()
        .map(|(lane, _)| Wanted {
            model: lane.model.to_string(),
            endpoints: Vec::new(),
        })
        .collect();
    let mut round = 0;
    while room > 0 {
        let mut gave = false;
        for ((lane, slots), taken) in free.iter().zip(plan.iter_mut()) {
            let Some(&i) = slots.get(round).filter(|_| room > 0) else {
                continue;
            };
            let e = &lane.endpoints[i];
            // A slot another variant took this round is no longer free.
            if !e.url.is_empty() {
                let n = shared.entry(shared_key(lane, e.url)).or_default();
                if *n >= e.max {
                    continue;
                }
                *n += 1;
            }
            taken.endpoints.push(e.url.to_string());
            room -= 1;
            gave = true;
        }
        if !gave {
            break;
        }
        round += 1;
    }
    plan.retain(|w| !w.endpoints.is_empty());
    plan
}

/// One endpoint (its index) per free slot of a lane, at most `cap`, the least busy first, so
/// work spreads evenly. `busy` gives the attempts on an endpoint counted against this lane's
/// concurrency: its own, plus those of the variants that send the same served model there.
fn free_slots(
    lane: &LaneView,
    now: Instant,
    cap: usize,
    busy: &dyn Fn(&EndpointView) -> usize,
) -> Vec<usize> {
    if lane.stopped || now < lane.idle_until {
        return Vec::new();
    }
    // A paced lane sends one request when its pacer allows, never a group at once.
    let cap = match lane.paced_until {
        Some(t) if now < t => return Vec::new(),
        Some(_) => cap.min(1),
        None => cap,
    };
    let mut load: Vec<(usize, usize, usize)> = lane
        .endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.rest_until.is_none_or(|t| now >= t))
        .map(|(i, e)| (busy(e), i, e.max))
        .collect();
    let mut slots = Vec::new();
    while slots.len() < cap {
        let best = load
            .iter_mut()
            .filter(|(n, _, max)| n < max)
            .min_by_key(|(n, i, _)| (*n, *i));
        let Some((n, i, _)) = best else { break };
        slots.push(*i);
        *n += 1;
    }
    slots
}

/// What decides whether a lane keeps jobs claimed ahead of its free slots.
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    /// Successful attempts seen and their moving average duration.
    pub seen: u64,
    pub avg_ms: f64,
    pub endpoints: usize,
    /// A server pushes back or pacing applies: every start must go through the plan.
    pub held_back: bool,
}

/// Keeps a job ready only for one fast lane with one endpoint, and only when neither --limit
/// nor --max-failures asks for exact counts (a ready job may start before the coordinator has
/// counted the result that just ended).
pub fn keeps_ready(speed: Speed, only_lane: bool, exact_counts: bool) -> bool {
    let fast = speed.seen >= FAST_AFTER && speed.avg_ms < FAST_ATTEMPT_MS;
    only_lane && !exact_counts && fast && speed.endpoints == 1 && !speed.held_back
}

/// How many jobs a lane that keeps some ready holds: per slot about 20 ms of work (1 to 8
/// jobs), so the coordinator can commit results in groups without a slot idling.
pub fn ready_depth(concurrency: usize, avg_ms: f64) -> usize {
    let per_slot = (20.0 / avg_ms.max(0.1)).clamp(1.0, 8.0) as usize;
    concurrency.max(1) * per_slot
}

/// Attempts at once a lane may run: its concurrency, within the global cap.
pub fn running_room(concurrency: usize, cap: usize) -> usize {
    concurrency.max(1).min(cap)
}

/// How many of a lane's `ready` jobs to start now: those for which a running slot is free
/// (`in_flight` counts the ready jobs too).
pub fn ready_to_start(in_flight: usize, ready: usize, room: usize) -> usize {
    let running = in_flight.saturating_sub(ready);
    ready.min(room.saturating_sub(running))
}

/// Whether a newly claimed job waits in its lane's ready queue rather than starting: its lane
/// is running at `room` (not counting this job) and holds fewer than `depth` ready.
pub fn waits_ready(running: usize, ready: usize, room: usize, depth: usize) -> bool {
    running >= room && ready < depth
}

/// How long to wait for a result before looking again: until the earliest of `wakes` (a rest
/// ending, the pacer, a lane's backoff, the next reap) still ahead, and at most `tick`.
/// Instants already past mean "nothing to wait for" (a full lane), not "wake at once".
pub fn wait_time(
    now: Instant,
    tick: Duration,
    wakes: impl IntoIterator<Item = Instant>,
) -> Duration {
    let until = wakes
        .into_iter()
        .filter(|t| *t > now)
        .fold(now + tick, Instant::min);
    until
        .saturating_duration_since(now)
        .max(Duration::from_millis(5))
}

/// The first rest of a lane that found nothing runnable while no backoff says when work comes.
pub const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(25);

/// How long a lane that found nothing runnable rests: until its earliest backoff ends
/// (`next_runnable_ms`, from the store), at most `tick`. With no backoff, no clock will bring
/// work, but what runs elsewhere (another runner, a parent job) may end any moment and retry
/// or free a job: its `pause`, which [`next_idle_pause`] doubles up to `tick`.
pub fn idle_wait(next_runnable_ms: Option<i64>, pause: Duration, tick: Duration) -> Duration {
    match next_runnable_ms {
        Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(tick),
        _ => pause.min(tick),
    }
}

/// The pause after an idle look with nothing runnable: twice the last, at most `tick`. A
/// claim that takes a job starts it over at [`FIRST_IDLE_PAUSE`].
pub fn next_idle_pause(pause: Duration, tick: Duration) -> Duration {
    (pause * 2).min(tick)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn endpoint(url: &str, busy: usize, max: usize) -> EndpointView<'_> {
        EndpointView {
            url,
            busy,
            max,
            rest_until: None,
        }
    }

    fn lane<'a>(model: &'a str, now: Instant, endpoints: Vec<EndpointView<'a>>) -> LaneView<'a> {
        LaneView {
            model,
            served: ("ollama", model),
            in_flight: endpoints.iter().map(|e| e.busy).sum(),
            last_claim: None,
            stopped: false,
            idle_until: now,
            paced_until: None,
            endpoints,
        }
    }

    fn slots(plan: &[Wanted], model: &str) -> Vec<String> {
        plan.iter()
            .find(|w| w.model == model)
            .map(|w| w.endpoints.clone())
            .unwrap_or_default()
    }

    #[test]
    fn free_slots_fill_each_endpoint_to_its_limit_least_busy_first() {
        let now = Instant::now();
        let l = lane(
            "m",
            now,
            vec![endpoint("http://a", 1, 3), endpoint("http://b", 0, 2)],
        );
        let plan = plan_claims(&[l], 64, now);
        assert_eq!(
            slots(&plan, "m"),
            ["http://b", "http://a", "http://b", "http://a"]
        );
        let full = lane("m", now, vec![endpoint("http://a", 3, 3)]);
        assert!(plan_claims(&[full], 64, now).is_empty());
    }

    #[test]
    fn a_command_lane_has_slots_up_to_its_concurrency() {
        let now = Instant::now();
        let l = lane("cat", now, vec![endpoint("", 1, 4)]);
        assert_eq!(slots(&plan_claims(&[l], 64, now), "cat"), ["", "", ""]);
    }

    #[test]
    fn room_bounds_the_plan_and_lanes_take_turns() {
        let now = Instant::now();
        let busy = lane("busy", now, vec![endpoint("http://a", 2, 8)]);
        let idle = lane("idle", now, vec![endpoint("http://b", 0, 8)]);
        let plan = plan_claims(&[busy, idle], 3, now);
        // The lane with fewer attempts in flight goes first in each round.
        assert_eq!(slots(&plan, "idle"), ["http://b", "http://b"]);
        assert_eq!(slots(&plan, "busy"), ["http://a"]);
        assert_eq!(plan[0].model, "idle");
        assert!(plan_claims(&[lane("m", now, vec![endpoint("", 0, 4)])], 0, now).is_empty());
    }

    #[test]
    fn variants_of_one_served_model_share_an_endpoint_and_take_turns() {
        let now = Instant::now();
        let mut a = lane("a", now, vec![endpoint("http://x", 1, 2)]);
        let mut b = lane("b", now, vec![endpoint("http://x", 0, 2)]);
        a.served = ("ollama", "llama3");
        b.served = ("ollama", "llama3");
        b.last_claim = Some(now);
        a.in_flight = 0;
        // One slot left on the shared endpoint: `a`, served longest ago, takes it.
        let plan = plan_claims(&[a.clone(), b.clone()], 64, now);
        assert_eq!(plan.len(), 1);
        assert_eq!(slots(&plan, "a"), ["http://x"]);
        // Different served models do not share.
        b.served = ("ollama", "qwen");
        let plan = plan_claims(&[a, b], 64, now);
        assert_eq!(slots(&plan, "b"), ["http://x", "http://x"]);
    }

    #[test]
    fn a_lane_that_found_no_open_job_gets_no_claim_until_its_backoff_ends() {
        let now = Instant::now();
        let mut idle = lane("idle", now, vec![endpoint("", 0, 2)]);
        idle.idle_until = now + S;
        let busy = lane("busy", now, vec![endpoint("", 0, 2)]);
        let plan = plan_claims(&[idle.clone(), busy], 64, now);
        assert_eq!(plan.len(), 1);
        assert_eq!(slots(&plan, "busy").len(), 2);
        assert_eq!(slots(&plan_claims(&[idle], 64, now + S), "idle").len(), 2);
    }

    #[test]
    fn stopped_lanes_and_resting_or_throttled_endpoints_are_skipped() {
        let now = Instant::now();
        let mut stopped = lane("stopped", now, vec![endpoint("", 0, 2)]);
        stopped.stopped = true;
        // `a` rests (unreachable, or throttled with a Retry-After); `b` was throttled and
        // its AIMD limit went down to 1; `c` is fine.
        let mut m = lane(
            "m",
            now,
            vec![
                endpoint("http://a", 0, 4),
                endpoint("http://b", 0, 1),
                endpoint("http://c", 0, 4),
            ],
        );
        m.endpoints[0].rest_until = Some(now + S);
        let plan = plan_claims(&[stopped, m.clone()], 64, now);
        assert_eq!(plan.len(), 1);
        assert_eq!(
            slots(&plan, "m"),
            ["http://b", "http://c", "http://c", "http://c", "http://c"]
        );
        // Once its rest is over, `a` takes work again.
        assert_eq!(slots(&plan_claims(&[m], 64, now + S), "m").len(), 9);
    }

    #[test]
    fn a_paced_lane_claims_one_job_when_its_pacer_allows() {
        let now = Instant::now();
        let mut paced = lane("paced", now, vec![endpoint("http://a", 0, 4)]);
        paced.paced_until = Some(now + S);
        assert!(plan_claims(&[paced.clone()], 64, now).is_empty());
        assert_eq!(
            slots(&plan_claims(&[paced], 64, now + S), "paced"),
            ["http://a"]
        );
    }

    #[test]
    fn room_is_the_cap_plus_ready_jobs_less_in_flight_within_the_limit() {
        assert_eq!(room(4, 0, 1, None), 3);
        assert_eq!(room(4, 6, 1, None), 9);
        assert_eq!(room(4, 0, 9, None), 0);
        assert_eq!(room(4, 0, 0, Some(2)), 2);
        assert_eq!(room(4, 0, 0, Some(0)), 0);
    }

    #[test]
    fn only_one_fast_lane_on_one_endpoint_without_exact_counts_keeps_jobs_ready() {
        let fast = Speed {
            seen: 5,
            avg_ms: 10.0,
            endpoints: 1,
            held_back: false,
        };
        assert!(keeps_ready(fast, true, false));
        assert!(!keeps_ready(fast, false, false), "several lanes");
        assert!(!keeps_ready(fast, true, true), "--limit or --max-failures");
        assert!(
            !keeps_ready(Speed { seen: 4, ..fast }, true, false),
            "too few seen"
        );
        assert!(!keeps_ready(
            Speed {
                avg_ms: FAST_ATTEMPT_MS,
                ..fast
            },
            true,
            false
        ));
        assert!(!keeps_ready(
            Speed {
                endpoints: 2,
                ..fast
            },
            true,
            false
        ));
        assert!(!keeps_ready(
            Speed {
                held_back: true,
                ..fast
            },
            true,
            false
        ));
    }

    #[test]
    fn ready_depth_is_one_to_eight_jobs_per_slot() {
        assert_eq!(ready_depth(2, 50.0), 2, "slow: one per slot");
        assert_eq!(ready_depth(2, 5.0), 8, "20 ms of 5 ms jobs");
        assert_eq!(ready_depth(2, 0.0), 16, "at most eight per slot");
        assert_eq!(ready_depth(0, 5.0), 4, "concurrency counts as at least one");
    }

    #[test]
    fn ready_jobs_start_only_into_free_running_slots() {
        assert_eq!(running_room(4, 64), 4);
        assert_eq!(running_room(8, 2), 2);
        assert_eq!(running_room(0, 64), 1);
        // 2 running + 3 ready, room 4: two start.
        assert_eq!(ready_to_start(5, 3, 4), 2);
        assert_eq!(ready_to_start(7, 3, 4), 0);
        assert_eq!(ready_to_start(1, 1, 4), 1);
        assert!(waits_ready(4, 0, 4, 4));
        assert!(!waits_ready(3, 0, 4, 4), "a free slot: start now");
        assert!(!waits_ready(4, 4, 4, 4), "the ready queue is full");
    }

    #[test]
    fn wait_time_is_the_nearest_wake_ahead_within_the_tick() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(wait_time(now, S, []), S);
        let pacer = now + ms(300);
        let rest = now + ms(700);
        let reap = now + ms(500);
        assert_eq!(wait_time(now, S, [rest, pacer, reap]), ms(300));
        assert_eq!(wait_time(now, S, [now + 5 * S]), S, "never past the tick");
        // A wake already past (a full lane's backoff) does not make it spin.
        assert_eq!(wait_time(now + S, S, [now, now + S]), S);
        assert_eq!(wait_time(now, S, [now + ms(1)]), ms(5), "at least 5 ms");
    }

    #[test]
    fn an_idle_lane_waits_for_its_next_backoff_within_the_tick() {
        let p = FIRST_IDLE_PAUSE;
        assert_eq!(idle_wait(Some(250), p, S), Duration::from_millis(250));
        assert_eq!(idle_wait(Some(5000), p, S), S);
        assert_eq!(idle_wait(Some(0), S, S), S);
        assert_eq!(idle_wait(None, S, S), S);
    }

    #[test]
    fn with_no_backoff_an_idle_lane_looks_again_soon_then_less_often() {
        let mut pause = FIRST_IDLE_PAUSE;
        let mut waits = Vec::new();
        for _ in 0..8 {
            waits.push(idle_wait(None, pause, S).as_millis());
            pause = next_idle_pause(pause, S);
        }
        assert_eq!(waits, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        // A backoff still decides when it says work comes.
        assert_eq!(idle_wait(Some(300), FIRST_IDLE_PAUSE, S).as_millis(), 300);
    }
}
