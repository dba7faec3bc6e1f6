//! Stop rules: when the runner takes no more work (a signal, a stale heartbeat, --max-runtime,
//! --max-failures, --max-cost, --limit) and when a lane stops (every endpoint unreachable or
//! throttling past --unavailable-limit). The thresholds are plain data, unit-tested here.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
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

/// What the run has recorded (and is about to record) that the limits are judged on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    pub attempts: u64,
    /// Charged attempts that did not succeed.
    pub failed_attempts: u64,
    /// Recorded cost in scope (USD).
    pub spent: f64,
}

/// `--max-failures` and `--max-cost`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub max_failures: Option<FailureLimit>,
    pub max_cost: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Halt {
    Failures,
    Cost,
}

impl Limits {
    /// The first limit the tally reaches, if any: failures, then cost.
    pub fn halt(&self, t: &Tally) -> Option<Halt> {
        if self
            .max_failures
            .is_some_and(|l| l.reached(t.failed_attempts, t.attempts))
        {
            return Some(Halt::Failures);
        }
        if self.max_cost.is_some_and(|cap| t.spent >= cap) {
            return Some(Halt::Cost);
        }
        None
    }
}

impl Coordinator<'_> {
    fn limits(&self) -> Limits {
        Limits {
            max_failures: self.opts.max_failures,
            max_cost: self.opts.max_cost,
        }
    }

    fn tally(&self) -> Tally {
        Tally {
            attempts: self.summary.attempts,
            failed_attempts: self.summary.failed_attempts,
            spent: self.summary.spent,
        }
    }

    /// Whether new work may be claimed: no signal, stale heartbeat, runtime, failure or cost
    /// limit, or --limit reached. Says so once when a limit stops the claims.
    pub(super) fn check_stop_rules(&mut self) -> bool {
        if self.stopping() || self.heartbeat_stale() {
            return false;
        }
        if let Some(max) = self.opts.max_runtime {
            if self.started.elapsed() >= max {
                return false;
            }
        }
        match self.limits().halt(&self.tally()) {
            Some(Halt::Failures) => {
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
            Some(Halt::Cost) => {
                if !self.summary.cost_capped {
                    log::warn!(
                        "recorded cost in scope ${:.4} reached --max-cost ${}: no more claims",
                        self.summary.spent,
                        self.opts.max_cost.unwrap_or_default()
                    );
                }
                self.summary.cost_capped = true;
                return false;
            }
            None => {}
        }
        self.opts.limit.is_none_or(|l| self.claimed < l)
    }

    /// Whether a signal arrived or a stop was requested.
    pub(super) fn stopping(&self) -> bool {
        self.summary.signal.is_some() || self.stop.level() > 0
    }

    /// A runner whose heartbeat has not been renewed for a lease may have been reaped by
    /// another host: it takes no more work until the heartbeat is renewed again.
    fn heartbeat_stale(&mut self) -> bool {
        let Some(hb) = &self.heartbeat else {
            return false;
        };
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
        stale.is_some()
    }

    /// Whether --max-failures or --max-cost is reached once these results, not yet counted,
    /// are counted too.
    pub(super) fn halts_with(&self, results: &[Done]) -> bool {
        let limits = self.limits();
        if limits.max_failures.is_none() && limits.max_cost.is_none() {
            return false;
        }
        let mut tally = self.tally();
        tally.attempts += results.len() as u64;
        tally.failed_attempts += results
            .iter()
            .filter(|d| d.finish.outcome.charged() && d.finish.outcome != Outcome::Ok)
            .count() as u64;
        if limits.max_cost.is_some() {
            tally.spent += results
                .iter()
                .filter_map(|d| {
                    let lane = self.lanes.get(&d.claim.model)?;
                    crate::report::cost::Usage::from_timings(d.finish.timings.as_ref())?
                        .cost(&lane.model)
                })
                .sum::<f64>();
        }
        limits.halt(&tally).is_some()
    }

    /// Stops lanes whose endpoints all stayed unreachable past the limit; their jobs stay pending.
    pub(super) fn stop_unreachable_lanes(&mut self) {
        for (name, lane) in self.lanes.iter_mut() {
            if lane.stopped.is_some() {
                continue;
            }
            let Some(blocked) = lane.blocked_past(self.opts.unavailable_limit) else {
                // Working again: a later outage is reported again.
                lane.outage_reported = false;
                continue;
            };
            let (what, hint) = describe_blocked(&blocked);
            let limit = human_secs(self.opts.unavailable_limit.as_secs_f64());
            // A daemon outlives the outage: it keeps probing (every 30 s at most).
            if self.opts.watch {
                if !lane.outage_reported {
                    log::error!("model {name}: {what} for {limit} — {hint} still trying (--watch)");
                    lane.outage_reported = true;
                }
                continue;
            }
            let msg = format!("model {name}: {what} for {limit} — {hint} its jobs stay pending");
            log::error!("{msg}");
            let why = if blocked.throttled {
                "throttled"
            } else {
                "unreachable"
            };
            lane.stopped = Some(why.into());
            self.summary.stopped_lanes.push((name.clone(), msg));
        }
    }
}

/// What kept a lane from working, and a hint for the person reading it.
fn describe_blocked(blocked: &lane::Blocked) -> (String, &'static str) {
    let urls = &blocked.urls;
    // A command lane has no server: what failed is starting its command.
    if urls.iter().all(|u| u.is_empty()) {
        (
            "its command could not be started".to_string(),
            "is the machine out of processes or files?",
        )
    } else if blocked.throttled {
        (
            format!("{} throttled every request (429/503 busy)", urls.join(", ")),
            "is the server overloaded, or its rate limit below --rpm/--tpm (or unset)?",
        )
    } else {
        (
            format!("{} unreachable", urls.join(", ")),
            "is the server running?",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_count_stops_at_that_many_and_at_least_one() {
        let limit = FailureLimit::parse("3").unwrap();
        assert_eq!(limit, FailureLimit::Count(3));
        assert!(!limit.reached(2, 2));
        assert!(limit.reached(3, 3));
        assert!(FailureLimit::Count(0).reached(1, 1));
        assert!(!FailureLimit::Count(0).reached(0, 5));
    }

    #[test]
    fn a_failure_share_needs_ten_attempts() {
        let limit = FailureLimit::parse(" 50% ").unwrap();
        assert_eq!(limit, FailureLimit::Percent(50.0));
        assert!(!limit.reached(9, 9), "nine attempts say nothing yet");
        assert!(limit.reached(5, 10));
        assert!(!limit.reached(4, 10));
    }

    #[test]
    fn bad_failure_limits_are_usage_errors() {
        for bad in ["", "-1", "lots", "101%", "-5%", "x%"] {
            let e = FailureLimit::parse(bad).unwrap_err();
            assert!(
                e.downcast_ref::<crate::error::UsageError>().is_some(),
                "{bad}"
            );
            assert_eq!(
                e.to_string(),
                format!("invalid --max-failures {bad:?}: expected a count (5) or a share (10%)")
            );
        }
    }

    #[test]
    fn limits_halt_on_failures_first_then_cost() {
        let none = Limits::default();
        let t = Tally {
            attempts: 10,
            failed_attempts: 10,
            spent: 99.0,
        };
        assert_eq!(none.halt(&t), None);
        let both = Limits {
            max_failures: Some(FailureLimit::Count(10)),
            max_cost: Some(1.0),
        };
        assert_eq!(both.halt(&t), Some(Halt::Failures));
        let fewer = Tally {
            failed_attempts: 9,
            ..t
        };
        assert_eq!(both.halt(&fewer), Some(Halt::Cost));
        let cheap = Tally {
            spent: 0.99,
            ..fewer
        };
        assert_eq!(both.halt(&cheap), None);
        assert_eq!(
            both.halt(&Tally {
                spent: 1.0,
                ..cheap
            }),
            Some(Halt::Cost)
        );
    }

    #[test]
    fn a_lane_blocked_by_its_servers_names_them() {
        let down = lane::Blocked {
            urls: vec!["http://a".into(), "http://b".into()],
            throttled: false,
        };
        assert_eq!(describe_blocked(&down).0, "http://a, http://b unreachable");
        let busy = lane::Blocked {
            throttled: true,
            ..down
        };
        assert_eq!(
            describe_blocked(&busy).0,
            "http://a, http://b throttled every request (429/503 busy)"
        );
        let command = lane::Blocked {
            urls: vec![String::new()],
            throttled: false,
        };
        assert_eq!(
            describe_blocked(&command).0,
            "its command could not be started"
        );
    }
}
