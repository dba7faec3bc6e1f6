//! One queue for several hosts (issue 12): runners "on different hosts" (each in its own UTS
//! namespace, so the kernel gives it its own host name), one with its clock ten minutes ahead
//! and one ten minutes behind, sharing a PostgreSQL queue through kill -9; every command on
//! PostgreSQL; the same report numbers on both engines.

use crate::common::*;
use crate::fake_server::*;
use serde_json::json;
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

/// A history that exercises every report: several batches, repeats, retries, every outcome
/// (timeout, exit, crash, spawn, http, unavailable, empty, parse, throttled, cached and the
/// rest), Ollama timings, streamed metrics, tokens and prices, two graders and a broken one,
/// a running job and a live runner, ties in durations and times. Made on SQLite by the binary
/// (plus a few rows by SQL for what a test cannot provoke quickly: lost, interrupted, stall).
fn rich_history(env: &Env, server: &Server, down: &str) {
    let http = |name: &str, backend: &str, url: &str, extra: &[&str]| {
        let mut args = vec![
            "models",
            "set",
            name,
            "--backend",
            backend,
            "--endpoint",
            url,
        ];
        args.extend_from_slice(extra);
        env.cmd(&args).assert().success();
    };
    env.model("fast", "echo", &["--timeout", "30", "--concurrency", "2"]);
    env.model("broken", "exit1", &["--max-attempts", "1"]);
    env.model("flaky", "flaky", &["--max-attempts", "3"]);
    env.model("crashy", "crash", &["--max-attempts", "1"]);
    env.model("mute", "empty", &["--max-attempts", "1"]);
    env.model_cmd(
        "sleepy",
        &format!("{} 5", fake("slow")),
        &["--timeout", "0.3", "--max-attempts", "1"],
    );
    env.model_cmd("nocmd", "/nonexistent/llmbatch-model", &[]);
    http("oll", "ollama", &server.url, &["--timeout", "30"]);
    http("cut", "ollama", &server.url, &["--timeout", "30"]);
    http("busy", "ollama", &server.url, &["--timeout", "30"]);
    http("e500", "ollama", &server.url, &["--max-attempts", "1"]);
    http(
        "oai",
        "openai",
        &server.url,
        &["--timeout", "30", "--price-in", "2.5", "--price-out", "10"],
    );
    http("down", "ollama", down, &["--timeout", "5"]);
    let input = env.prompts("p.csv", 6);
    let models = [
        "fast", "broken", "flaky", "crashy", "mute", "sleepy", "nocmd", "oll", "cut", "busy",
        "e500", "oai",
    ];
    let mut args = vec!["enqueue", "--batch", "b1", "--repeat", "2"];
    for m in ["fast", "oll"] {
        args.extend(["--model", m]);
    }
    args.push(&input);
    env.cmd(&args).assert().success();
    let mut args = vec!["enqueue", "--batch", "b2"];
    for m in &models[1..] {
        args.extend(["--model", m]);
    }
    args.push(&input);
    env.cmd(&args).assert().success();
    env.cmd(&[
        "run",
        "--jobs",
        "4",
        "--retry-base",
        "0.05",
        "--kill-grace",
        "0.2",
    ])
    .assert()
    .code(3);
    // The same prompts again: answered from the cache.
    env.cmd(&["enqueue", "--batch", "b3", "--model", "fast", &input])
        .assert()
        .success();
    env.cmd(&["run", "--cache", "--batch", "b3"])
        .assert()
        .code(0);
    // Two graders and one whose answers cannot be read.
    env.grader("fair", "fair", &["1"], &[]);
    env.grader("harsh", "harsh", &[], &[]);
    env.grader("garbled", "broken", &[], &["--max-attempts", "1"]);
    env.cmd(&[
        "grade", "--grader", "fair", "--grader", "harsh", "--grader", "garbled", "--model", "fast",
        "--model", "oll",
    ])
    .assert()
    .success();
    env.cmd(&["run", "--jobs", "4"]).assert().code(3);
    // A server that is down: its jobs stay pending.
    env.cmd(&["enqueue", "--batch", "b4", "--model", "down", &input])
        .assert()
        .success();
    env.cmd(&["run", "--model", "down", "--unavailable-limit", "1s"])
        .assert()
        .code(1);
    let now = env.int("SELECT CAST(strftime('%s', 'now') AS INTEGER) * 1000");
    env.conn()
        .execute_batch(&format!(
            "-- Ties: durations of a few distinct values, failures at one time.
             UPDATE attempts SET duration_ms = 100 * (1 + job_id % 4) WHERE model = 'fast';
             UPDATE jobs SET updated_at = (SELECT MAX(updated_at) FROM jobs) WHERE state = 'failed';
             -- Outcomes no quick run provokes, on one failed job.
             INSERT INTO attempts (job_id, number, model, batch, started_at, finished_at,
                                   duration_ms, outcome, charged)
             SELECT j.id, 100 + n.k, j.model, j.batch, {now} - 60000, {now} - 59000, 1000,
                    n.o, n.c
             FROM jobs j, (SELECT 1 AS k, 'lost' AS o, 1 AS c UNION ALL
                           SELECT 2, 'interrupted', 0 UNION ALL SELECT 3, 'stall', 1) n
             WHERE j.id = (SELECT MIN(id) FROM jobs WHERE model = 'broken');
             -- A live runner on another host, holding one job.
             INSERT INTO runners (host, pid, started_at, heartbeat_at)
             VALUES ('gpu-x', 4242, {now} - 30000, {now});
             INSERT INTO attempts (job_id, number, model, batch, runner_id, started_at, charged)
             SELECT j.id, 1 + (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id),
                    j.model, j.batch, (SELECT MAX(id) FROM runners), {now} - 5000, 1
             FROM jobs j WHERE j.id = (SELECT MIN(id) FROM jobs WHERE model = 'down');
             UPDATE jobs SET state = 'running', attempts = 1,
                    runner_id = (SELECT MAX(id) FROM runners), lease_token = 7,
                    lease_expires_at = {now} + 600000,
                    attempt_id = (SELECT MAX(id) FROM attempts)
             WHERE id = (SELECT MIN(id) FROM jobs WHERE model = 'down');"
        ))
        .unwrap();
    let outcomes: Vec<String> = env
        .rows("SELECT DISTINCT outcome FROM attempts WHERE outcome IS NOT NULL ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        outcomes,
        [
            "cached",
            "crash",
            "empty",
            "exit",
            "http",
            "interrupted",
            "lost",
            "ok",
            "parse",
            "spawn",
            "stall",
            "throttled",
            "timeout",
            "unavailable"
        ],
        "the history holds every outcome"
    );
}

/// Copies every row of an SQLite database into a PostgreSQL one of the same schema, as is:
/// the same ids, times, texts and numbers.
fn copy_to_postgres(lite: &Env, pg: &Env) {
    // llmbatch makes its tables.
    pg.cmd(&["models", "set", "x", "--command", "cat"])
        .assert()
        .success();
    let conn = lite.conn();
    let mut sql = String::from("BEGIN; DELETE FROM models;\n");
    for table in [
        "models", "items", "runners", "rubrics", "jobs", "attempts", "grades",
    ] {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let values: Vec<String> = (0..columns.len())
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                    rusqlite::types::ValueRef::Real(v) => format!("{v:?}"),
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''"))
                    }
                    rusqlite::types::ValueRef::Blob(_) => panic!("no blobs in {table}"),
                })
                .collect();
            sql.push_str(&format!(
                "INSERT INTO {table} ({}) VALUES ({});\n",
                columns.join(", "),
                values.join(", ")
            ));
        }
    }
    for table in ["runners", "rubrics", "jobs", "attempts"] {
        sql.push_str(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}));\n"
        ));
    }
    sql.push_str("COMMIT;");
    pg.pg().batch_execute(&sql).unwrap();
}

/// Columns counted from each read's own "now" (two reads run milliseconds apart): ages, times
/// left and rates over a window that ends now. Only these (and the page's own time stamp) are
/// blanked before comparing.
const NOW_RELATIVE: [&str; 7] = [
    "age_s",
    "lease_left_s",
    "oldest_running_s",
    "heartbeat_age_s",
    "window_s",
    "per_hour",
    "eta_s",
];

/// `text` in `format` with the [`NOW_RELATIVE`] columns blanked.
fn scrub_now(format: &str, text: &str) -> String {
    match format {
        "json" => {
            fn blank(v: &mut serde_json::Value) {
                match v {
                    serde_json::Value::Object(m) => {
                        for (k, val) in m.iter_mut() {
                            if NOW_RELATIVE.contains(&k.as_str()) {
                                *val = serde_json::Value::Null;
                            } else {
                                blank(val);
                            }
                        }
                    }
                    serde_json::Value::Array(a) => a.iter_mut().for_each(blank),
                    _ => {}
                }
            }
            let mut doc: serde_json::Value = serde_json::from_str(text).expect("json");
            blank(&mut doc);
            serde_json::to_string_pretty(&doc).unwrap()
        }
        "csv" => {
            // Sections: `# name`, a header, rows, a blank line.
            let mut out = String::new();
            for chunk in text.split("\n\n") {
                let (title, body) = match chunk.strip_prefix("# ") {
                    Some(rest) => rest.split_once('\n').unwrap_or((rest, "")),
                    None => ("", chunk),
                };
                let mut r = csv::ReaderBuilder::new().from_reader(body.as_bytes());
                let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
                out.push_str(&format!("# {title}\n{}\n", header.join(",")));
                for row in r.records() {
                    let cells: Vec<&str> = row
                        .as_ref()
                        .unwrap()
                        .iter()
                        .zip(&header)
                        .map(|(v, h)| {
                            if NOW_RELATIVE.contains(&h.as_str()) {
                                "~"
                            } else {
                                v
                            }
                        })
                        .collect();
                    out.push_str(&format!("{cells:?}\n"));
                }
            }
            out
        }
        "table" => {
            // Cells trimmed and borders left out: a blanked column's width may differ.
            let cells = |line: &str| -> Vec<String> {
                line.trim_start_matches('│')
                    .trim_end_matches('│')
                    .split('┆')
                    .map(|c| c.trim().to_string())
                    .collect()
            };
            let mut out = String::new();
            let mut header: Vec<String> = Vec::new();
            let mut previous = "";
            for line in text.lines() {
                if line.starts_with(['┌', '╞', '├', '└']) {
                    previous = line;
                    continue;
                }
                if line.starts_with('│') {
                    let row = cells(line);
                    if previous.starts_with('┌') {
                        header = row.clone();
                    }
                    let kept: Vec<&str> = row
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let blank = !previous.starts_with('┌')
                                && header
                                    .get(i)
                                    .is_some_and(|h| NOW_RELATIVE.contains(&h.as_str()));
                            if blank {
                                "~"
                            } else {
                                v.as_str()
                            }
                        })
                        .collect();
                    out.push_str(&format!("{kept:?}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
                previous = line;
            }
            out
        }
        "html" => {
            // The page's stamp of when it was made (to the second).
            let mut out = text.to_string();
            if let Some(at) = out.find(" · generated ") {
                let start = at + " · generated ".len();
                let end = start + out[start..].find('<').expect("end of the stamp");
                out.replace_range(start..end, "~");
            }
            out
        }
        _ => text.to_string(),
    }
}

/// The same rows give the same bytes on both engines: every report section in every format,
/// the grouped and scoped variants, the HTML page, every export format and `models list`.
#[test]
fn reports_give_the_same_numbers_on_both_engines() {
    let Some(pg) = Env::with_engine(Engine::Postgres) else {
        return;
    };
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let busy_calls = calls.clone();
    let server = Server::start(move |req, _| match (req.path.as_str(), req.model()) {
        ("/api/generate", "cut") => {
            now_json(200, ollama_answer("cut", "cut short", None, "length"))
        }
        ("/api/generate", "e500") => now_json(500, json!({"error": "model crashed"})),
        ("/api/generate", "busy")
            if busy_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 3 =>
        {
            ollama_server_busy()
        }
        ("/api/generate", m) => Reply::Stream(ollama_stream(
            m,
            &["One", " two", " three"],
            Duration::ZERO,
            Duration::ZERO,
        )),
        (_, m) => Reply::Stream(openai_stream(
            m,
            &["Un", " deux"],
            Duration::ZERO,
            Duration::ZERO,
        )),
    });
    let closed = ClosedPort::new();
    let lite = Env::new();
    rich_history(&lite, &server, &closed.url());
    copy_to_postgres(&lite, &pg);
    let ids = lite.write("some.ids", "1\n3\n5\n40\n");
    let mut reads: Vec<Vec<&str>> = Vec::new();
    let sections = [
        "status",
        "latency",
        "failures",
        "jobs",
        "runners",
        "timeouts",
        "throughput",
        "grades",
        "models",
        "consistency",
        "cost",
    ];
    for format in ["table", "csv", "json"] {
        reads.push(vec!["report", "--format", format]);
        for s in sections {
            reads.push(vec!["report", s, "--format", format]);
        }
        reads.push(vec![
            "report",
            "latency",
            "failures",
            "cost",
            "--by",
            "batch,model,endpoint",
            "--format",
            format,
        ]);
        reads.push(vec!["report", "latency", "--breakdown", "--format", format]);
        reads.push(vec!["report", "--batch", "b2", "--format", format]);
        reads.push(vec![
            "report", "status", "latency", "grades", "--model", "fast", "--since", "1d",
            "--format", format,
        ]);
        reads.push(vec!["report", "--ids-file", &ids, "--format", format]);
        reads.push(vec![
            "report", "jobs", "--state", "failed", "--format", format,
        ]);
        reads.push(vec![
            "report",
            "jobs",
            "--outcome",
            "exit",
            "--format",
            format,
        ]);
        reads.push(vec!["models", "list", "--format", format]);
    }
    reads.push(vec!["report", "failures", "--format", "ids"]);
    reads.push(vec!["report", "--format", "html"]);
    reads.push(vec!["report", "--format", "html", "--batch", "b1"]);
    for format in ["jsonl", "csv", "joblog", "openai-batch"] {
        reads.push(vec!["export", "--format", format]);
        reads.push(vec!["export", "--format", format, "--with-grades"]);
        reads.push(vec!["export", "--format", format, "--batch", "b2"]);
    }
    let mut differ = Vec::new();
    for args in &reads {
        let (a, b) = (lite.stdout(args), pg.stdout(args));
        let format = args
            .iter()
            .position(|a| *a == "--format")
            .map_or("table", |i| args[i + 1]);
        if scrub_now(format, &a) != scrub_now(format, &b) {
            differ.push(format!("{args:?}\n--- SQLite\n{a}\n--- PostgreSQL\n{b}\n"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    // Known numbers: the fast model's 12 ok attempts of b1 take 100..400 ms by job id.
    let doc = pg.report_json(&["latency", "--batch", "b1"]);
    let fast = doc["latency"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "fast")
        .unwrap()
        .clone();
    assert_eq!(fast["n"], 12, "{fast}");
    // Decode speed of both kinds: Ollama's own timings (oll), a streamed answer's (oai).
    let doc = pg.report_json(&["models"]);
    for model in ["oll", "oai"] {
        let row = doc["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model)
            .unwrap();
        assert!(row["tokens_per_s"].as_f64().is_some(), "{row}");
    }
}

/// Every command on PostgreSQL, as a user types them: set-up, enqueue (idempotent, a changed
/// item refused), run, report, export, resume, reap, grade; bad input exits 2.
#[test]
fn every_command_works_on_postgres() {
    let Some(env) = Env::with_engine(Engine::Postgres) else {
        return;
    };
    // Reads on a database without llmbatch's tables: exit 2, nothing created.
    env.cmd(&["report"]).assert().code(2);
    env.cmd(&["run"]).assert().code(2);
    assert_eq!(
        env.pg()
            .query_one(
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'",
                &[]
            )
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    env.model("echo", "echo", &["--concurrency", "2"]);
    env.model("bad", "exit1", &["--max-attempts", "1"]);
    let listed = env.stdout(&["models", "list", "--format", "csv"]);
    assert!(
        listed.lines().any(|l| l.starts_with("echo,command,")),
        "{listed}"
    );
    let input = env.prompts("p.csv", 6);
    let ids = env.stdout(&[
        "enqueue", "--model", "echo", "--model", "bad", "--format", "ids", &input,
    ]);
    assert_eq!(
        ids.lines().collect::<Vec<_>>(),
        (1..=12).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success()
        .stdout("batch p: 0 new, 6 already queued (6 items × 1 models)\n");
    let changed = env.write("p.csv", "id,prompt\n1,something else\n");
    env.cmd(&["enqueue", "--model", "echo", &changed])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "already in batch \"p\" with a different prompt",
        ));
    env.cmd(&["run"]).assert().code(3);
    assert_eq!(env.state_count("done"), 6);
    assert_eq!(env.state_count("failed"), 6);
    let out = env.stdout(&["export", "--format", "jsonl", "--model", "echo"]);
    assert_eq!(out.lines().count(), 6);
    // The rerun pipeline, through an ids file.
    let failed = env.stdout(&["report", "jobs", "--state", "failed", "--format", "ids"]);
    let ids_file = env.write("failed.ids", &failed);
    env.cmd(&["resume", "--ids-file", &ids_file, "--extra-attempts", "1"])
        .assert()
        .success()
        .stdout("resumed 6 job(s) with 1 more attempt(s) each\nrun them with: llmbatch run\n");
    assert_eq!(env.state_count("pending"), 6);
    env.cmd(&["reap"])
        .assert()
        .success()
        .stderr("llmbatch: reaped 0 orphaned job(s)\n");
    env.grader("judge", "fair", &["funny"], &[]);
    env.cmd(&["grade", "--grader", "judge", "--model", "echo"])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    let grades = env.report_json(&["grades"]);
    assert!(grades.to_string().contains("\"judge\""), "{grades}");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM grades"),
        6,
        "every output graded"
    );
    // An unknown id is bad input, and says which.
    let bad = env.write("bad.ids", "999\n");
    env.cmd(&["resume", "--ids-file", &bad])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "1 unknown job id(s) in the ids file: 999",
        ));
}

/// A password never shows: not in an error, not in `--help`.
#[test]
fn the_password_is_never_shown() {
    let out = std::process::Command::new(bin_path())
        .args([
            "--db",
            "postgres://lab:s3cret-pw@127.0.0.1:1/queue",
            "report",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("postgres://lab:***@127.0.0.1:1/queue"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    let help = std::process::Command::new(bin_path())
        .arg("--help")
        .env("LLMBATCH_DB", "postgres://lab:s3cret-pw@db/queue")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("s3cret"));
}

/// A PostgreSQL cluster of this test's own (the shared one must not restart under the other
/// tests), stopped and removed on drop.
struct OwnServer {
    bin: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
    url: String,
    /// The server's options, for a start after a stop.
    opts: String,
}

impl OwnServer {
    fn as_postgres(&self, tool: &str) -> std::process::Command {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(format!("{}/{tool}", self.bin));
        c
    }

    fn start() -> Option<OwnServer> {
        pg_server()?;
        let bin = std::env::var("LLMBATCH_TEST_PG_BIN").ok()?;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::process::Command::new("chown")
            .args(["postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        // A port free now: the kernel's pick for a listener closed at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            bin,
            data: data.clone(),
            _dir: dir,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            opts: format!("-p {port} -h 127.0.0.1 -k {} -c fsync=off", data.display()),
        };
        let ok = s
            .as_postgres("initdb")
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "initdb");
        s.pg_ctl(&[
            "start",
            "-w",
            "-o",
            &format!("-p {port} -h 127.0.0.1 -k {} -c fsync=off", data.display()),
        ]);
        pg_client(&s.url)
            .batch_execute("CREATE DATABASE own_restart")
            .unwrap();
        // A name no database on the shared server has: the Env's clean-up there finds nothing.
        s.url = format!("postgres://postgres@127.0.0.1:{port}/own_restart");
        Some(s)
    }

    fn pg_ctl(&self, args: &[&str]) {
        let ok = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-l"])
            .arg(self.data.join("log"))
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl {args:?}");
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

/// PostgreSQL restarts while a runner works: the runner keeps its attempts going, reconnects,
/// records every result (fenced) and finishes; every job done exactly once.
#[test]
fn a_runner_rides_out_a_postgresql_restart() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    let mut env = Env::new();
    env.db = std::path::PathBuf::from(&server.url);
    env.engine = Engine::Postgres;
    let marker = unique_marker("restart");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "0.4"),
        &["--concurrency", "2", "--max-attempts", "100"],
    );
    let input = env.prompts("p.csv", 16);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let log = env.dir.path().join("run.log");
    let mut run = env
        .spawn_cmd(&["run", "--lease", "5s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    wait_for("some jobs done", Duration::from_secs(60), || {
        env.state_count("done") >= 3
    });
    server.pg_ctl(&["restart", "-m", "fast", "-w"]);
    let status = wait_child(&mut run, Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(
        text.contains("database unavailable, will retry") || text.contains("heartbeat of runner"),
        "the restart went unnoticed:\n{text}"
    );
    assert_eq!(env.state_count("done"), 16, "{text}");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM (SELECT job_id FROM attempts WHERE outcome = 'ok' GROUP BY job_id HAVING COUNT(*) > 1) t"),
        0
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'"),
        16
    );
}

/// PostgreSQL stays down for longer than a lease: the runner, whose heartbeat cannot be renewed,
/// stops claiming and says so (other hosts may have reaped its jobs); once the server is back it
/// says it claims again, and finishes everything, each job once.
#[test]
fn a_runner_whose_heartbeat_lapses_stops_claiming_and_says_so() {
    let Some(server) = OwnServer::start() else {
        return;
    };
    let mut env = Env::new();
    env.db = std::path::PathBuf::from(&server.url);
    env.engine = Engine::Postgres;
    let marker = unique_marker("lapse");
    env.model_cmd(
        "slow",
        &marked(&marker, "slow", "0.3"),
        &["--concurrency", "1", "--max-attempts", "100"],
    );
    let input = env.prompts("p.csv", 12);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    let log = env.dir.path().join("run.log");
    let mut run = env
        .spawn_cmd(&["run", "--lease", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    wait_for("some jobs done", Duration::from_secs(60), || {
        env.state_count("done") >= 2
    });
    server.pg_ctl(&["stop", "-m", "fast", "-w"]);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        "the runner to stop claiming",
        Duration::from_secs(30),
        || read().contains("stopped claiming, since this runner's jobs may have been reaped"),
    );
    server.pg_ctl(&["start", "-w", "-o", &server.opts]);
    let status = wait_child(&mut run, Duration::from_secs(120));
    let text = read();
    assert_eq!(status.code(), Some(0), "{text}");
    let stopped = text.find("stopped claiming").unwrap();
    let again = text
        .find("heartbeat renewed again: claiming again")
        .unwrap_or_else(|| panic!("no word of claiming again:\n{text}"));
    assert!(stopped < again, "{text}");
    assert_eq!(env.state_count("done"), 12, "{text}");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'"),
        12
    );
}
