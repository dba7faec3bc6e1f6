//! The PostgreSQL engine against a real server (`scripts/with-postgres.sh cargo test`): the
//! conformance module, claims under contention from many connections, migrations. Each test
//! works in a database of its own. Without a server: a failure under CI, else skipped saying
//! how to get one.

use super::*;
use crate::db::store::*;
use crate::domain::{Finish, Next, Outcome};

/// A fresh, migrated database on the test server; None (after saying so) without a server.
pub fn fresh() -> Option<(Target, Client)> {
    let server = match std::env::var("LLMBATCH_TEST_PG") {
        Ok(url) => url,
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("LLMBATCH_TEST_PG is not set: CI must run the tests through scripts/with-postgres.sh")
        }
        Err(_) => {
            eprintln!("PostgreSQL not available: this test is skipped; run scripts/with-postgres.sh cargo test");
            return None;
        }
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "u_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let mut admin = Target::parse(&server).unwrap().connect().unwrap();
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

/// For the conformance module: a store on a fresh database. Without a server (outside CI,
/// where [`fresh`] has said so) the macro needs a store all the same: an SQLite one, so the
/// PostgreSQL run of the module is skipped, never faked as passing on PostgreSQL.
fn conformance_store() -> (Option<tempfile::TempDir>, Box<dyn Store>) {
    match fresh() {
        Some((t, c)) => (None, Box::new(store::PgStore::new(t, c))),
        None => {
            eprintln!("(the PostgreSQL conformance test runs on SQLite instead)");
            let dir = tempfile::tempdir().unwrap();
            let mut db =
                crate::db::Db::open(&dir.path().join("t.db"), crate::db::Access::Create).unwrap();
            db.publish().unwrap();
            (Some(dir), Box::new(db))
        }
    }
}

crate::store_conformance!(conformance, super::conformance_store);

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

/// Eight claimers on their own connections take 300 jobs, three at a time: every job claimed
/// once, every attempt number 1, no claim larger than asked (BUG #15715 would break these).
#[test]
fn concurrent_claims_never_take_a_job_twice() {
    let Some((t, mut c)) = fresh() else { return };
    enqueue(&mut c, 300);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                let s = store::PgStore::new(t.clone(), t.connect().unwrap());
                let rid = s
                    .register_runner(&NewRunner {
                        host: "h".into(),
                        pid: 1,
                        pid_start: None,
                        boot_id: None,
                    })
                    .unwrap();
                let eps = vec![String::new(); 3];
                let filter = Filter::default();
                let mut got = Vec::new();
                let mut pending: Vec<crate::domain::Claim> = Vec::new();
                loop {
                    let ok = Finish::new(Outcome::Ok, 1);
                    let finishes: Vec<FinishParams> = pending
                        .iter()
                        .map(|claim| FinishParams {
                            claim,
                            finish: &ok,
                            next: Next::Done,
                        })
                        .collect();
                    let r = s
                        .record_and_claim(&RecordAndClaimParams {
                            runner_id: rid,
                            lease_ms: 30_000,
                            filter: &filter,
                            finishes,
                            claims: vec![ClaimParams {
                                model: "m",
                                endpoints: &eps,
                                timeout_s: 10.0,
                            }],
                        })
                        .unwrap();
                    assert!(r.kept.iter().all(|k| *k));
                    let claims = r.claims.into_iter().next().unwrap();
                    assert!(claims.len() <= 3);
                    for cl in &claims {
                        assert_eq!(cl.number, 1);
                        got.push(cl.job_id);
                    }
                    if claims.is_empty() {
                        break;
                    }
                    pending = claims;
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
    assert_eq!((before, all.len()), (300, 300));
    let r = c
        .query_one(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE outcome = 'ok'), MAX(number),
                    (SELECT COUNT(*) FROM jobs WHERE state = 'done') FROM attempts",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3)
        ),
        (300, 300, 1, 300)
    );
}

/// Leases are the database's time: a lease renewed now runs `lease` from the server's now,
/// whatever this host's clock says.
#[test]
fn leases_are_written_on_the_database_clock() {
    let Some((t, mut c)) = fresh() else { return };
    enqueue(&mut c, 1);
    let s = store::PgStore::new(t, c);
    let rid = s
        .register_runner(&NewRunner {
            host: "h".into(),
            pid: 1,
            pid_start: None,
            boot_id: None,
        })
        .unwrap();
    s.renew_leases(rid, 60_000).unwrap();
    let stuck = s.find_stuck(None).unwrap();
    assert!(stuck.is_empty());
    let mut c = s.target().connect().unwrap();
    let skew: i64 = c
        .query_one(
            "SELECT ABS(heartbeat_at - (extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM runners",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(skew < 5_000, "heartbeat {skew} ms off the server's clock");
    // A runner marked stopped by another host cannot renew: its heartbeat says so.
    c.execute("UPDATE runners SET stopped_at = 1", &[]).unwrap();
    let err = s.renew_leases(rid, 60_000).unwrap_err();
    assert!(format!("{err:#}").contains("marked stopped"), "{err:#}");
}

/// A read-only command's reads all see the moment of its first: a job enqueued meanwhile by
/// another connection shows in none of its sections, and a long export between them would
/// not either. Another reader started afterwards sees it.
#[test]
fn a_readers_sections_see_one_moment() {
    let Some((target, mut client)) = fresh() else {
        return;
    };
    enqueue(&mut client, 3);
    let reader = store::PgStore::new(target.clone(), target.connect().unwrap());
    reader.hold_snapshot().unwrap();
    let scope = crate::db::report::AttemptScope::default();
    let pending = |s: &store::PgStore| -> i64 {
        let (models, _) = crate::db::ReportSource::status(s, &scope).unwrap();
        models.iter().map(|(_, m)| m.counts[0]).sum()
    };
    assert_eq!(pending(&reader), 3);
    client
        .batch_execute(
            "INSERT INTO items SELECT 'c', g::text, 'p', '{}' FROM generate_series(1, 5) g;
             INSERT INTO jobs (batch, item_id, model, created_at, updated_at)
                 SELECT 'c', g::text, 'm', 0, 0 FROM generate_series(1, 5) g;",
        )
        .unwrap();
    assert_eq!(pending(&reader), 3, "the first read's moment holds");
    let (jobs, _) = crate::db::ReportSource::jobs(&reader, &scope, None, None).unwrap();
    assert_eq!(jobs.len(), 3);
    let mut rows = 0;
    crate::db::ExportSource::each_output(&reader, &Filter::default(), &mut |_| {
        rows += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(rows, 3);
    let later = store::PgStore::new(target.clone(), target.connect().unwrap());
    later.hold_snapshot().unwrap();
    assert_eq!(pending(&later), 8);
}
