//! The queue's contract, tested through the store traits only, so that every engine runs the
//! same tests: `store_conformance!(module_name, || -> (Guard, Box<dyn Store>))` instantiates
//! them for an engine, given a function opening an empty, migrated database (and a guard
//! that keeps it alive, e.g. a temp dir).

use crate::db::*;
use crate::domain::{Claim, Finish, JobKind, JobState, Next, Outcome};
use crate::grading::Rubric;

/// Runs every conformance test against the store `open` gives (one fresh store per test).
#[macro_export]
macro_rules! store_conformance {
    (@tests $open:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let (_guard, store) = ($open)();
                $crate::db::conformance::$test(&*store);
            }
        )*
    };
    ($name:ident, $open:expr) => {
        mod $name {
            $crate::store_conformance!(@tests $open;
                enqueue_is_idempotent,
                a_changed_item_is_reported_as_stored,
                claim_takes_each_job_once,
                claim_respects_the_filter,
                finish_is_fenced_by_the_lease_token,
                a_retry_waits_its_delay,
                a_grade_waits_for_its_parent,
                stuck_jobs_are_listed_with_their_runner,
                rescue_is_fenced_and_bounded,
                release_puts_back_what_a_runner_holds,
                resume_grants_attempts_once,
                renewed_leases_run_from_now,
                models_round_trip,
                unknown_ids_are_named,
                work_left_follows_the_queue,
            );
        }
    };
}

const MODEL: &str = "m";

fn enqueue(s: &dyn Store, batch: &str, ids: &[&str], models: &[String]) -> NewJobs {
    let tx = s.enqueue().unwrap();
    let items: Vec<NewItem> = ids
        .iter()
        .map(|id| NewItem {
            id,
            prompt: "p",
            vars: "{}",
            messages: None,
            options: None,
        })
        .collect();
    tx.add_items(batch, &items).unwrap();
    let jobs: Vec<(&str, &str, i64)> = ids
        .iter()
        .flat_map(|id| models.iter().map(move |m| (*id, m.as_str(), 1)))
        .collect();
    tx.add_jobs(batch, &jobs).unwrap();
    tx.commit().unwrap()
}

fn runner(s: &dyn Store) -> i64 {
    s.register_runner(&NewRunner {
        host: "conformance-host".into(),
        pid: 1,
        pid_start: Some("1".into()),
        boot_id: None,
    })
    .unwrap()
}

fn claim_n(s: &dyn Store, runner_id: i64, filter: &Filter, n: usize) -> Vec<Claim> {
    let slots = vec![String::new(); n];
    let r = s
        .record_and_claim(&RecordAndClaimParams {
            runner_id,
            lease_ms: 60_000,
            filter,
            finishes: Vec::new(),
            claims: vec![ClaimParams {
                model: MODEL,
                endpoints: &slots,
                timeout_s: 5.0,
            }],
        })
        .unwrap();
    r.claims.into_iter().next().unwrap()
}

fn finish(s: &dyn Store, claim: &Claim, f: &Finish, next: Next) -> bool {
    let r = s
        .record_and_claim(&RecordAndClaimParams {
            runner_id: 0,
            lease_ms: 60_000,
            filter: &Filter::default(),
            finishes: vec![FinishParams {
                claim,
                finish: f,
                next,
            }],
            claims: Vec::new(),
        })
        .unwrap();
    r.kept[0]
}

fn count(s: &dyn Store, state: JobState) -> i64 {
    let counts = s.state_counts(&Filter::default()).unwrap();
    counts.get(&state).copied().unwrap_or(0)
}

fn models() -> Vec<String> {
    vec![MODEL.to_string()]
}

pub fn enqueue_is_idempotent(s: &dyn Store) {
    let first = enqueue(s, "b", &["1", "2", "3"], &models());
    assert_eq!(first.last - first.first, 2, "{first:?}");
    let again = enqueue(s, "b", &["1", "2", "3"], &models());
    assert!(again.first > again.last, "nothing new: {again:?}");
    assert_eq!(count(s, JobState::Pending), 3);
    let other = enqueue(s, "b", &["3", "4"], &models());
    assert_eq!((other.first, other.last), (first.last + 1, first.last + 1));
}

pub fn a_changed_item_is_reported_as_stored(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let tx = s.enqueue().unwrap();
    let stored = tx
        .add_items(
            "b",
            &[
                NewItem {
                    id: "1",
                    prompt: "other",
                    vars: "{}",
                    messages: None,
                    options: None,
                },
                NewItem {
                    id: "2",
                    prompt: "new",
                    vars: "{}",
                    messages: None,
                    options: None,
                },
            ],
        )
        .unwrap()
        .expect("item 1 was there");
    assert_eq!(stored[0].prompt, "p");
    assert_eq!(stored[1].prompt, "new");
    assert!(tx.queued_before("b", "1").unwrap());
    assert!(!tx.queued_before("b", "2").unwrap());
    drop(tx);
    // Dropped without commit: item 2 was never stored.
    let tx = s.enqueue().unwrap();
    let again = tx
        .add_items(
            "b",
            &[NewItem {
                id: "2",
                prompt: "x",
                vars: "{}",
                messages: None,
                options: None,
            }],
        )
        .unwrap();
    assert!(again.is_none(), "a rolled back item is gone: {again:?}");
}

pub fn claim_takes_each_job_once(s: &dyn Store) {
    enqueue(s, "b", &["1", "2", "3"], &models());
    let r = runner(s);
    let a = claim_n(s, r, &Filter::default(), 2);
    let b = claim_n(s, r, &Filter::default(), 2);
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 1, "only one job left");
    let mut ids: Vec<i64> = a.iter().chain(&b).map(|c| c.job_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "no job claimed twice");
    for c in a.iter().chain(&b) {
        assert_eq!(c.number, 1);
        assert_eq!(c.kind, JobKind::Generate);
        assert_eq!(c.prompt, "p");
        assert_ne!(c.token, 0);
        assert!(c.attempt_id > 0);
    }
    assert_eq!(count(s, JobState::Running), 3);
    assert!(claim_n(s, r, &Filter::default(), 2).is_empty());
}

pub fn claim_respects_the_filter(s: &dyn Store) {
    let jobs = enqueue(s, "b", &["1", "2", "3"], &models());
    enqueue(s, "c", &["1"], &models());
    let r = runner(s);
    let only = Filter {
        ids: Some(vec![jobs.first + 1]),
        ..Filter::default()
    };
    let got = claim_n(s, r, &only, 3);
    assert_eq!(
        got.iter().map(|c| c.job_id).collect::<Vec<_>>(),
        [jobs.first + 1]
    );
    let batch_c = Filter {
        batch: Some("c".into()),
        ..Filter::default()
    };
    let got = claim_n(s, r, &batch_c, 3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].batch, "c");
    let other_model = Filter {
        models: vec!["other".into()],
        ..Filter::default()
    };
    assert!(claim_n(s, r, &other_model, 3).is_empty());
}

pub fn finish_is_fenced_by_the_lease_token(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let r = runner(s);
    let c = claim_n(s, r, &Filter::default(), 1).remove(0);
    let mut f = Finish::new(Outcome::Ok, 5);
    f.output = Some("answer".into());
    let mut stale = c.clone();
    stale.token = c.token.wrapping_add(1);
    assert!(
        !finish(s, &stale, &f, Next::Done),
        "a foreign token writes nothing"
    );
    assert_eq!(count(s, JobState::Running), 1);
    assert!(finish(s, &c, &f, Next::Done));
    assert_eq!(count(s, JobState::Done), 1);
    // The same finish sent again (its answer lost with a connection) is kept and written once.
    assert!(finish(s, &c, &f, Next::Done), "the same finish again");
    assert_eq!(count(s, JobState::Done), 1);
    let mut attempts = Vec::new();
    let scope = crate::db::report::AttemptScope::default();
    s.each_job(&scope, None, None, &mut |j| {
        attempts.push(j.attempts);
        Ok(())
    })
    .unwrap();
    assert_eq!(attempts, [1]);
    // Another end of a finished attempt writes nothing.
    let other = Finish::new(Outcome::Exit, 5);
    assert!(
        !finish(s, &c, &other, Next::Done),
        "a finished job is not finished twice"
    );
    assert!(!finish(s, &stale, &other, Next::Done));
}

pub fn a_retry_waits_its_delay(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let r = runner(s);
    let c = claim_n(s, r, &Filter::default(), 1).remove(0);
    let f = Finish::new(Outcome::Exit, 5);
    assert!(finish(s, &c, &f, Next::Retry(0)));
    let again = claim_n(s, r, &Filter::default(), 1).remove(0);
    assert_eq!(again.number, 2, "attempt numbers never collide");
    assert_eq!(again.charged, 1);
    assert!(finish(s, &again, &f, Next::Retry(600_000)));
    assert!(
        claim_n(s, r, &Filter::default(), 1).is_empty(),
        "backing off"
    );
    let wait = s
        .next_runnable_in(&Filter::default(), MODEL)
        .unwrap()
        .expect("a pending job");
    assert!(wait > 500_000 && wait <= 600_000, "{wait}");
}

pub fn a_grade_waits_for_its_parent(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let rubric = Rubric::parse("r", "pass: VERDICT\n---\ngrade {output}").unwrap();
    let q = s
        .enqueue_grades(&EnqueueGradesParams {
            filter: &Filter::default(),
            graders: &models(),
            rubric: &rubric,
        })
        .unwrap();
    assert_eq!((q.outputs, q.waiting, q.new), (1, 1, 1));
    let again = s
        .enqueue_grades(&EnqueueGradesParams {
            filter: &Filter::default(),
            graders: &models(),
            rubric: &rubric,
        })
        .unwrap();
    assert_eq!((again.new, again.rubric_id), (0, q.rubric_id), "idempotent");
    let r = runner(s);
    let parent = claim_n(s, r, &Filter::default(), 2);
    assert_eq!(parent.len(), 1, "the grade waits for its parent");
    let mut f = Finish::new(Outcome::Ok, 5);
    f.output = Some("the answer".into());
    assert!(finish(s, &parent[0], &f, Next::Done));
    let grade = claim_n(s, r, &Filter::default(), 2).remove(0);
    assert_eq!(grade.kind, JobKind::Grade);
    assert_eq!(grade.parent_id, Some(parent[0].job_id));
    assert_eq!(grade.parent_output.as_deref(), Some("the answer"));
    assert_eq!(
        s.rubric(grade.rubric_id.unwrap()).unwrap().body,
        rubric.body
    );
    let mut f = Finish::new(Outcome::Ok, 5);
    f.verdict = Some(serde_json::json!({"pass": true}));
    assert!(finish(s, &grade, &f, Next::Done));
    assert_eq!(count(s, JobState::Done), 2);
}

pub fn stuck_jobs_are_listed_with_their_runner(s: &dyn Store) {
    enqueue(s, "b", &["1", "2"], &models());
    let r = runner(s);
    let other = runner(s);
    let mine = claim_n(s, r, &Filter::default(), 1).remove(0);
    let theirs = claim_n(s, other, &Filter::default(), 1).remove(0);
    let all = s.find_stuck(None).unwrap();
    assert_eq!(all.len(), 2);
    let except = s.find_stuck(Some(r)).unwrap();
    assert_eq!(except.len(), 1);
    let j = &except[0];
    assert_eq!((j.job_id, j.token), (theirs.job_id, theirs.token));
    assert_eq!(j.attempt_id, Some(theirs.attempt_id));
    assert!(
        j.lease_expired_ms < 0,
        "a fresh lease: {}",
        j.lease_expired_ms
    );
    let holder = j.runner.as_ref().expect("its runner");
    assert_eq!((holder.id, holder.pid), (other, 1));
    assert_eq!(holder.host, "conformance-host");
    assert!(!holder.stopped);
    s.stop_runner(other, "finished").unwrap();
    let j = s.find_stuck(Some(r)).unwrap().remove(0);
    assert!(j.runner.unwrap().stopped);
    let _ = mine;
}

pub fn rescue_is_fenced_and_bounded(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let r = runner(s);
    let budget = 2;
    for lost in 0..=budget {
        let c = claim_n(s, r, &Filter::default(), 1).remove(0);
        let j = s.find_stuck(None).unwrap().remove(0);
        let rescue = Rescue {
            job_id: j.job_id,
            model: j.model.clone(),
            token: j.token,
            attempt_id: j.attempt_id,
            max_attempts: Some(budget),
            error: "lost: test".into(),
        };
        let stale = Rescue {
            token: j.token.wrapping_add(1),
            ..rescue.clone()
        };
        assert!(s.rescue(&[stale]).unwrap().is_empty(), "fenced by token");
        let done = s.rescue(std::slice::from_ref(&rescue)).unwrap();
        let want = if lost < budget {
            JobState::Pending
        } else {
            JobState::Failed
        };
        assert_eq!(done, [(0, want)], "loss {}", lost + 1);
        assert!(s.rescue(&[rescue]).unwrap().is_empty(), "only once");
        let f = Finish::new(Outcome::Ok, 1);
        assert!(
            !finish(s, &c, &f, Next::Done),
            "a rescued job is never overwritten"
        );
    }
    assert_eq!(count(s, JobState::Failed), 1);
    s.mark_runners_died(&[r]).unwrap();
}

pub fn release_puts_back_what_a_runner_holds(s: &dyn Store) {
    enqueue(s, "b", &["1", "2", "3"], &models());
    let r = runner(s);
    let other = runner(s);
    let held = claim_n(s, r, &Filter::default(), 2);
    claim_n(s, other, &Filter::default(), 1);
    assert_eq!(s.release_runner(r).unwrap(), 2);
    assert_eq!(count(s, JobState::Pending), 2);
    assert_eq!(count(s, JobState::Running), 1);
    let again = claim_n(s, r, &Filter::default(), 2);
    assert_eq!(again.len(), 2);
    for c in &again {
        assert_eq!(c.charged, 0, "released attempts are not charged");
        assert_eq!(c.number, 2);
    }
    let _ = held;
}

pub fn resume_grants_attempts_once(s: &dyn Store) {
    enqueue(s, "b", &["1", "2"], &models());
    let r = runner(s);
    for c in claim_n(s, r, &Filter::default(), 2) {
        let outcome = if c.item_id == "1" {
            Outcome::Timeout
        } else {
            Outcome::Exit
        };
        assert!(finish(s, &c, &Finish::new(outcome, 1), Next::Failed));
    }
    let f = Filter::default();
    let mut p = ResumeParams {
        filter: &f,
        outcome: Some(Outcome::Timeout),
        extra_attempts: Some(1),
        dry_run: true,
    };
    let would = s.resume(&p).unwrap();
    assert_eq!(would.len(), 1);
    assert_eq!(count(s, JobState::Failed), 2, "a dry run changes nothing");
    p.dry_run = false;
    assert_eq!(s.resume(&p).unwrap(), would);
    assert!(s.resume(&p).unwrap().is_empty(), "only failed jobs resume");
    let c = claim_n(s, r, &Filter::default(), 2).remove(0);
    assert_eq!(c.max_attempts, Some(2), "charged 1 + 1 more");
}

pub fn renewed_leases_run_from_now(s: &dyn Store) {
    enqueue(s, "b", &["1"], &models());
    let r = runner(s);
    claim_n(s, r, &Filter::default(), 1);
    s.renew_leases(r, -1_000).unwrap();
    let j = s.find_stuck(None).unwrap().remove(0);
    assert!(j.lease_expired_ms >= 1_000, "{}", j.lease_expired_ms);
    s.renew_leases(r, 3_600_000).unwrap();
    let j = s.find_stuck(None).unwrap().remove(0);
    assert!(j.lease_expired_ms < -3_000_000, "{}", j.lease_expired_ms);
}

pub fn models_round_trip(s: &dyn Store) {
    let unknown = s.model("nobody").unwrap();
    assert!(!unknown.configured);
    let mut m = crate::models::ModelConfig::unconfigured("x");
    m.concurrency = 3;
    m.max_attempts = 7;
    m.endpoints = vec!["http://a:1".into(), "http://b:2".into()];
    m.price_in = Some(0.5);
    s.save_model(&m).unwrap();
    let back = s.model("x").unwrap();
    assert!(back.configured);
    assert_eq!(
        (back.concurrency, back.max_attempts, back.price_in),
        (3, 7, Some(0.5))
    );
    assert_eq!(back.endpoints, m.endpoints);
    assert_eq!(s.models().unwrap().len(), 1);
    assert_eq!(
        s.ok_durations("x", 60_000).unwrap(),
        DurationSample::default()
    );
}

pub fn unknown_ids_are_named(s: &dyn Store) {
    let jobs = enqueue(s, "b", &["1", "2"], &models());
    let ids = [jobs.last + 5, jobs.first, jobs.last + 1, jobs.last + 1];
    assert_eq!(s.unknown_ids(&ids).unwrap(), [jobs.last + 1, jobs.last + 5]);
}

pub fn work_left_follows_the_queue(s: &dyn Store) {
    let f = Filter::default();
    assert!(!s.work_left(&f, &[]).unwrap());
    enqueue(s, "b", &["1"], &models());
    assert!(s.work_left(&f, &[]).unwrap());
    assert!(
        !s.work_left(&f, &models()).unwrap(),
        "a stopped lane's jobs"
    );
    assert_eq!(s.pending_models(&f).unwrap(), models());
    assert_eq!(s.open_jobs(&f, MODEL).unwrap(), 1);
    let r = runner(s);
    let c = claim_n(s, r, &f, 1).remove(0);
    assert!(s.work_left(&f, &[]).unwrap(), "running");
    assert!(finish(s, &c, &Finish::new(Outcome::Ok, 1), Next::Done));
    assert!(!s.work_left(&f, &[]).unwrap());
    assert_eq!(s.open_jobs(&f, MODEL).unwrap(), 0);
}
