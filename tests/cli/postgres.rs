//! One queue for several hosts (issue 12): runners "on different hosts" (each in its own UTS
//! namespace, so the kernel gives it its own host name), one with its clock ten minutes ahead
//! and one ten minutes behind, sharing a PostgreSQL queue through kill -9; every command on
//! PostgreSQL; the same report numbers on both engines.

use crate::common::*;
use std::process::{Child, Stdio};
use std::time::Duration;

/// Whether this machine lets a test give a process its own host name (root: `unshare -u`).
fn can_unshare() -> bool {
    let ok = std::process::Command::new("unshare")
        .args(["-u", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to run `unshare -u`"
        );
        eprintln!("unshare -u is not permitted here (needs root): test skipped");
    }
    ok
}

/// `llmbatch run ARGS` on host `host` (its own UTS namespace), this process's clock off by
/// `skew` (e.g. "+10m"), its log in `log`.
fn run_on_host(env: &Env, host: &str, skew: &str, args: &[&str], log: &str) -> Child {
    let file = std::fs::File::create(env.dir.path().join(log)).unwrap();
    let mut c = std::process::Command::new("unshare");
    c.args(["-u", "sh", "-c", "hostname \"$0\" && exec \"$@\"", host])
        .arg(bin_path())
        .arg("--db")
        .arg(&env.db)
        .arg("run")
        .args(args)
        .env_remove("LLMBATCH_DB")
        .env_remove("RUST_LOG")
        .env("LLMBATCH_TEST_CLOCK_SKEW", skew)
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    c.spawn().expect("start a runner on its own host")
}

fn log_of(env: &Env, log: &str) -> String {
    std::fs::read_to_string(env.dir.path().join(log)).unwrap_or_default()
}

/// Three hosts share one queue: gpu-a (true clock), gpu-b (ten minutes ahead) and gpu-c (ten
/// minutes behind). gpu-a is killed with -9 mid-work. Its jobs are reaped by the others only
/// once its lease has run out on the database's clock (it is on another host: no pid shortcut),
/// no live runner loses a job to a skewed clock, and every job is done exactly once.
#[test]
fn hosts_with_skewed_clocks_share_one_queue_through_kill_9() {
    if !can_unshare() {
        return;
    }
    let Some(env) = Env::with_engine(Engine::Postgres) else {
        return;
    };
    let marker = unique_marker("hosts");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "0.3"),
        &["--concurrency", "2", "--max-attempts", "100"],
    );
    let input = env.prompts("p.csv", 60);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let args = ["--lease", "2s", "--kill-grace", "0.2"];
    let mut a = run_on_host(&env, "gpu-a", "+0s", &args, "a.log");
    wait_for("gpu-a at work", Duration::from_secs(30), || {
        env.int("SELECT COUNT(*) FROM jobs j JOIN runners r ON r.id = j.runner_id WHERE j.state = 'running' AND r.host = 'gpu-a'") > 0
    });
    let mut b = run_on_host(&env, "gpu-b", "+10m", &args, "b.log");
    let mut c = run_on_host(&env, "gpu-c", "-10m", &args, "c.log");
    wait_for("all three hosts at work", Duration::from_secs(30), || {
        env.int(
            "SELECT COUNT(DISTINCT r.host) FROM attempts a JOIN runners r ON r.id = a.runner_id",
        ) == 3
    });
    kill(a.id(), libc::SIGKILL);
    wait_child(&mut a, Duration::from_secs(10));
    let a_id = env.int("SELECT id FROM runners WHERE host = 'gpu-a'");
    let held = env.int(&format!(
        "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND runner_id = {a_id}"
    ));
    let sb = wait_child(&mut b, Duration::from_secs(120));
    let sc = wait_child(&mut c, Duration::from_secs(120));
    let (lb, lc) = (log_of(&env, "b.log"), log_of(&env, "c.log"));
    assert_eq!(sb.code(), Some(0), "{lb}");
    assert_eq!(sc.code(), Some(0), "{lc}");
    for text in [&lb, &lc] {
        assert!(
            !text.contains("discarded"),
            "a live runner lost a job:\n{text}"
        );
        assert!(
            !text.contains("panicked") && !text.contains("error:"),
            "{text}"
        );
    }
    // Every job done once, with one ok attempt.
    assert_eq!(env.state_count("done"), 60);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'"),
        60
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM (SELECT job_id FROM attempts WHERE outcome = 'ok' GROUP BY job_id HAVING COUNT(*) > 1) t"),
        0
    );
    // Only the killed host's attempts were lost: as many as it held.
    let lost = env.rows("SELECT runner_id FROM attempts WHERE outcome = 'lost'");
    assert_eq!(lost.len() as i64, held, "{lost:?}");
    assert!(lost.iter().all(|r| r[0] == a_id.to_string()), "{lost:?}");
    // …and only after its lease ran out on the database's clock: its last heartbeat plus the
    // lease, never earlier (a pid shortcut or a skewed clock would have reaped at once).
    assert_eq!(
        env.int(&format!(
            "SELECT COUNT(*) FROM attempts a, runners r WHERE a.outcome = 'lost' AND r.id = {a_id}
               AND a.finished_at < r.heartbeat_at + 2000"
        )),
        0,
        "reaped before the lease expired"
    );
    let reaper = if lb.contains("on gpu-a sent no heartbeat") {
        &lb
    } else {
        &lc
    };
    if held > 0 {
        assert!(
            reaper.contains("its runner on gpu-a sent no heartbeat and its lease expired"),
            "b:\n{lb}\nc:\n{lc}"
        );
    }
    // Each runner's host is shown.
    let doc = env.report_json(&["runners"]);
    let mut hosts: Vec<String> = doc["runners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap().to_string())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["gpu-a", "gpu-b", "gpu-c"], "{doc}");
    wait_for("fixture processes gone", Duration::from_secs(20), || {
        !process_alive_with_env(&marker)
    });
}
