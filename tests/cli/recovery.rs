//! Self-healing: leases, heartbeats, orphans, `reap`, `resume`, `--ids-file`, signals, several
//! runners on one file — and the kill -9 chaos test (issue: recovery).

use crate::common::*;
use predicates::prelude::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Starts `llmbatch run ARGS` in the background, its stderr (the log) going to `log` in the
/// test directory.
fn start_run(env: &Env, args: &[&str], log: &str) -> Child {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let file = std::fs::File::create(env.dir.path().join(log)).unwrap();
    env.spawn_cmd(&all)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("start run")
}

fn log_of(env: &Env, log: &str) -> String {
    std::fs::read_to_string(env.dir.path().join(log)).unwrap_or_default()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Regex syntax in `text` escaped.
fn escape(text: &str) -> String {
    text.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A whole line that is exactly `text`: "reaped 1 orphaned job(s)" must not pass for "reaped
/// 11 orphaned job(s)".
fn line(text: &str) -> predicates::str::RegexPredicate {
    predicate::str::is_match(format!("(?m)^{}$", escape(text))).unwrap()
}

/// A line that starts with `text` followed by a space or its end.
fn line_starting(text: &str) -> predicates::str::RegexPredicate {
    predicate::str::is_match(format!("(?m)^{}( |$)", escape(text))).unwrap()
}

/// A command template that waits until the file `gate` exists, then runs fixture `script`:
/// the test decides when attempts end, instead of hoping a sleep is long enough.
fn gated(marker: &str, gate: &str, script: &str) -> String {
    format!(
        "env LLMBATCH_TEST_MARKER={marker} sh -c 'while [ ! -e \"$0\" ]; do sleep 0.02; done; exec \"$1\"' '{gate}' '{}'",
        fake(script)
    )
}

/// Problems no run may ever report, whatever happened to it.
fn assert_clean_log(text: &str) {
    for bad in [
        "UNIQUE constraint",
        "database is locked",
        "panicked",
        "error:",
    ] {
        assert!(!text.contains(bad), "log mentions {bad:?}:\n{text}");
    }
}

/// The invariants of DESIGN.md that must hold after any history of kills.
fn assert_invariants(env: &Env) {
    assert_eq!(env.state_count("running"), 0, "a job is left running");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome IS NULL OR finished_at IS NULL"),
        0,
        "an attempt is left unfinished"
    );
    // 4. A done job has exactly one ok attempt, and its output is that attempt's output.
    let bad = env.rows(
        "SELECT j.id FROM jobs j WHERE j.state = 'done' AND (
             (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id AND a.outcome = 'ok') <> 1
          OR (SELECT a.outcome FROM attempts a WHERE a.id = j.attempt_id) IS DISTINCT FROM 'ok'
          OR (SELECT a.job_id FROM attempts a WHERE a.id = j.attempt_id) IS DISTINCT FROM j.id)",
    );
    assert!(
        bad.is_empty(),
        "done jobs without exactly one ok attempt: {bad:?}"
    );
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE a.outcome = 'ok' AND j.state <> 'done'"
        ),
        0,
        "an ok attempt on a job that is not done"
    );
    // Attempt numbers per job: unique and contiguous 1..n, n = jobs.attempts.
    let gaps = env.rows(
        "SELECT j.id, j.attempts, COUNT(a.id), COUNT(DISTINCT a.number), MIN(a.number), MAX(a.number)
         FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id GROUP BY j.id
         HAVING COUNT(a.id) <> j.attempts OR COUNT(DISTINCT a.number) <> COUNT(a.id)
             OR (COUNT(a.id) > 0 AND (MIN(a.number) <> 1 OR MAX(a.number) <> COUNT(a.id)))",
    );
    assert!(gaps.is_empty(), "attempt numbers not contiguous: {gaps:?}");
    // 5. Monotonic timestamps.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE finished_at < started_at OR duration_ms < 0"),
        0,
        "an attempt finished before it started"
    );
    // Charged attempts never exceed the attempt rows.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE charged > attempts"),
        0
    );
}

/// (running, orphaned) from a runner's log, whose state line must have its exact shape.
fn state_line_counts(text: &str) -> (i64, i64) {
    use predicates::Predicate;
    let shape = predicate::str::is_match(
        r"^llmbatch: runner \d+ found \d+ pending, \d+ running \(\d+ orphaned\), \d+ done, \d+ failed$",
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| shape.eval(l)).collect();
    assert_eq!(lines.len(), 1, "one state line expected:\n{text}");
    // Numbers in order: runner, pending, running, orphaned, done, failed.
    let n: Vec<i64> = lines[0]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect();
    (n[2], n[3])
}

/// What the chaos test adds to [`assert_invariants`]: charges add up per job, attempts of one
/// job never overlap in time, and a done or failed job holds no lease.
fn assert_chaos_invariants(env: &Env) {
    assert_charges_add_up(env);
    let overlaps = env.rows(
        "SELECT a.job_id, a.number, b.number FROM attempts a JOIN attempts b
           ON b.job_id = a.job_id AND b.number > a.number
         WHERE b.started_at < a.finished_at",
    );
    assert!(
        overlaps.is_empty(),
        "attempts of one job overlap: {overlaps:?}"
    );
    let leased = env.rows(
        "SELECT id, state, runner_id, lease_token, lease_expires_at FROM jobs
         WHERE state IN ('done', 'failed')
           AND (runner_id IS NOT NULL OR lease_token IS NOT NULL OR lease_expires_at IS NOT NULL)",
    );
    assert!(
        leased.is_empty(),
        "finished jobs holding a lease: {leased:?}"
    );
}

fn chaos_rounds() -> usize {
    std::env::var("LLMBATCH_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
}

/// kill -9 at random moments, again and again; then one run finishes everything, with no
/// manual step and every invariant intact (LESSONS 2, 3; DESIGN invariants 1–6).
#[test]
fn chaos_kill_9_at_random_moments_then_run_to_completion() {
    chaos_kill_9_at_random_moments_then_run_to_completion_on(Env::new());
}

#[test]
fn chaos_kill_9_at_random_moments_then_run_to_completion_postgres() {
    crate::on_postgres!(chaos_kill_9_at_random_moments_then_run_to_completion_on);
}

fn chaos_kill_9_at_random_moments_then_run_to_completion_on(env: Env) {
    let marker = unique_marker("chaos");
    let many = ["--max-attempts", "100"];
    env.model_cmd(
        "echo",
        &marked(&marker, "echo", ""),
        &["--concurrency", "3", many[0], many[1]],
    );
    // The slow lane outlasts the rounds, so nearly every kill lands mid-work.
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "1"),
        &["--concurrency", "1", many[0], many[1]],
    );
    env.model_cmd(
        "flaky",
        &marked(&marker, "flaky", ""),
        &["--concurrency", "2", many[0], many[1]],
    );
    env.model_cmd(
        "crash",
        &marked(&marker, "crash", ""),
        &["--concurrency", "2", "--max-attempts", "3"],
    );
    let input = env.prompts("chaos.csv", 13);
    env.cmd(&[
        "enqueue", "--model", "echo", "--model", "slow", "--model", "flaky", "--model", "crash",
        &input,
    ])
    .assert()
    .success();
    let args = [
        "--lease",
        "1s",
        "--kill-grace",
        "0.2",
        "--retry-base",
        "0.05",
    ];
    let rounds = chaos_rounds();
    let mut killed = 0;
    let mut suspended = 0;
    // Runners overlap: each round starts one, then kills one of those alive (up to two) at
    // random, so a runner often outlives its round and works beside the next. Now and then
    // one is stopped past its lease instead, and continued: the others reap its jobs, and its
    // late results must be discarded (fencing), before it too is killed in a later round.
    let mut alive: Vec<(Child, String)> = Vec::new();
    let end_one = |child: &mut Child, log: &str, killed: &mut usize| {
        let sent = child.try_wait().unwrap().is_none();
        if sent {
            kill(child.id(), libc::SIGKILL);
        }
        let status = wait_child(child, Duration::from_secs(60));
        let text = log_of(&env, log);
        assert_clean_log(&text);
        use std::os::unix::process::ExitStatusExt;
        if sent && status.signal() == Some(libc::SIGKILL) {
            *killed += 1;
        } else {
            // It finished on its own before the kill: all in scope done or failed.
            assert!(
                matches!(status.code(), Some(0 | 3)),
                "{log} ended {status:?}:\n{text}"
            );
        }
    };
    for round in 0..rounds {
        let log = format!("round-{round}.log");
        alive.push((start_run(&env, &args, &log), log));
        let delay = fastrand::u64(20..900);
        std::thread::sleep(Duration::from_millis(delay));
        if alive.len() == 2 && fastrand::u8(..4) == 0 {
            let (child, _) = &mut alive[fastrand::usize(..2)];
            if child.try_wait().unwrap().is_none() {
                kill(child.id(), libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(1500));
                kill(child.id(), libc::SIGCONT);
                suspended += 1;
            }
        }
        if alive.len() == 2 || fastrand::bool() {
            let (mut child, log) = alive.swap_remove(fastrand::usize(..alive.len()));
            end_one(&mut child, &log, &mut killed);
        }
    }
    for (mut child, log) in alive.drain(..) {
        end_one(&mut child, &log, &mut killed);
    }
    assert!(killed >= 1, "no runner was killed");
    let discarded: usize = (0..rounds)
        .map(|r| {
            log_of(&env, &format!("round-{r}.log"))
                .matches("discarded")
                .count()
        })
        .sum();
    eprintln!(
        "chaos: {killed} of {rounds} runs killed with SIGKILL, {suspended} stopped past their lease, {discarded} late result(s) discarded; attempts by outcome: {:?}",
        env.rows("SELECT outcome, COUNT(*) FROM attempts GROUP BY outcome")
    );
    let orphans = env.state_count("running");

    let mut last = start_run(&env, &args, "final.log");
    let status = wait_child(&mut last, Duration::from_secs(120));
    let text = log_of(&env, "final.log");
    assert_clean_log(&text);
    assert!(
        matches!(status.code(), Some(0 | 3)),
        "final run: {status:?}\n{text}"
    );
    // It says what it found before it starts: the state line, with every job the killed
    // runners left running counted as orphaned.
    assert_eq!(state_line_counts(&text), (orphans, orphans), "{text}");

    assert_invariants(&env);
    assert_chaos_invariants(&env);
    // Every job done, or failed for a reason it earned: the crash model always fails (its
    // budget of 3 spent on crashes, or lost more than 3 times), and nothing else spends a
    // budget of 100.
    let not_done =
        env.rows("SELECT id, model, state, last_outcome FROM jobs WHERE state <> 'done'");
    for job in &not_done {
        assert_eq!(job[1], "crash", "job failed that should be done: {job:?}");
        assert_eq!(job[2], "failed", "{job:?}");
        assert!(job[3] == "crash" || job[3] == "lost", "{job:?}");
    }
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM jobs j WHERE model = 'crash' AND state = 'failed' AND (charged >= 3
                OR (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id AND a.outcome = 'lost') > 3)"
        ),
        13
    );
    assert_eq!(env.state_count("done"), 39);
    // Each output is its own job's answer, not another's.
    let wrong = env.rows(
        "SELECT j.id FROM jobs j JOIN attempts a ON a.id = j.attempt_id
         JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
         WHERE j.state = 'done' AND a.output NOT LIKE '%' || i.prompt",
    );
    assert!(wrong.is_empty(), "outputs of the wrong job: {wrong:?}");
    // Flaky jobs failed exactly once by their own doing (lost attempts aside).
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'flaky' AND outcome = 'exit' AND number <> 1"),
        0
    );
    wait_for(
        "no fixture process left alive",
        Duration::from_secs(15),
        || !process_alive_with_env(&marker),
    );
}

/// Runner A stops (SIGSTOP: its heartbeat too) mid-attempt; its lease runs out; runner B reaps
/// the job and runs it again; A wakes and finishes — its late result is discarded and logged,
/// and the job keeps B's result (LESSONS 5; DESIGN invariant 3).
#[test]
fn a_stopped_runner_is_reaped_and_its_late_result_discarded() {
    a_stopped_runner_is_reaped_and_its_late_result_discarded_on(Env::new());
}

#[test]
fn a_stopped_runner_is_reaped_and_its_late_result_discarded_postgres() {
    crate::on_postgres!(a_stopped_runner_is_reaped_and_its_late_result_discarded_on);
}

fn a_stopped_runner_is_reaped_and_its_late_result_discarded_on(env: Env) {
    let marker = unique_marker("race");
    env.model_cmd(
        "m",
        &format!(
            "env LLMBATCH_TEST_MARKER={marker} sh -c 'cat >/dev/null; sleep 2; printf \"answer of attempt %s\" \"$LLMBATCH_ATTEMPT\"'"
        ),
        &[],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "m", &input])
        .assert()
        .success();

    let mut a = start_run(&env, &["--lease", "1s"], "a.log");
    wait_for("A's attempt to start", Duration::from_secs(20), || {
        env.state_count("running") == 1 && process_alive_with_env(&marker)
    });
    kill(a.id(), libc::SIGSTOP);
    let expires = env.int("SELECT lease_expires_at FROM jobs WHERE id = 1");
    wait_for("A's lease to expire", Duration::from_secs(10), || {
        now_ms() > expires + 100
    });

    // Stopped by a signal, A renews nothing: not live, whatever its process table entry says.
    let doc = env.report_json(&["runners"]);
    assert_eq!(doc["runners"][0]["pid"], a.id());
    assert_eq!(doc["runners"][0]["state"], "suspended", "{doc}");

    env.cmd(&["run", "--lease", "1s"])
        .assert()
        .code(0)
        .stderr(predicate::str::is_match(r"(?m)reaped job 1 \(m\): its runner \(pid \d+\) is suspended and its lease expired \S+ ago; back to pending$").unwrap());
    let b_output = env.job_output(1).unwrap();
    assert_eq!(b_output, "answer of attempt 2");
    // A's own child has finished meanwhile; A is still stopped.
    kill(a.id(), libc::SIGCONT);
    let status = wait_child(&mut a, Duration::from_secs(30));
    let a_log = log_of(&env, "a.log");
    assert_eq!(status.code(), Some(0), "{a_log}");
    assert!(
        a_log.contains("discarded"),
        "A did not log the discard:\n{a_log}"
    );
    assert_clean_log(&a_log);

    assert_eq!(env.state_count("done"), 1);
    assert_eq!(env.job_output(1).unwrap(), "answer of attempt 2");
    let attempts = env.rows("SELECT number, outcome, output FROM attempts ORDER BY number");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        attempts[0][1], "lost",
        "A's attempt was overwritten: {attempts:?}"
    );
    assert_eq!(attempts[0][2], "NULL");
    assert_eq!(attempts[1][1], "ok");
    assert_invariants(&env);
}

/// A slow model whose attempt outlives several leases is never reaped while its runner lives,
/// even with another runner reaping next to it (LESSONS 6).
#[test]
fn a_live_runner_keeps_its_slow_job() {
    let env = Env::new();
    let marker = unique_marker("lease");
    env.model_cmd("slow", &marked(&marker, "slow", "3"), &[]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let mut a = start_run(&env, &["--lease", "1s"], "a.log");
    wait_for("the attempt to start", Duration::from_secs(20), || {
        env.state_count("running") == 1
    });
    // B reaps at start and every half lease; it waits for A's job, which is in its scope.
    env.cmd(&["run", "--lease", "1s"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains("reaped").not());
    let status = wait_child(&mut a, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", log_of(&env, "a.log"));
    let attempts = env.rows("SELECT number, outcome FROM attempts");
    assert_eq!(attempts, vec![vec!["1".to_string(), "ok".into()]]);
}

/// A running local runner whose lease lapsed (another process held the write lock past it, so
/// its heartbeat could not renew) keeps its jobs: `reap` leaves them and their results count.
#[test]
fn a_running_local_runner_keeps_its_jobs_after_its_lease_lapses() {
    let env = Env::new();
    let marker = unique_marker("starved");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "3"),
        &["--concurrency", "2"],
    );
    env.cmd(&["enqueue", "--model", "slow", &env.prompts("p.csv", 2)])
        .assert()
        .success();
    // A 60 s lease: the heartbeat first renews after 20 s, long after this test has looked.
    let mut a = start_run(&env, &["--lease", "60s"], "a.log");
    wait_for("both attempts running", Duration::from_secs(20), || {
        env.state_count("running") == 2 && process_alive_with_env(&marker)
    });
    // What a writer holding the lock past the lease leaves behind: leases in the past.
    env.conn()
        .execute(
            "UPDATE jobs SET lease_expires_at = ?1 WHERE state = 'running'",
            [now_ms() - 5_000],
        )
        .unwrap();
    env.cmd(&["reap"])
        .assert()
        .success()
        .stdout("Reaped\n  (no orphaned jobs: nothing to reap)\n")
        .stderr(predicate::str::is_match("(?m)^llmbatch: reaped 0 orphaned job\\(s\\)$").unwrap());
    assert_eq!(env.report_json(&["runners"])["runners"][0]["state"], "live");
    let status = wait_child(&mut a, Duration::from_secs(30));
    let text = log_of(&env, "a.log");
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(!text.contains("discarded"), "{text}");
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(
        env.rows("SELECT job_id, number, outcome FROM attempts ORDER BY job_id"),
        vec![
            vec!["1".to_string(), "1".into(), "ok".into()],
            vec!["2".to_string(), "1".into(), "ok".into()],
        ]
    );
    assert_invariants(&env);
}

/// The real thing behind the test above: another process holds the write lock longer than
/// the lease while a runner works, and `reap` runs meanwhile. Whoever gets the lock first once
/// it is released, the running runner keeps its jobs and its results.
#[test]
fn a_long_write_lock_does_not_cost_a_running_runner_its_jobs() {
    let env = Env::new();
    let marker = unique_marker("lock");
    let gate = env.dir.path().join("go").to_string_lossy().into_owned();
    env.model_cmd("m", &gated(&marker, &gate, "echo"), &["--concurrency", "2"]);
    env.cmd(&["enqueue", "--model", "m", &env.prompts("p.csv", 2)])
        .assert()
        .success();
    let mut a = start_run(&env, &["--lease", "1s"], "a.log");
    wait_for("both attempts running", Duration::from_secs(20), || {
        env.state_count("running") == 2
    });
    let holder = env.conn();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let expires = env.int("SELECT MAX(lease_expires_at) FROM jobs WHERE state = 'running'");
    wait_for(
        "the leases to lapse under the lock",
        Duration::from_secs(20),
        || now_ms() > expires + 300,
    );
    let mut reap = env
        .spawn_cmd(&["reap"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let reap reach the lock (its database open) before the lock goes.
    let db = env.db.clone();
    wait_for("reap to open the database", Duration::from_secs(20), || {
        std::fs::read_dir(format!("/proc/{}/fd", reap.id()))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|p| p == db))
            })
            .unwrap_or(false)
    });
    holder.execute_batch("COMMIT").unwrap();
    let status = wait_child(&mut reap, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(reap.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(err, "llmbatch: reaped 0 orphaned job(s)\n");
    std::fs::write(&gate, "").unwrap();
    let status = wait_child(&mut a, Duration::from_secs(30));
    let text = log_of(&env, "a.log");
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok' AND number = 1"),
        2
    );
    assert_eq!(env.int("SELECT COUNT(*) FROM attempts"), 2);
    assert_invariants(&env);
}

/// Starts a run on slow jobs and waits until `n` attempts are in flight.
fn start_slow_run(env: &Env, marker: &str, secs: &str, n: i64, extra: &[&str], log: &str) -> Child {
    env.model_cmd(
        "slow",
        &marked(marker, "slow", secs),
        &["--concurrency", "2"],
    );
    let input = env.prompts("p.csv", 3);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let child = start_run(env, extra, log);
    wait_for("attempts in flight", Duration::from_secs(20), || {
        env.state_count("running") == n && process_alive_with_env(marker)
    });
    child
}

/// SIGTERM: in-flight jobs go back to pending uncharged, attempts `interrupted`, the runner is
/// stopped, exit 143; the next run finishes them (LESSONS 4).
#[test]
fn sigterm_returns_jobs_to_pending_uncharged_and_exits_143() {
    sigterm_returns_jobs_to_pending_uncharged_and_exits_143_on(Env::new());
}

#[test]
fn sigterm_returns_jobs_to_pending_uncharged_and_exits_143_postgres() {
    crate::on_postgres!(sigterm_returns_jobs_to_pending_uncharged_and_exits_143_on);
}

fn sigterm_returns_jobs_to_pending_uncharged_and_exits_143_on(env: Env) {
    let marker = unique_marker("term");
    let mut child = start_slow_run(&env, &marker, "30", 2, &["--kill-grace", "1"], "run.log");
    let sent = Instant::now();
    kill(child.id(), libc::SIGTERM);
    let status = wait_child(&mut child, Duration::from_secs(20));
    let text = log_of(&env, "run.log");
    assert_eq!(status.code(), Some(143), "{text}");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "took {:?}",
        sent.elapsed()
    );
    assert!(text.contains("SIGTERM"), "{text}");
    assert_clean_log(&text);

    assert_eq!(env.state_count("pending"), 3);
    assert_eq!(
        env.int("SELECT SUM(charged) FROM jobs"),
        0,
        "interrupted attempts were charged"
    );
    let attempts = env.rows("SELECT outcome, charged FROM attempts");
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a, &vec!["interrupted".to_string(), "0".into()]);
    }
    let runner =
        env.rows("SELECT CASE WHEN stopped_at IS NULL THEN 0 ELSE 1 END, stop_reason FROM runners");
    assert_eq!(runner, vec![vec!["1".to_string(), "interrupted".into()]]);
    wait_for(
        "the attempts' processes gone",
        Duration::from_secs(5),
        || !process_alive_with_env(&marker),
    );

    // The next run finishes them, with the attempt numbers carrying on.
    env.model_cmd("slow", &marked(&marker, "slow", "0.1"), &[]);
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 3);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'"),
        3
    );
    assert_invariants(&env);
}

#[test]
fn sigint_exits_130_with_jobs_pending() {
    let env = Env::new();
    let marker = unique_marker("int");
    let mut child = start_slow_run(&env, &marker, "30", 2, &["--kill-grace", "1"], "run.log");
    kill(child.id(), libc::SIGINT);
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{}", log_of(&env, "run.log"));
    assert_eq!(env.state_count("pending"), 3);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'interrupted'"),
        2
    );
    wait_for(
        "the attempts' processes gone",
        Duration::from_secs(5),
        || !process_alive_with_env(&marker),
    );
}

/// A second signal does not wait out the grace: a model that ignores SIGTERM dies at once.
#[test]
fn a_second_signal_kills_at_once() {
    let env = Env::new();
    let marker = unique_marker("twice");
    env.model_cmd("hang", &marked(&marker, "hang", ""), &[]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "hang", &input])
        .assert()
        .success();
    let mut child = start_run(&env, &["--kill-grace", "60"], "run.log");
    wait_for("the attempt to start", Duration::from_secs(20), || {
        env.state_count("running") == 1 && process_alive_with_env(&marker)
    });
    let sent = Instant::now();
    kill(child.id(), libc::SIGTERM);
    // Two signals sent before the first is handled would merge into one: wait until it is.
    wait_for("the first SIGTERM handled", Duration::from_secs(20), || {
        log_of(&env, "run.log").contains("received SIGTERM: stopping")
    });
    kill(child.id(), libc::SIGTERM);
    let status = wait_child(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{}", log_of(&env, "run.log"));
    assert!(
        sent.elapsed() < Duration::from_secs(15),
        "took {:?}",
        sent.elapsed()
    );
    wait_for("the hang group gone", Duration::from_secs(5), || {
        !process_alive_with_env(&marker)
    });
}

/// Two runners on one file share 200 jobs: each done exactly once, and no "database is locked"
/// reaches the user (LESSONS 18; DESIGN: several runners).
#[test]
fn two_runners_share_200_jobs_each_done_once() {
    two_runners_share_200_jobs_each_done_once_on(Env::new());
}

#[test]
fn two_runners_share_200_jobs_each_done_once_postgres() {
    crate::on_postgres!(two_runners_share_200_jobs_each_done_once_on);
}

fn two_runners_share_200_jobs_each_done_once_on(env: Env) {
    let marker = unique_marker("two");
    let gate = env.dir.path().join("go").to_string_lossy().into_owned();
    env.model_cmd(
        "echo",
        &gated(&marker, &gate, "echo"),
        &["--concurrency", "4"],
    );
    let input = env.prompts("p.csv", 200);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    // Both runners hold attempts before any can end: they really share, however loaded the
    // machine is.
    let mut a = start_run(&env, &[], "a.log");
    wait_for("A's four attempts", Duration::from_secs(20), || {
        env.state_count("running") == 4
    });
    let mut b = start_run(&env, &[], "b.log");
    wait_for("B's four attempts too", Duration::from_secs(20), || {
        env.int("SELECT COUNT(DISTINCT runner_id) FROM jobs WHERE state = 'running'") == 2
            && env.state_count("running") == 8
    });
    std::fs::write(&gate, "").unwrap();
    let sa = wait_child(&mut a, Duration::from_secs(120));
    let sb = wait_child(&mut b, Duration::from_secs(120));
    let (la, lb) = (log_of(&env, "a.log"), log_of(&env, "b.log"));
    assert_eq!(sa.code(), Some(0), "{la}");
    assert_eq!(sb.code(), Some(0), "{lb}");
    assert_clean_log(&la);
    assert_clean_log(&lb);
    assert_eq!(env.state_count("done"), 200);
    assert_eq!(env.int("SELECT COUNT(*) FROM attempts"), 200);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'"),
        200
    );
    assert_eq!(env.int("SELECT COUNT(DISTINCT job_id) FROM attempts"), 200);
    assert_invariants(&env);
    let split = env.rows("SELECT runner_id, COUNT(*) FROM attempts GROUP BY runner_id");
    eprintln!("attempts per runner: {split:?}");
    assert_eq!(split.len(), 2, "{split:?}");
    assert!(
        split.iter().all(|r| r[1].parse::<i64>().unwrap() >= 4),
        "{split:?}"
    );
}

/// `report jobs … --format ids | resume --ids-file -`: exactly the timed-out jobs come back
/// (LESSONS 13).
#[test]
fn ids_pipeline_reruns_exactly_the_timed_out_jobs() {
    let env = Env::new();
    let marker = unique_marker("ids");
    let one = ["--max-attempts", "1"];
    env.model_cmd(
        "to",
        &marked(&marker, "slow", "20"),
        &["--timeout", "0.5", one[0], one[1]],
    );
    env.model("ex", "exit1", &one);
    env.model("ok", "echo", &one);
    let input = env.prompts("p.csv", 3);
    env.cmd(&[
        "enqueue", "--model", "to", "--model", "ex", "--model", "ok", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run", "--kill-grace", "0.2"]).assert().code(3);
    assert_eq!(env.state_count("failed"), 6);

    let out = env
        .cmd(&[
            "report",
            "jobs",
            "--state",
            "failed",
            "--outcome",
            "timeout",
            "--format",
            "ids",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ids = String::from_utf8(out.stdout).unwrap();
    let expected: Vec<String> = env
        .rows("SELECT id FROM jobs WHERE model = 'to' ORDER BY id")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(ids.lines().collect::<Vec<_>>(), expected);

    env.cmd(&["resume", "--ids-file", "-"])
        .write_stdin(ids.clone())
        .assert()
        .success()
        .stdout(line_starting("resumed 3 job(s)"));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'to' AND state = 'pending'"),
        3
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'ex' AND state = 'failed'"),
        3
    );
    // Given a longer timeout, they finish; the others are not touched.
    env.model_cmd("to", &marked(&marker, "slow", "0.1"), &["--timeout", "10"]);
    env.cmd(&["run", "--ids-file", "-"])
        .write_stdin(ids)
        .assert()
        .code(0);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'to' AND state = 'done'"),
        3
    );
    assert_eq!(env.state_count("failed"), 3);

    // A CSV listing with a header row works as an ids file too.
    let out = env
        .cmd(&["report", "jobs", "--state", "failed", "--format", "csv"])
        .output()
        .unwrap();
    env.cmd(&["resume", "--ids-file", "-", "--extra-attempts", "1"])
        .write_stdin(out.stdout)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "resumed 3 job(s) with 1 more attempt(s) each",
        ));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'ex' AND state = 'pending' AND max_attempts = 2"),
        3
    );
    assert_invariants(&env);
}

/// An ids file naming a job that does not exist: exit 2, the unknown ids listed, nothing changed.
#[test]
fn unknown_ids_are_listed_and_change_nothing() {
    let env = Env::new();
    env.model("ex", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "ex", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    let before = env.dump();
    let file = env.write("ids.txt", "# the failed ones\n1\n\n999\n2\n1000\n");
    for cmd in [vec!["resume"], vec!["run"], vec!["report", "jobs"]] {
        let mut args = cmd.clone();
        args.extend(["--ids-file", file.as_str()]);
        env.cmd(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("2 unknown job id(s)"))
            .stderr(predicate::str::contains("999, 1000"));
        assert_eq!(env.dump(), before, "{cmd:?} changed the database");
    }
    // A line that is not an id at all is named.
    let file = env.write("bad.txt", "1\nnot-an-id\n");
    env.cmd(&["resume", "--ids-file", &file])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 2"));
    assert_eq!(env.dump(), before);
    // A missing ids file is a usage error too.
    env.cmd(&["resume", "--ids-file", "/no/such/ids.txt"])
        .assert()
        .code(2);
}

/// kill -9 a runner: `reap` finds its jobs at once (the pid is gone, no lease wait), lists them
/// and says how many; the attempts end `lost` (LESSONS 3).
#[test]
fn reap_finds_a_killed_runners_jobs_at_once() {
    reap_finds_a_killed_runners_jobs_at_once_on(Env::new());
}

#[test]
fn reap_finds_a_killed_runners_jobs_at_once_postgres() {
    crate::on_postgres!(reap_finds_a_killed_runners_jobs_at_once_on);
}

fn reap_finds_a_killed_runners_jobs_at_once_on(env: Env) {
    let marker = unique_marker("reap");
    env.cmd(&["enqueue", "--model", "slow", &env.prompts("p.csv", 3)])
        .assert()
        .success();
    // Nothing to reap yet, and it says so.
    env.cmd(&["reap"])
        .assert()
        .success()
        .stderr(line("llmbatch: reaped 0 orphaned job(s)"));
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "3"),
        &["--concurrency", "2"],
    );
    // The default lease (30 s) would hold them far longer than this test waits.
    let mut child = start_run(&env, &[], "run.log");
    wait_for("attempts in flight", Duration::from_secs(20), || {
        env.state_count("running") == 2
    });
    let pid = child.id();
    kill(pid, libc::SIGKILL);
    wait_child(&mut child, Duration::from_secs(10));

    let runners = env.report_json(&["runners"]);
    let row = &runners["runners"][0];
    assert_eq!(row["pid"], pid);
    assert_eq!(row["state"], "dead", "{runners}");
    assert_eq!(row["jobs_held"], 2);

    env.cmd(&["reap", "--dry-run"])
        .assert()
        .success()
        .stderr(line("llmbatch: would reap 2 orphaned job(s)"));
    assert_eq!(env.state_count("running"), 2, "--dry-run changed something");

    let out = env.cmd(&["reap", "--format", "json"]).output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reaped = doc["reaped"].as_array().unwrap();
    assert_eq!(reaped.len(), 2, "{doc}");
    for r in reaped {
        assert_eq!(r["model"], "slow");
        assert_eq!(r["state"], "pending");
        assert_eq!(r["runner"], format!("{}:{pid}", hostname()));
        assert!(r["reason"].as_str().unwrap().contains("gone"), "{r}");
    }
    assert_eq!(env.state_count("pending"), 3);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'"),
        2
    );
    env.cmd(&["reap"])
        .assert()
        .success()
        .stderr(line("llmbatch: reaped 0 orphaned job(s)"));
    let runners = env.report_json(&["runners"]);
    assert_eq!(runners["runners"][0]["state"], "stopped");
    assert_eq!(runners["runners"][0]["stop_reason"], "died");
    assert_invariants(&env);
    wait_for("the orphaned attempts end", Duration::from_secs(10), || {
        !process_alive_with_env(&marker)
    });
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `--max-runtime`: stop claiming after the duration, let attempts in flight finish, exit 0.
#[test]
fn max_runtime_stops_claiming_and_lets_attempts_finish() {
    let env = Env::new();
    let marker = unique_marker("maxrt");
    env.model_cmd("slow", &marked(&marker, "slow", "1"), &[]);
    let input = env.prompts("p.csv", 6);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let started = Instant::now();
    env.cmd(&["run", "--max-runtime", "1500ms"])
        .assert()
        .code(0);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let done = env.state_count("done");
    assert!((1..6).contains(&done), "{done} done");
    assert_eq!(env.state_count("pending"), 6 - done);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome <> 'ok'"),
        0
    );
    assert_invariants(&env);
}

/// `report runners` shows a live runner with its jobs and fresh heartbeat; `report status` the
/// true age of a running attempt, computed at report time (LESSONS 10).
#[test]
fn report_runners_and_true_running_ages() {
    let env = Env::new();
    let marker = unique_marker("runners");
    let gate = env.dir.path().join("go").to_string_lossy().into_owned();
    env.model_cmd("slow", &gated(&marker, &gate, "echo"), &[]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let mut child = start_run(&env, &["--lease", "1s"], "run.log");
    wait_for("the attempt to start", Duration::from_secs(20), || {
        env.state_count("running") == 1
    });
    // The attempt holds until the gate opens: wait for its age, not for a guessed time.
    let started = env.int("SELECT started_at FROM attempts");
    wait_for("the attempt 1.5 s old", Duration::from_secs(20), || {
        now_ms() - started >= 1500
    });
    let doc = env.report_json(&["runners"]);
    let row = &doc["runners"][0];
    assert_eq!(row["pid"], child.id());
    assert_eq!(row["state"], "live");
    assert_eq!(row["jobs_held"], 1);
    assert!(row["heartbeat_age_s"].as_f64().unwrap() < 5.0, "{row}");

    let doc = env.report_json(&["status"]);
    let age = doc["running"][0]["age_s"].as_f64().unwrap();
    let true_age = (now_ms() - started) as f64 / 1000.0;
    assert!(
        age >= 1.5 && age <= true_age + 0.01,
        "age {age}, true {true_age}"
    );
    assert_eq!(doc["status"][0]["running"], 1);
    assert!(doc["status"][0]["oldest_running_s"].as_f64().unwrap() >= 1.5);

    std::fs::write(&gate, "").unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let doc = env.report_json(&["runners"]);
    assert_eq!(doc["runners"][0]["state"], "stopped");
    assert_eq!(doc["runners"][0]["stop_reason"], "finished");
    assert_eq!(doc["runners"][0]["jobs_held"], 0);
}

/// `--watch` keeps polling for new work; a signal ends it.
#[test]
fn watch_picks_up_new_work_until_signalled() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.cmd(&[
        "enqueue",
        "--model",
        "echo",
        "--batch",
        "first",
        &env.prompts("a.csv", 1),
    ])
    .assert()
    .success();
    let mut child = start_run(&env, &["--watch", "--poll", "0.2"], "run.log");
    wait_for("the first job", Duration::from_secs(20), || {
        env.state_count("done") == 1
    });
    env.cmd(&[
        "enqueue",
        "--model",
        "echo",
        "--batch",
        "second",
        &env.prompts("b.csv", 2),
    ])
    .assert()
    .success();
    wait_for("the new jobs", Duration::from_secs(20), || {
        env.state_count("done") == 3
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "--watch exited on its own"
    );
    kill(child.id(), libc::SIGTERM);
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "{}", log_of(&env, "run.log"));
}

/// A runner killed but not yet waited for by its parent is a zombie: dead, not live. `reap`
/// must not wait out its lease.
#[test]
fn a_zombie_runner_is_dead() {
    let env = Env::new();
    let marker = unique_marker("zombie");
    env.model_cmd("slow", &marked(&marker, "slow", "3"), &[]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let mut child = start_run(&env, &[], "run.log");
    wait_for("the attempt to start", Duration::from_secs(20), || {
        env.state_count("running") == 1
    });
    kill(child.id(), libc::SIGKILL);
    // Not waited for: it stays a zombie until the end of this test.
    wait_for("the runner to be a zombie", Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    });
    assert_eq!(env.report_json(&["runners"])["runners"][0]["state"], "dead");
    env.cmd(&["reap"])
        .assert()
        .success()
        .stderr(line("llmbatch: reaped 1 orphaned job(s)"));
    assert_eq!(env.state_count("pending"), 1);
    wait_child(&mut child, Duration::from_secs(10));
    wait_for("the orphaned attempt ends", Duration::from_secs(10), || {
        !process_alive_with_env(&marker)
    });
}

/// Runners heal each other: B, working, notices A's death on its periodic reap (A's pid is
/// gone) and finishes A's jobs with no restart and no command typed (DESIGN: Recovery).
#[test]
fn a_live_runner_reaps_a_dead_ones_jobs_while_it_works() {
    let env = Env::new();
    let marker = unique_marker("heal");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "1"),
        &["--concurrency", "2"],
    );
    let input = env.prompts("p.csv", 6);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let mut a = start_run(&env, &[], "a.log");
    wait_for("A's attempts", Duration::from_secs(20), || {
        env.state_count("running") == 2
    });
    let mut b = start_run(&env, &["--lease", "2s"], "b.log");
    wait_for("B's attempts", Duration::from_secs(20), || {
        env.state_count("running") == 4
    });
    kill(a.id(), libc::SIGKILL);
    wait_child(&mut a, Duration::from_secs(10));
    let status = wait_child(&mut b, Duration::from_secs(60));
    let text = log_of(&env, "b.log");
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("is gone; back to pending"), "{text}");
    assert_clean_log(&text);
    assert_eq!(env.state_count("done"), 6);
    assert!(env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'") >= 1);
    assert_invariants(&env);
    wait_for("A's orphaned attempts end", Duration::from_secs(10), || {
        !process_alive_with_env(&marker)
    });
}

/// An empty ids list selects nothing — never everything.
#[test]
fn an_empty_ids_file_selects_nothing() {
    let env = Env::new();
    env.model("ex", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "ex", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    let before = env.dump();
    env.cmd(&["resume", "--ids-file", "-"])
        .write_stdin("")
        .assert()
        .success()
        .stdout(line_starting("resumed 0 job(s)"));
    env.cmd(&["run", "--ids-file", "-"])
        .write_stdin("# nothing\n")
        .assert()
        .code(0);
    // Runner rows aside, nothing changed.
    let strip = |d: Vec<String>| -> Vec<String> {
        d.into_iter()
            .filter(|l| !l.starts_with("runners") && !l.starts_with("table runners"))
            .collect()
    };
    assert_eq!(strip(env.dump()), strip(before));
    env.cmd(&["report", "jobs", "--ids-file", "-", "--format", "ids"])
        .write_stdin("")
        .assert()
        .success()
        .stdout("");
}

/// Losses are not charged, but they are bounded: a job lost more times than its budget is
/// `failed`, not retried forever; `resume --outcome lost` brings exactly those back.
#[test]
fn a_job_lost_beyond_its_budget_fails_and_resume_by_outcome_brings_it_back() {
    let env = Env::new();
    let marker = unique_marker("lastlost");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "3"),
        &["--max-attempts", "1"],
    );
    env.model("ex", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "slow", "--model", "ex", &input])
        .assert()
        .success();
    for (round, expected) in [(1, "pending"), (2, "failed")] {
        let mut child = start_run(&env, &[], "run.log");
        wait_for("the slow attempt to start", Duration::from_secs(20), || {
            env.int("SELECT COUNT(*) FROM jobs WHERE model = 'slow' AND state = 'running'") == 1
                && env.int("SELECT COUNT(*) FROM jobs WHERE model = 'ex' AND state = 'failed'") == 1
        });
        kill(child.id(), libc::SIGKILL);
        wait_child(&mut child, Duration::from_secs(10));
        env.cmd(&["reap", "--format", "csv"])
            .assert()
            .success()
            .stdout(predicate::str::is_match(format!(r"(?m)^\d+,slow,.*,{expected}$")).unwrap());
        let slow = env.rows("SELECT state, last_outcome, charged FROM jobs WHERE model = 'slow'");
        assert_eq!(
            slow,
            vec![vec![expected.to_string(), "lost".into(), "0".into()]],
            "round {round}"
        );
    }

    env.cmd(&["resume", "--outcome", "lost"])
        .assert()
        .success()
        .stdout(line_starting("resumed 1 job(s)"));
    assert_eq!(
        env.rows("SELECT model, state FROM jobs ORDER BY model"),
        vec![
            vec!["ex".to_string(), "failed".into()],
            vec!["slow".to_string(), "pending".into()]
        ]
    );
    env.model_cmd("slow", &marked(&marker, "slow", "0.1"), &[]);
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(
        env.rows("SELECT number, outcome FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.model = 'slow' ORDER BY number"),
        vec![
            vec!["1".to_string(), "lost".into()],
            vec!["2".to_string(), "lost".into()],
            vec!["3".to_string(), "ok".into()]
        ]
    );
    assert_charges_add_up(&env);
    assert_invariants(&env);
    wait_for("the orphaned attempt ends", Duration::from_secs(10), || {
        !process_alive_with_env(&marker)
    });
}

/// The pid-reuse and reboot guards: a live process with the runner's pid but another start time
/// is not the runner; a runner recorded under another boot is dead. Both are known at once,
/// without waiting for the lease.
#[test]
fn pid_reuse_and_reboot_are_recognised() {
    for (fix, reason) in [
        ("UPDATE runners SET pid_start = '1'", "is gone"),
        (
            "UPDATE runners SET boot_id = 'an-earlier-boot'",
            "earlier boot",
        ),
    ] {
        let env = Env::new();
        let marker = unique_marker("guard");
        env.model_cmd("slow", &marked(&marker, "slow", "3"), &[]);
        let input = env.prompts("p.csv", 1);
        env.cmd(&["enqueue", "--model", "slow", &input])
            .assert()
            .success();
        let mut child = start_run(&env, &[], "run.log");
        wait_for("the attempt to start", Duration::from_secs(20), || {
            env.state_count("running") == 1
        });
        // Alive, lease fresh: only the guard can tell.
        kill(child.id(), libc::SIGSTOP);
        env.cmd(&["reap"])
            .assert()
            .success()
            .stderr(line("llmbatch: reaped 0 orphaned job(s)"));
        env.conn().execute(fix, []).unwrap();
        env.cmd(&["reap"])
            .assert()
            .success()
            .stdout(predicate::str::contains(reason))
            .stderr(line("llmbatch: reaped 1 orphaned job(s)"));
        assert_eq!(env.state_count("pending"), 1);
        kill(child.id(), libc::SIGKILL);
        wait_child(&mut child, Duration::from_secs(10));
        wait_for("the orphaned attempt ends", Duration::from_secs(10), || {
            !process_alive_with_env(&marker)
        });
    }
}

/// kill -9 of a runner does not leave its attempts working: the child dies with the runner and
/// what the child started is killed when the job is reaped.
#[test]
fn a_killed_runners_hanging_attempts_do_not_outlive_it() {
    let env = Env::new();
    let marker = unique_marker("orphan");
    env.model_cmd("hang", &marked(&marker, "hang", ""), &["--timeout", "120"]);
    env.cmd(&["enqueue", "--model", "hang", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    let mut child = start_run(&env, &[], "run.log");
    // hang starts a grandchild: wait for both processes.
    wait_for(
        "the attempt and its grandchild",
        Duration::from_secs(20),
        || pids_with_env(&marker).len() >= 2,
    );
    kill(child.id(), libc::SIGKILL);
    wait_child(&mut child, Duration::from_secs(10));
    env.cmd(&["reap"])
        .assert()
        .success()
        .stderr(line("llmbatch: reaped 1 orphaned job(s)"));
    wait_for(
        "every process of the dead runner's attempt gone",
        Duration::from_secs(10),
        || !process_alive_with_env(&marker),
    );
    assert_eq!(env.state_count("pending"), 1);
}

/// systemd's default stop signals the whole cgroup: children die of SIGTERM together with the
/// runner. Those attempts were interrupted, not crashes: nothing is charged.
#[test]
fn sigterm_to_runner_and_children_together_charges_nothing() {
    let env = Env::new();
    let marker = unique_marker("cgroup");
    let mut child = start_slow_run(&env, &marker, "30", 2, &["--kill-grace", "5"], "run.log");
    for pid in pids_with_env(&marker) {
        kill(pid, libc::SIGTERM);
    }
    kill(child.id(), libc::SIGTERM);
    let status = wait_child(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "{}", log_of(&env, "run.log"));
    assert_eq!(env.state_count("pending"), 3);
    assert_eq!(env.int("SELECT SUM(charged) FROM jobs"), 0);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'interrupted' AND charged = 0"),
        2
    );
}

/// With `--jobs` smaller than the lanes' concurrency, every lane still gets slots: a slow
/// model first in name order cannot starve a fast one.
#[test]
fn jobs_cap_is_shared_between_lanes() {
    let env = Env::new();
    env.model("a-slow", "slow", &["--concurrency", "2"]);
    env.model_cmd("z-fast", &fake("echo"), &[]);
    env.model_cmd(
        "a-slow",
        &format!("'{}' 1.5", fake("slow")),
        &["--concurrency", "2"],
    );
    let input = env.prompts("p.csv", 4);
    env.cmd(&["enqueue", "--model", "a-slow", "--model", "z-fast", &input])
        .assert()
        .success();
    env.cmd(&["run", "--jobs", "2"]).assert().code(0);
    let fast_done = env.int("SELECT MAX(finished_at) FROM attempts WHERE model = 'z-fast'");
    let slow_done = env.int("SELECT MAX(finished_at) FROM attempts WHERE model = 'a-slow'");
    assert!(
        fast_done + 2000 < slow_done,
        "the fast lane waited for the slow one: fast {fast_done}, slow {slow_done}"
    );
}

/// `--format ids` lists job ids only: `report failures` gives the failed jobs, and a section
/// that lists no jobs is refused rather than printing other ids.
#[test]
fn format_ids_lists_only_job_ids() {
    let env = Env::new();
    env.model("ok", "echo", &[]);
    env.model("bad", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "ok", "--model", "bad", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    let failed = env.rows("SELECT id FROM jobs WHERE state = 'failed' ORDER BY id");
    let expected: String = failed.iter().map(|r| format!("{}\n", r[0])).collect();
    env.cmd(&["report", "failures", "--format", "ids"])
        .assert()
        .success()
        .stdout(expected.clone());
    env.cmd(&["report", "failures", "--format", "ids"])
        .pipe_into_resume(&env, 2);
    env.cmd(&["report", "runners", "--format", "ids"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("lists jobs"));
}

trait PipeIntoResume {
    fn pipe_into_resume(self, env: &Env, expected: usize);
}

impl PipeIntoResume for assert_cmd::Command {
    fn pipe_into_resume(mut self, env: &Env, expected: usize) {
        let ids = self.output().unwrap().stdout;
        env.cmd(&["resume", "--ids-file", "-"])
            .write_stdin(ids)
            .assert()
            .success()
            .stdout(line_starting(&format!("resumed {expected} job(s)")));
    }
}

/// A database held by another writer past the busy timeout while the last results are being
/// recorded: the runner keeps them and records them once the lock is gone, instead of leaving
/// their jobs `running` and exiting as if all were well.
#[test]
fn results_wait_out_a_locked_database() {
    let env = Env::new();
    let marker = unique_marker("locked");
    let gate = env.dir.path().join("go").to_string_lossy().into_owned();
    env.model_cmd("slow", &gated(&marker, &gate, "echo"), &[]);
    env.cmd(&["enqueue", "--model", "slow", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    let mut child = env
        // --limit: no more claims, so only unrecorded results can keep the runner working.
        .spawn_cmd(&["run", "--limit", "1"])
        .env("LLMBATCH_BUSY_TIMEOUT", "300ms")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(env.dir.path().join("run.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    wait_for("the attempt running", Duration::from_secs(20), || {
        env.state_count("running") == 1
    });
    // Another writer holds the database while the attempt ends, until the runner has given
    // up waiting for it at least once (its busy timeout is 300 ms).
    let conn = env.conn();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::fs::write(&gate, "").unwrap();
    wait_for(
        "the runner to meet the lock",
        Duration::from_secs(30),
        || log_of(&env, "run.log").contains("database busy"),
    );
    assert_eq!(env.state_count("running"), 1);
    conn.execute_batch("COMMIT").unwrap();
    let status = wait_child(&mut child, Duration::from_secs(30));
    let text = log_of(&env, "run.log");
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("database busy"), "{text}");
    assert_eq!(env.state_count("done"), 1, "{text}");
    assert_eq!(env.state_count("running"), 0);
    assert_invariants(&env);
}

/// A closed terminal (SIGHUP) stops the runner as cleanly as SIGTERM: exit 129, jobs pending,
/// nothing charged.
#[test]
fn sighup_exits_129_with_jobs_pending_uncharged() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let marker = unique_marker("hup");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "30"),
        &["--concurrency", "2"],
    );
    env.cmd(&["enqueue", "--model", "slow", &env.prompts("p.csv", 3)])
        .assert()
        .success();
    let mut cmd = env.spawn_cmd(&["run", "--kill-grace", "1"]);
    // Whatever this test was started under (nohup ignores SIGHUP), the runner gets the default.
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(env.dir.path().join("run.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    wait_for("attempts in flight", Duration::from_secs(20), || {
        env.state_count("running") == 2 && process_alive_with_env(&marker)
    });
    kill(child.id(), libc::SIGHUP);
    let status = wait_child(&mut child, Duration::from_secs(20));
    let text = log_of(&env, "run.log");
    assert_eq!(status.code(), Some(129), "{text}");
    assert!(text.contains("SIGHUP"), "{text}");
    assert_eq!(env.state_count("pending"), 3);
    assert_eq!(env.int("SELECT SUM(charged) FROM jobs"), 0);
    wait_for(
        "the attempts' processes gone",
        Duration::from_secs(5),
        || !process_alive_with_env(&marker),
    );
}

/// Per job: what was charged is the sum of its attempts' charges.
fn assert_charges_add_up(env: &Env) {
    let off = env.rows(
        "SELECT j.id, j.charged, COALESCE(SUM(a.charged), 0) FROM jobs j
         LEFT JOIN attempts a ON a.job_id = j.id GROUP BY j.id
         HAVING j.charged <> COALESCE(SUM(a.charged), 0)",
    );
    assert!(
        off.is_empty(),
        "jobs.charged <> SUM(attempts.charged): {off:?}"
    );
}

/// A fast lane claims jobs ahead of its one running slot; kill -9 leaves those claimed but
/// never started. Reaped, their attempts are `lost` and charge nothing; the next run does
/// them all, each with one charged attempt (issue 9, defect 9).
#[test]
fn claims_ahead_lost_with_a_killed_runner_are_not_charged() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.cmd(&["enqueue", "--model", "echo", &env.prompts("p.csv", 2000)])
        .assert()
        .success();
    let mut child = start_run(&env, &[], "run.log");
    // Concurrency 1: more than one job running means claims ahead.
    wait_for("jobs claimed ahead", Duration::from_secs(60), || {
        env.state_count("running") >= 2
    });
    kill(child.id(), libc::SIGKILL);
    wait_child(&mut child, Duration::from_secs(10));
    env.cmd(&["reap"]).assert().success();
    let lost = env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost'");
    assert!(lost >= 2, "{lost} lost");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'lost' AND charged <> 0"),
        0
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE last_outcome = 'lost' AND charged <> 0"),
        0
    );
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 2000);
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE charged <> 1"), 0);
    assert_charges_add_up(&env);
    assert_invariants(&env);
}

/// A runner that cannot write its results (the disk filled up) exits with its jobs left
/// `running`. The next run reaps them as `lost` without charging them, and does them.
#[test]
fn jobs_left_running_by_a_write_error_are_not_charged() {
    let env = Env::new();
    env.model(
        "echo",
        "echo",
        &["--max-attempts", "1", "--concurrency", "2"],
    );
    env.cmd(&["enqueue", "--model", "echo", &env.prompts("p.csv", 2)])
        .assert()
        .success();
    // Every move of a job out of `running` fails, as a full disk would make it.
    env.conn()
        .execute_batch(
            "CREATE TRIGGER disk_full BEFORE UPDATE OF state ON jobs WHEN OLD.state = 'running'
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .unwrap();
    let out = env.cmd(&["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(env.state_count("running"), 2);
    env.conn().execute_batch("DROP TRIGGER disk_full").unwrap();

    // A budget of one attempt: a charged loss would fail both jobs.
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(
        env.rows("SELECT job_id, number, outcome, charged FROM attempts ORDER BY job_id, number"),
        vec![
            vec!["1".to_string(), "1".into(), "lost".into(), "0".into()],
            vec!["1".to_string(), "2".into(), "ok".into(), "1".into()],
            vec!["2".to_string(), "1".into(), "lost".into(), "0".into()],
            vec!["2".to_string(), "2".into(), "ok".into(), "1".into()],
        ]
    );
    assert_charges_add_up(&env);
    assert_invariants(&env);
}

/// A job that kills every runner that takes it is not charged for it, yet it ends: lost more
/// times than its attempt budget, it is `failed`.
#[test]
fn a_job_that_kills_its_runner_ends_failed() {
    let env = Env::new();
    env.model_cmd(
        "killer",
        "sh -c 'cat >/dev/null; kill -9 $PPID; sleep 5'",
        &["--max-attempts", "2"],
    );
    env.cmd(&["enqueue", "--model", "killer", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    let mut codes = Vec::new();
    for _ in 0..5 {
        let out = env.cmd(&["run"]).output().unwrap();
        codes.push(out.status.code());
        if env.state_count("failed") == 1 {
            break;
        }
    }
    // Lost once more than its budget of two: three runs killed (-9: no exit code), then one
    // that reaps the job as failed and exits 3.
    assert_eq!(codes, vec![None, None, None, Some(3)]);
    assert_eq!(
        env.rows("SELECT state, last_outcome, charged FROM jobs"),
        vec![vec!["failed".to_string(), "lost".into(), "0".into()]]
    );
    assert_eq!(
        env.rows("SELECT number, outcome, charged FROM attempts ORDER BY number"),
        vec![
            vec!["1".to_string(), "lost".into(), "0".into()],
            vec!["2".to_string(), "lost".into(), "0".into()],
            vec!["3".to_string(), "lost".into(), "0".into()],
        ]
    );
    assert_charges_add_up(&env);
}
