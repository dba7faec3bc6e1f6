//! The PostgreSQL engine against a real server (`scripts/with-postgres.sh cargo test`): the
//! conformance module, claims under contention from many connections, migrations. Each test
//! works in a database of its own. Without a server: a failure under CI, else skipped saying
//! how to get one.

use super::*;
use crate::db::store::*;
use crate::domain::{Finish, Next, Outcome};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let name = format!("u_{}_{}", std::process::id(), NEXT.fetch_add(1, SeqCst));
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
                let rid = a_runner(&s);
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
    let rid = a_runner(&s);
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
    let mut jobs = 0;
    crate::db::ReportSource::each_job(&reader, &scope, None, None, &mut |_| {
        jobs += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(jobs, 3);
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

/// A TCP proxy to the test server that can lose the answer to a commit: once armed, it passes
/// the server's messages on until the server reports a transaction ended (ReadyForQuery,
/// status idle: an autocommit statement or a COMMIT has been applied), then closes both sides
/// without passing that answer on. The client sees its connection drop; the server has
/// committed. Arm it only while its client is idle (between calls).
struct Cutter {
    port: u16,
    armed: Arc<AtomicBool>,
    /// Set once a connection was cut.
    cut: Arc<AtomicBool>,
}

impl Cutter {
    fn start(upstream: (String, u16)) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let (a, k) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect((upstream.0.as_str(), upstream.1)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                    let _ = s2.shutdown(Shutdown::Both);
                });
                let (a, k) = (a.clone(), k.clone());
                std::thread::spawn(move || Cutter::answers(server, client, &a, &k));
            }
        });
        Cutter { port, armed, cut }
    }

    /// Server to client: raw bytes while unarmed; message by message while armed, until the
    /// end of a transaction, which is swallowed and the connection closed.
    fn answers(server: TcpStream, client: TcpStream, armed: &AtomicBool, cut: &AtomicBool) {
        let (mut from, mut to) = (&server, &client);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !armed.load(SeqCst) && buf.is_empty() {
                if to.write_all(&chunk[..n]).is_err() {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&chunk[..n]);
            // Whole messages: a type byte, then a length that counts itself.
            while buf.len() >= 5 {
                let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize + 1;
                if buf.len() < len {
                    break;
                }
                let msg: Vec<u8> = buf.drain(..len).collect();
                if msg[0] == b'Z' && msg[5] == b'I' && armed.swap(false, SeqCst) {
                    cut.store(true, SeqCst);
                    let _ = server.shutdown(Shutdown::Both);
                    let _ = client.shutdown(Shutdown::Both);
                    return;
                }
                if to.write_all(&msg).is_err() {
                    return;
                }
            }
        }
        let _ = client.shutdown(Shutdown::Both);
    }
}

/// The test server's URL for a database, through `port` on the loopback.
fn via_port(t: &Target, port: u16) -> Target {
    let user = t.config.get_user().unwrap_or("postgres");
    let db = t.config.get_dbname().unwrap();
    Target::parse(&format!(
        "postgres://{user}@127.0.0.1:{port}/{db}?sslmode=disable"
    ))
    .unwrap()
}

/// One claim of one slot of model `m`.
fn claim_one(s: &dyn Store, rid: i64, finishes: Vec<FinishParams>) -> Result<Recorded> {
    s.record_and_claim(&RecordAndClaimParams {
        runner_id: rid,
        lease_ms: 60_000,
        filter: &Filter::default(),
        finishes,
        claims: vec![ClaimParams {
            model: "m",
            endpoints: &[String::new()],
            timeout_s: 10.0,
        }],
    })
}

/// The hole of a lost acknowledgement: the server commits a claim, the connection drops
/// before its answer arrives, and the runner cannot know it holds that job. Its next call, on
/// a new connection, hands the job back (fenced by the claim's lease token): nothing stays
/// `running` under a live runner that never started it, and the attempt is not charged.
#[test]
fn a_claim_whose_answer_is_lost_is_handed_back_after_reconnecting() {
    let Some((t, mut c)) = fresh() else { return };
    enqueue(&mut c, 3);
    let (cutter, s) = behind_a_cutter(&t);
    let rid = a_runner(&s);
    // A first claim, answered: the runner holds job 1 and knows it.
    let first = claim_one(&s, rid, Vec::new()).unwrap().claims.remove(0);
    assert_eq!(first.iter().map(|c| c.job_id).collect::<Vec<_>>(), [1]);

    cutter.armed.store(true, SeqCst);
    let err = claim_one(&s, rid, Vec::new()).unwrap_err();
    assert!(cutter.cut.load(SeqCst));
    assert!(is_disconnect(&err), "{err:#}");
    // The server did commit it: job 2 is held, though the runner never heard so.
    let ids: Vec<i64> = held(&mut c).iter().map(|h| h.0).collect();
    assert_eq!(ids, [1, 2]);

    // The next call reconnects (after the session's pause) and hands job 2 back first; then
    // it records job 1 and claims again, so the runner holds exactly what it was told.
    let ok = Finish::new(Outcome::Ok, 1);
    let again = until_connected(|| claim_one(&s, rid, finishing(&first[0], &ok)));
    assert_eq!(again.kept, [true]);
    assert_eq!(told(&again).len(), 1);
    assert_eq!(held(&mut c), told(&again));
    let interrupted = ("interrupted".to_string(), 0, 0);
    assert_eq!(first_attempt(&mut c, 2), interrupted);

    // The same when the answer lost is a COMMIT's: a finish and a claim in one transaction.
    let second = &again.claims[0][0];
    cutter.armed.store(true, SeqCst);
    let err = claim_one(&s, rid, finishing(second, &ok)).unwrap_err();
    assert!(is_disconnect(&err), "{err:#}");
    let third = held(&mut c);
    assert_eq!(third.len(), 1, "the claim committed: {third:?}");
    // The runner never heard of that commit: it sends the same finish again with its next
    // claim. Recorded once already, the finish is kept (the runner counts it once) and not
    // written again.
    let last = until_connected(|| claim_one(&s, rid, finishing(second, &ok)));
    assert_eq!(last.kept, [true], "the same finish, sent again, is kept");
    assert_eq!(
        ended(&mut c, "a.id = $1", second.attempt_id),
        ("ok".to_string(), 1, 1),
        "charged once, not twice (its first attempt was handed back uncharged)"
    );
    assert_eq!(held(&mut c), told(&last));
    assert_eq!(first_attempt(&mut c, third[0].0), interrupted);
    let done: i64 = c
        .query_one("SELECT COUNT(*) FROM jobs WHERE state = 'done'", &[])
        .unwrap()
        .get(0);
    assert_eq!(done, 2, "both finishes were recorded");
}

/// A store whose connection goes through a [`Cutter`] to the test server.
fn behind_a_cutter(t: &Target) -> (Cutter, store::PgStore) {
    let host = match t.config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = t.config.get_ports().first().copied().unwrap_or(5432);
    let cutter = Cutter::start((host, port));
    let proxied = via_port(t, cutter.port);
    let s = store::PgStore::new(proxied.clone(), proxied.connect().unwrap());
    (cutter, s)
}

/// One finish, done, for a claim.
fn finishing<'a>(claim: &'a crate::domain::Claim, finish: &'a Finish) -> Vec<FinishParams<'a>> {
    vec![FinishParams {
        claim,
        finish,
        next: Next::Done,
    }]
}

/// Running jobs and their lease tokens, as the server has them.
fn held(c: &mut Client) -> Vec<(i64, i64)> {
    c.query(
        "SELECT id, lease_token FROM jobs WHERE state = 'running' ORDER BY id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// The jobs and tokens a runner was told it claimed.
fn told(r: &Recorded) -> Vec<(i64, i64)> {
    r.claims[0].iter().map(|c| (c.job_id, c.token)).collect()
}

/// An attempt's outcome and charge, and its job's charge; the attempt chosen by `cond` on `id`.
fn ended(c: &mut Client, cond: &str, id: i64) -> (String, i64, i64) {
    c.query_one(
        &format!(
            "SELECT a.outcome, a.charged, j.charged FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE {cond}"
        ),
        &[&id],
    )
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .unwrap()
}

fn first_attempt(c: &mut Client, job: i64) -> (String, i64, i64) {
    ended(c, "a.job_id = $1 AND a.number = 1", job)
}

/// Retries `f` while the connection is being reopened (the session pauses between tries).
fn until_connected<T>(mut f: impl FnMut() -> Result<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if is_disconnect(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e:#}"),
        }
    }
}

/// A runner registered as host `h`, pid 1.
fn a_runner(s: &store::PgStore) -> i64 {
    s.register_runner(&NewRunner {
        host: "h".into(),
        pid: 1,
        pid_start: None,
        boot_id: None,
    })
    .unwrap()
}
