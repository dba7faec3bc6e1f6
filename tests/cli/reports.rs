//! Reports (issue 6): every section's table on a fixed database (snapshots), known
//! durations giving known percentiles, the throughput warnings, and `run --max-failures`.
//!
//! The fixed database is built with the binary (models, enqueue, run), then its times,
//! durations and timings are set by SQL relative to now, so the numbers are exact.

use crate::common::*;
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;

/// Three models over two batches: `fast` (25 done + 5 pending, Ollama-like timings),
/// `steady` (25 done, on `--timeout auto`), `broken` (5 failed: 3 exit, 2 timeout).
pub fn fixed_db() -> Env {
    let env = Env::new();
    env.model("fast", "echo", &["--timeout", "30"]);
    env.model("steady", "echo", &["--timeout", "auto"]);
    env.model(
        "broken",
        "exit1",
        &["--max-attempts", "1", "--timeout", "20"],
    );
    let night = env.prompts("night.csv", 25);
    env.cmd(&["enqueue", "--model", "fast", "--model", "steady", &night])
        .assert()
        .success();
    let few = env.prompts("night-extra.csv", 5);
    env.cmd(&["enqueue", "--batch", "broken", "--model", "broken", &few])
        .assert()
        .success();
    env.cmd(&["run", "--jobs", "4"]).assert().code(3);
    let day = env.prompts("day.csv", 5);
    env.cmd(&["enqueue", "--model", "fast", &day])
        .assert()
        .success();
    let now = now_ms();
    let (started, finished) = (now - 2 * HOUR_MS, now - HOUR_MS / 2);
    env.conn()
        .execute_batch(&format!(
            "UPDATE attempts SET started_at = {started}, finished_at = {finished};
             UPDATE jobs SET created_at = {started}, updated_at = {finished} WHERE state <> 'pending';
             UPDATE attempts SET duration_ms = 100 * (SELECT CAST(item_id AS INTEGER) FROM jobs j WHERE j.id = job_id)
                 WHERE model = 'fast';
             UPDATE attempts SET duration_ms = 1000 * (SELECT CAST(item_id AS INTEGER) FROM jobs j WHERE j.id = job_id)
                 WHERE model = 'steady';
             UPDATE attempts SET duration_ms = 50 WHERE model = 'broken';
             UPDATE attempts SET outcome = 'timeout', duration_ms = 20000, exit_code = NULL
                 WHERE model = 'broken' AND job_id IN (SELECT id FROM jobs WHERE item_id IN ('4', '5'));
             UPDATE jobs SET last_outcome = 'timeout', last_error = 'no answer within the 20s timeout: killed'
                 WHERE model = 'broken' AND item_id IN ('4', '5');
             -- Ollama's timings (ns): the first 5 items loaded the model (cold), the rest were warm.
             UPDATE attempts SET timings = (
                 SELECT json_object(
                     'total_duration', (CASE WHEN k <= 5 THEN 800 ELSE 10 END + 2 * k + 3 * k) * 1000000,
                     'load_duration', CASE WHEN k <= 5 THEN 800 ELSE 10 END * 1000000,
                     'prompt_eval_duration', 2 * k * 1000000,
                     'eval_duration', 3 * k * 1000000,
                     'eval_count', 3 * k * 10,
                     'prompt_eval_count', 20)
                 FROM (SELECT CAST(item_id AS INTEGER) AS k FROM jobs j WHERE j.id = job_id))
                 WHERE model = 'fast';
             UPDATE attempts SET duration_ms = CAST(json_extract(timings, '$.total_duration') / 1000000 AS INTEGER) + 40
                 WHERE model = 'fast';"
        ))
        .expect("fix the database");
    env
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `report ARGS` as people see it.
fn table(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let out = env.cmd(&all).output().expect("report");
    assert!(
        out.status.success(),
        "report {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A table with its time- and host-dependent columns replaced: rows as `a | b | …`.
fn scrubbed(text: &str, columns: &[&str]) -> String {
    let mut out = String::new();
    let mut scrub: Vec<usize> = Vec::new();
    for line in text.lines() {
        if !line.starts_with('│') {
            if !line.starts_with(['┌', '╞', '└', '├']) {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('│')
            .split('┆')
            .map(|c| c.trim().to_string())
            .collect();
        if scrub.is_empty() || cells.iter().any(|c| columns.contains(&c.as_str())) {
            scrub = cells
                .iter()
                .enumerate()
                .filter(|(_, c)| columns.contains(&c.as_str()))
                .map(|(i, _)| i)
                .collect();
            out.push_str(&cells.join(" | "));
        } else {
            let row: Vec<&str> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if scrub.contains(&i) {
                        "[scrubbed]"
                    } else {
                        c.as_str()
                    }
                })
                .collect();
            out.push_str(&row.join(" | "));
        }
        out.push('\n');
    }
    out
}

#[test]
fn section_tables_on_a_fixed_database() {
    let env = fixed_db();
    insta::assert_snapshot!("status", table(&env, &["status"]));
    insta::assert_snapshot!(
        "latency_by_batch_model",
        table(&env, &["latency", "--by", "batch,model"])
    );
    insta::assert_snapshot!("failures", table(&env, &["failures"]));
    insta::assert_snapshot!("timeouts", table(&env, &["timeouts"]));
    insta::assert_snapshot!("throughput", table(&env, &["throughput"]));
    insta::assert_snapshot!(
        "latency_breakdown",
        table(&env, &["latency", "--breakdown", "--model", "fast"])
    );
    insta::assert_snapshot!(
        "jobs_failed",
        scrubbed(&table(&env, &["jobs", "--state", "failed"]), &["age_s"])
    );
    insta::assert_snapshot!(
        "runners",
        scrubbed(
            &table(&env, &["runners"]),
            &["host", "pid", "started", "heartbeat_age_s"]
        )
    );
}

#[test]
fn csv_and_json_carry_the_same_rows_as_the_table() {
    let env = fixed_db();
    let json = env.report_json(&["timeouts", "throughput"]);
    let steady = json["timeouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["model"] == "steady")
        .expect("steady row")
        .clone();
    assert_eq!(steady["auto"], true);
    assert_eq!(steady["n"], 25);
    assert_eq!(steady["p99_s"], 25.0);
    assert_eq!(steady["advice_s"], 50.0);
    assert_eq!(steady["effective_s"], 50.0);
    let broken = &json["timeouts"].as_array().unwrap()[0];
    assert_eq!(broken["model"], "broken");
    assert_eq!(broken["timeouts"], 2);
    assert!(broken["advice_s"].is_null(), "{broken}");
    let fast = &json["throughput"].as_array().unwrap()[0];
    assert_eq!(fast["model"], "fast");
    assert_eq!(fast["pending"], 5);
    assert_eq!(fast["eta_s"], 720.0);
    let csv = table(&env, &["timeouts", "--format", "csv"]);
    assert!(
        csv.starts_with("model,timeout_s,auto,effective_s,n,p99_s,max_s,timeouts,advice_s,stall_timeout_s,gap_p99_s,stalls,stall_advice_s\n"),
        "{csv}"
    );
    assert!(
        csv.contains("steady,300.000,true,50.000,25,25.000,25.000,0,50.000"),
        "{csv}"
    );
}

#[test]
fn known_durations_give_known_percentiles_by_batch_and_model() {
    let env = Env::new();
    env.model("m1", "echo", &[]);
    env.model("m2", "echo", &[]);
    let input = env.prompts("p.csv", 100);
    for batch in ["a", "b"] {
        env.cmd(&[
            "enqueue", "--batch", batch, "--model", "m1", "--model", "m2", &input,
        ])
        .assert()
        .success();
    }
    env.cmd(&["run", "--jobs", "4"]).assert().code(0);
    let two_hours_ago = now_ms() - 2 * HOUR_MS;
    // Item k takes k × unit: batch a m1 in 10 ms units, m2 in 20 ms, batch b m1 in 1 s.
    env.conn()
        .execute_batch(&format!(
            "UPDATE attempts SET duration_ms = CAST((SELECT item_id FROM jobs j WHERE j.id = job_id) AS INTEGER)
                 * CASE WHEN batch = 'a' AND model = 'm1' THEN 10
                        WHEN batch = 'a' THEN 20
                        WHEN model = 'm1' THEN 1000 ELSE 5 END;
             UPDATE attempts SET started_at = {two_hours_ago} WHERE batch = 'b' AND model = 'm2';"
        ))
        .unwrap();
    let json = env.report_json(&["latency", "--by", "batch,model"]);
    let rows = json["latency"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{json}");
    let get = |batch: &str, model: &str| {
        rows.iter()
            .find(|r| r["batch"] == batch && r["model"] == model)
            .unwrap_or_else(|| panic!("row {batch}/{model} in {json}"))
            .clone()
    };
    // Nearest rank over 1..=100: p50 = 50th, p95 = 95th, p99 = 99th value.
    for (batch, model, unit) in [
        ("a", "m1", 0.01),
        ("a", "m2", 0.02),
        ("b", "m1", 1.0),
        ("b", "m2", 0.005),
    ] {
        let r = get(batch, model);
        assert_eq!(r["n"], 100, "{r}");
        for (col, k) in [
            ("p50_s", 50.0),
            ("p95_s", 95.0),
            ("p99_s", 99.0),
            ("max_s", 100.0),
        ] {
            let got = r[col].as_f64().unwrap();
            assert!(
                (got - k * unit).abs() < 1e-9,
                "{batch}/{model} {col}: {got} vs {}",
                k * unit
            );
        }
        assert!(
            (r["mean_s"].as_f64().unwrap() - 50.5 * unit).abs() <= 0.001,
            "{r}"
        );
    }
    // --since leaves out what started before the window.
    let recent = env.report_json(&["latency", "--by", "batch,model", "--since", "1h"]);
    let recent = recent["latency"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{recent:?}");
    assert!(!recent
        .iter()
        .any(|r| r["batch"] == "b" && r["model"] == "m2"));
    // The batch filter narrows to one batch's two rows.
    let only_a = env.report_json(&["latency", "--by", "model", "--batch", "a"]);
    assert_eq!(only_a["latency"].as_array().unwrap().len(), 2);
}

#[test]
fn throughput_warns_when_drained_with_a_live_runner() {
    let env = Env::new();
    env.model("fast", "echo", &[]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "fast", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    let mut daemon = env
        .spawn_cmd(&["run", "--watch", "--poll", "200ms"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start run --watch");
    wait_for("a live runner", Duration::from_secs(30), || {
        let json = env.report_json(&["runners"]);
        json["runners"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["state"] == "live"))
    });
    // Stop the daemon even when a check fails: a leaked runner holds the test's pipes open.
    let drained = std::panic::catch_unwind(|| throughput_in_every_format(&env));
    kill(daemon.id(), libc::SIGTERM);
    let _ = daemon.wait();
    let drained = drained.unwrap_or_else(|e| std::panic::resume_unwind(e));
    for stderr in &drained {
        assert!(
            stderr.lines().any(|l| l.starts_with("llmbatch: warning: 1 runner(s) live but nothing is pending — the pipeline is drained")),
            "{stderr}"
        );
    }

    // Pending work and no live runner is the other warning.
    let more = env.prompts("more.csv", 3);
    env.cmd(&["enqueue", "--batch", "more", "--model", "fast", &more])
        .assert()
        .success();
    for stderr in throughput_in_every_format(&env) {
        assert!(
            stderr.lines().any(|l| l.starts_with("llmbatch: warning: 3 job(s) pending but no runner is live")),
            "{stderr}"
        );
    }
}

/// `report throughput` as table, CSV and JSON: stdout holds only rows (CSV and JSON parse, the
/// table has no warning under it); returns each format's stderr, where warnings go.
fn throughput_in_every_format(env: &Env) -> Vec<String> {
    let mut stderrs = Vec::new();
    for format in ["table", "csv", "json"] {
        let out = env
            .cmd(&["report", "throughput", "--format", format])
            .output()
            .expect("report");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).expect("utf-8");
        assert!(!stdout.contains("warning"), "{format}: {stdout}");
        match format {
            "csv" => {
                let mut r = csv::Reader::from_reader(stdout.as_bytes());
                assert_eq!(r.headers().unwrap().get(0), Some("model"), "{stdout}");
                assert!(r.records().all(|rec| rec.is_ok()), "{stdout}");
            }
            "json" => {
                let v: serde_json::Value = serde_json::from_str(&stdout).expect("json");
                assert!(v["throughput"].is_array(), "{stdout}");
            }
            _ => {}
        }
        stderrs.push(String::from_utf8(out.stderr).expect("utf-8"));
    }
    stderrs
}

#[test]
fn max_failures_stops_claiming_and_exits_3() {
    let env = Env::new();
    env.model("broken", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 20);
    env.cmd(&["enqueue", "--model", "broken", &input])
        .assert()
        .success();
    env.cmd(&["run", "--jobs", "1", "--max-failures", "3"])
        .assert()
        .code(3)
        .stderr(predicates::str::contains("max-failures"));
    assert_eq!(env.int("SELECT COUNT(*) FROM attempts"), 3);
    assert_eq!(env.state_count("failed"), 3);
    assert_eq!(env.state_count("pending"), 17);

    // A share: all fail, so it stops once the first 10 attempts (the minimum to judge) are in.
    env.cmd(&["run", "--jobs", "1", "--max-failures", "50%"])
        .assert()
        .code(3);
    assert_eq!(env.int("SELECT COUNT(*) FROM attempts"), 13);
    assert_eq!(env.state_count("pending"), 7);
}

/// The runner keeps a fast lane's next jobs claimed and ready; a stop must still leave every
/// job done or pending, every attempt finished, nothing charged for jobs it stopped.
#[test]
fn sigterm_during_a_fast_run_leaves_nothing_running() {
    let env = Env::new();
    env.model("fast", "echo", &["--concurrency", "2"]);
    let input = env.prompts("p.csv", 3000);
    env.cmd(&["enqueue", "--model", "fast", &input])
        .assert()
        .success();
    let mut runner = env
        .spawn_cmd(&["run", "--jobs", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start run");
    wait_for("50 jobs done", Duration::from_secs(60), || {
        env.state_count("done") >= 50
    });
    kill(runner.id(), libc::SIGTERM);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = runner.try_wait().expect("wait") {
            break s;
        }
        assert!(std::time::Instant::now() < until, "run did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let jobs = env.int("SELECT COUNT(*) FROM jobs");
    if env.state_count("done") < jobs {
        assert_eq!(status.code(), Some(143));
    }
    assert_eq!(env.state_count("running"), 0);
    assert_eq!(env.state_count("done") + env.state_count("pending"), jobs);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome IS NULL"),
        0
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'interrupted' AND charged <> 0"),
        0
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE state = 'pending' AND charged <> 0"),
        0
    );
}

/// Enqueue writes in chunks of rows: idempotency, duplicate ids and the error's line survive.
#[test]
fn chunked_enqueue_keeps_duplicates_and_errors_exact() {
    let env = Env::new();
    let input = env.prompts("p.csv", 300);
    let out = env
        .cmd(&["enqueue", "--model", "a", "--model", "b", &input])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("600 new, 0 already queued"));
    let out = env
        .cmd(&["enqueue", "--model", "a", "--model", "b", &input])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 new, 600 already queued"));
    // Jobs keep input order per model (the claim order).
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM jobs a JOIN jobs b ON b.model = a.model AND b.id > a.id
                 WHERE a.model = 'a' AND CAST(b.item_id AS INTEGER) < CAST(a.item_id AS INTEGER)"
        ),
        0
    );

    let mut text = String::from("id,prompt\n");
    for i in 1..=300 {
        text.push_str(&format!("{i},prompt {i}\n"));
    }
    text.push_str("7,prompt 7\n"); // the same item again: fine
    let same = env.write("same.csv", &text);
    let out = env
        .cmd(&["enqueue", "--batch", "x", "--model", "m", &same])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("300 new, 1 already queued"));

    let mut text = String::from("id,prompt\n");
    for i in 1..=300 {
        let id = if i == 200 { 150 } else { i };
        text.push_str(&format!("{id},prompt {i}\n"));
    }
    let clash = env.write("clash.csv", &text);
    env.cmd(&["enqueue", "--batch", "y", "--model", "m", &clash])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("line 201"))
        .stderr(predicates::str::contains("\"150\""));
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE batch = 'y'"), 0);
}

/// An answer cut at the 16 MiB capture bound is not a clean `ok`: `report failures` counts it
/// as truncated, and `export` marks it and says why (issue 9, defect 10).
#[test]
fn output_cut_at_16_mib_is_reported_and_exported_as_truncated() {
    let env = Env::new();
    env.model_cmd(
        "big",
        "sh -c 'cat >/dev/null; head -c 17000000 /dev/zero | tr \"\\000\" x'",
        &[],
    );
    env.model("small", "echo", &[]);
    env.cmd(&[
        "enqueue",
        "--model",
        "big",
        "--model",
        "small",
        &env.prompts("p.csv", 1),
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(
        env.int("SELECT LENGTH(output) FROM attempts WHERE model = 'big'"),
        16 * 1024 * 1024
    );
    assert_eq!(env.failures_row("big")["truncated"], 1);
    assert_eq!(env.failures_row("small")["truncated"], 0);

    let text = env.stdout(&["export"]);
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let big = rows.iter().find(|r| r["model"] == "big").unwrap();
    assert_eq!(big["truncated"], true);
    assert_eq!(big["error"], "output truncated at 16777216 bytes");
    let small = rows.iter().find(|r| r["model"] == "small").unwrap();
    assert_eq!(small["truncated"], false);
    assert_eq!(small["error"], serde_json::Value::Null);

    let csv_text = env.stdout(&["export", "--format", "csv"]);
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let cells: Vec<(String, String)> = rd
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[at("model")].to_string(), r[at("truncated")].to_string())
        })
        .collect();
    assert_eq!(
        cells,
        vec![
            ("big".to_string(), "yes".to_string()),
            ("small".into(), "no".into())
        ]
    );
}

/// `report jobs` as CSV and as ids is written while it is read (a listing may be the whole
/// queue); it must say what the collected table says, row for row.
#[test]
fn streamed_job_listings_match_the_collected_table() {
    let env = fixed_db();
    let without_age = |csv: &str| -> Vec<String> {
        csv.lines()
            .map(|l| {
                let mut cells: Vec<&str> = l.split(',').collect();
                cells.remove(10); // age_s counts from each command's own now
                cells.join(",")
            })
            .collect()
    };
    let streamed = table(&env, &["jobs", "--state", "failed", "--format", "csv"]);
    // With a second section the listing goes through the collected tables.
    let both = table(
        &env,
        &["status", "jobs", "--state", "failed", "--format", "csv"],
    );
    let collected = both
        .split("# jobs\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no jobs block in {both}"));
    assert!(
        streamed.starts_with("id,batch,item,repeat,model,kind,state,attempts,last_outcome,last_error,age_s,cache_key,cached_from\n"),
        "{streamed}"
    );
    assert_eq!(without_age(&streamed), without_age(collected));
    let failed = env.int("SELECT COUNT(*) FROM jobs WHERE state = 'failed'");
    assert!(failed > 0);
    assert_eq!(streamed.lines().count() as i64, failed + 1);
    let ids = table(&env, &["jobs", "--state", "failed", "--format", "ids"]);
    let first_column: Vec<&str> = streamed
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.lines().collect::<Vec<_>>(), first_column);

    let without_ages = |mut rows: serde_json::Value| {
        for row in rows.as_array_mut().expect("rows") {
            row.as_object_mut().unwrap().remove("age_s");
        }
        rows
    };
    let streamed = env.report_json(&["jobs", "--state", "failed"]);
    let collected = env.report_json(&["status", "jobs", "--state", "failed"]);
    assert_eq!(streamed.as_object().unwrap().len(), 1, "{streamed}");
    assert_eq!(
        without_ages(streamed["jobs"].clone()),
        without_ages(collected["jobs"].clone())
    );
    assert_eq!(streamed["jobs"].as_array().unwrap().len() as i64, failed);
    // No rows: the same empty document as a collected section.
    let none = table(&env, &["jobs", "--state", "cancelled", "--format", "json"]);
    assert_eq!(none, "{\n  \"jobs\": []\n}\n");

    // A bad --state is refused before anything is written: no lone header, no half document.
    for format in ["csv", "json", "ids", "table"] {
        let out = env
            .cmd(&["report", "jobs", "--state", "bogus", "--format", format])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{format}");
        assert!(
            out.stdout.is_empty(),
            "{format}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--state \"bogus\": expected one of"),
            "{format}"
        );
    }
}
