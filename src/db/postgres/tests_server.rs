//! The queue's SQL against a real server (`scripts/with-postgres.sh cargo test`): claims under
//! contention, fences, database-clock leases. Each test works in a database of its own.

use super::*;
use crate::db::jobs::{Filter, Finish, Next, Outcome};

/// A fresh database on the test server, migrated; None (after saying so) without a server.
fn fresh() -> Option<(Target, Client)> {
    let server = match std::env::var("LLMBATCH_TEST_PG") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("LLMBATCH_TEST_PG is not set: CI must run the tests through scripts/with-postgres.sh")
        }
        Err(_) => {
            eprintln!("PostgreSQL not available: run scripts/with-postgres.sh cargo test");
            return None;
        }
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "u_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let admin = Target::parse(&server).unwrap();
    let mut admin = admin.connect().unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    let target = Target::parse(&format!("{base}/{name}")).unwrap();
    let mut client = target.connect().unwrap();
    migrate(&mut client, &target.shown, true).unwrap();
    Some((target, client))
}

fn enqueue(c: &mut Client, n: i64) {
    c.batch_execute(&format!(
        "INSERT INTO items SELECT 'b', g::text, 'prompt ' || g, '{{}}' FROM generate_series(1, {n}) g;
         INSERT INTO jobs (batch, item_id, model, created_at, updated_at)
             SELECT 'b', g::text, 'm', 0, 0 FROM generate_series(1, {n}) g;"
    ))
    .unwrap();
}

#[test]
fn migrating_twice_is_a_no_op_and_a_newer_schema_is_refused() {
    let Some((t, mut c)) = fresh() else { return };
    migrate(&mut c, &t.shown, true).unwrap();
    let v: i64 = c
        .query_one("SELECT version FROM llmbatch_schema", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, SCHEMA_VERSION);
    c.execute("UPDATE llmbatch_schema SET version = version + 1", &[])
        .unwrap();
    let err = migrate(&mut c, &t.shown, true).unwrap_err();
    assert!(
        format!("{err:#}").contains("newer than this llmbatch"),
        "{err:#}"
    );
}

/// Eight claimers on their own connections take 200 jobs: every job claimed once, attempt
/// numbers all 1, no claim larger than asked.
#[test]
fn concurrent_claims_never_take_a_job_twice() {
    let Some((t, mut c)) = fresh() else { return };
    enqueue(&mut c, 200);
    let runners: Vec<i64> = (0..8).map(|_| queue::register(&mut c).unwrap()).collect();
    let handles: Vec<_> = runners
        .into_iter()
        .map(|rid| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut c = t.connect().unwrap();
                let mut got = Vec::new();
                loop {
                    let eps = vec![String::new(); 3];
                    let claims =
                        queue::claim(&mut c, rid, "m", &eps, 10.0, 30_000, &Filter::default())
                            .unwrap();
                    assert!(claims.len() <= 3);
                    if claims.is_empty() {
                        break;
                    }
                    for cl in claims {
                        assert_eq!(cl.number, 1);
                        let f = Finish::new(Outcome::Ok, 1);
                        assert!(queue::finish(&mut c, &cl, &f, Next::Done).unwrap());
                        got.push(cl.job_id);
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (200, 200));
    let r = c
        .query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE outcome = 'ok'), MAX(number) FROM attempts",
            &[],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)),
        (200, 200, 1)
    );
}

/// A lease that ran out on the database's clock makes the job an orphan of a remote runner;
/// the reap is fenced, and the late finish of the reaped attempt is discarded.
#[test]
fn expired_leases_are_reaped_and_late_finishes_discarded() {
    let Some((_t, mut c)) = fresh() else { return };
    enqueue(&mut c, 1);
    let rid = queue::register(&mut c).unwrap();
    // Another host's runner: judged by its lease only.
    c.execute(
        "UPDATE runners SET host = 'elsewhere' WHERE id = $1",
        &[&rid],
    )
    .unwrap();
    let eps = vec![String::new()];
    let cl = queue::claim(&mut c, rid, "m", &eps, 10.0, 60_000, &Filter::default())
        .unwrap()
        .remove(0);
    assert!(queue::find_orphans(&mut c, None).unwrap().is_empty());
    assert!(queue::beat(&mut c, rid, 60_000).unwrap());
    // The lease ends a second ago on the server's clock.
    c.execute(
        "UPDATE jobs SET lease_expires_at = llmbatch_now_ms() - 1000",
        &[],
    )
    .unwrap();
    let orphans = queue::find_orphans(&mut c, None).unwrap();
    assert_eq!(orphans.len(), 1);
    assert!(
        orphans[0].reason.contains("on elsewhere sent no heartbeat"),
        "{}",
        orphans[0].reason
    );
    let reaped = queue::reap(&mut c, &orphans).unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].1, "pending");
    let late = Finish::new(Outcome::Ok, 5);
    assert!(!queue::finish(&mut c, &cl, &late, Next::Done).unwrap());
    let r = c
        .query_one("SELECT state, last_outcome FROM jobs", &[])
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        ("pending".to_string(), "lost".to_string())
    );
    // Claimed again: attempt 2, never a collision.
    let again = queue::claim(&mut c, rid, "m", &eps, 10.0, 60_000, &Filter::default()).unwrap();
    assert_eq!(again[0].number, 2);
}

#[test]
fn runner_store_queries_parse() {
    use crate::db::runner_store::{Postgres, RunnerStore};
    let Some((t, c)) = fresh() else { return };
    let mut s = Postgres {
        session: super::session::Session::with_client(t, c),
    };
    let f = Filter::default();
    s.work_left(&f, &[]).unwrap();
    s.work_left(&f, &["m".to_string()]).unwrap();
    s.next_ready_in("m", &f).unwrap();
    s.count_open("m", &f).unwrap();
    s.pending_models(&f).unwrap();
    s.state_counts(&f).unwrap();
    s.timeout_samples("m").unwrap();
}
