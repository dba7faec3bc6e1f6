//! Sweeps (issue 15): `enqueue --repeat`, model variants (`--remote-model`), the answer cache
//! of `run --cache`, and `report consistency` over repeated items.

use crate::common::*;
use crate::fake_server::{now_json, ollama_answer, Server};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn ollama_model(env: &Env, name: &str, url: &str, extra: &[&str]) {
    let mut args = vec![
        "models",
        "set",
        name,
        "--backend",
        "ollama",
        "--endpoint",
        url,
    ];
    args.extend_from_slice(extra);
    env.cmd(&args).assert().success();
}

/// A server whose every answer is new: "answer N to <prompt>", N counting requests.
fn counting_server() -> Server {
    let n = Arc::new(AtomicUsize::new(0));
    Server::start(move |req, _| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let prompt = req.body["prompt"].as_str().unwrap_or("");
        now_json(
            200,
            ollama_answer(
                req.model(),
                &format!("answer {i} to {prompt}"),
                None,
                "stop",
            ),
        )
    })
}

/// (repeat, output) of each generated job of a batch and model, by item then repeat.
fn outputs(env: &Env, batch: &str, model: &str) -> Vec<Vec<String>> {
    env.rows(&format!(
        "SELECT j.item_id, j.repeat, a.output FROM jobs j JOIN attempts a ON a.id = j.attempt_id
         WHERE j.batch = '{batch}' AND j.model = '{model}' AND j.kind = 'generate'
         ORDER BY j.item_id, j.repeat"
    ))
}

#[test]
fn repeat_makes_numbered_jobs_and_enqueue_again_adds_only_missing_repeats() {
    let env = Env::new();
    // The repeat reaches a command as {repeat} and as LLMBATCH_REPEAT.
    env.model_cmd(
        "rep",
        "sh -c 'cat >/dev/null; printf \"arg {repeat} env $LLMBATCH_REPEAT\"'",
        &["--timeout", "20"],
    );
    env.model("echo", "echo", &["--timeout", "20"]);
    let input = env.prompts("p.csv", 2);
    let out = env.stdout(&[
        "enqueue", "--model", "rep", "--model", "echo", "--repeat", "3", "--batch", "s", &input,
    ]);
    assert_eq!(
        out.trim(),
        "batch s: 12 new, 0 already queued (2 items × 2 models × 3 repeats)"
    );
    let per = env.rows(
        "SELECT item_id, model, group_concat(repeat, ',') FROM
           (SELECT * FROM jobs ORDER BY repeat) GROUP BY item_id, model ORDER BY item_id, model",
    );
    assert_eq!(per.len(), 4);
    for row in &per {
        assert_eq!(row[2], "1,2,3", "{per:?}");
    }
    let again = env.stdout(&[
        "enqueue", "--model", "rep", "--model", "echo", "--repeat", "3", "--batch", "s", &input,
    ]);
    assert!(
        again.starts_with("batch s: 0 new, 12 already queued"),
        "{again}"
    );
    let more = env.stdout(&[
        "enqueue", "--model", "rep", "--model", "echo", "--repeat", "4", "--batch", "s", &input,
    ]);
    assert!(
        more.starts_with("batch s: 4 new, 12 already queued"),
        "{more}"
    );
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE repeat = 4"), 4);

    env.cmd(&["run"]).assert().code(0);
    let rep = outputs(&env, "s", "rep");
    assert_eq!(rep.len(), 8);
    for row in &rep {
        assert_eq!(row[2], format!("arg {r} env {r}", r = row[1]), "{rep:?}");
    }
    // `report jobs` shows the repeat; export carries it in JSONL and CSV.
    let jobs = env.report_json(&["jobs", "--model", "rep"]);
    let repeats: Vec<i64> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["repeat"].as_i64().unwrap())
        .collect();
    assert_eq!(repeats, [1, 2, 3, 1, 2, 3, 4, 4]);
    let jsonl = env.stdout(&["export", "--model", "rep"]);
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["repeat"], 1);
    assert_eq!(first["output"], "arg 1 env 1");
    let csv = env.stdout(&["export", "--format", "csv", "--model", "rep"]);
    let mut r = csv::Reader::from_reader(csv.as_bytes());
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "repeat")
        .unwrap();
    let col_out = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "output")
        .unwrap();
    for rec in r.records() {
        let rec = rec.unwrap();
        assert_eq!(rec[col_out], format!("arg {r} env {r}", r = &rec[col]));
    }
}

#[test]
fn two_variants_of_one_served_model_send_its_name_with_their_own_settings() {
    let server = counting_server();
    let env = Env::new();
    ollama_model(
        &env,
        "qwen-t0",
        &server.url,
        &["--remote-model", "qwen2.5:7b", "--option", "temperature=0"],
    );
    ollama_model(
        &env,
        "qwen-t9",
        &server.url,
        &[
            "--remote-model",
            "qwen2.5:7b",
            "--option",
            "temperature=0.9",
            "--system",
            "Be brief.",
            "--think",
            "false",
        ],
    );
    let list = env.stdout(&["models", "list", "--format", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    for row in list["models"].as_array().unwrap() {
        assert_eq!(row["served_model"], "qwen2.5:7b", "{row}");
    }
    let input = env.prompts("p.csv", 2);
    env.cmd(&[
        "enqueue", "--model", "qwen-t0", "--model", "qwen-t9", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    assert!(reqs.iter().all(|r| r.model() == "qwen2.5:7b"), "{reqs:?}");
    let cold: Vec<_> = reqs
        .iter()
        .filter(|r| r.body["options"]["temperature"] == 0)
        .collect();
    let warm: Vec<_> = reqs
        .iter()
        .filter(|r| r.body["options"]["temperature"] == 0.9)
        .collect();
    assert_eq!((cold.len(), warm.len()), (2, 2), "{reqs:?}");
    assert!(cold.iter().all(|r| r.body.get("system").is_none()));
    assert!(warm
        .iter()
        .all(|r| r.body["system"] == "Be brief." && r.body["think"] == false));
    // Each variant is its own row in the reports.
    let status = env.report_json(&["status"]);
    let models: Vec<&str> = status["status"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["qwen-t0", "qwen-t9"]);
}

#[test]
fn run_cache_answers_identical_requests_and_misses_on_any_difference() {
    let server = counting_server();
    let env = Env::new();
    let url = server.url.clone();
    ollama_model(
        &env,
        "m",
        &url,
        &[
            "--option",
            "temperature=0",
            "--keep-alive",
            "5m",
            "--price-in",
            "1",
            "--price-out",
            "2",
        ],
    );
    let input = env.prompts("p.csv", 3);
    env.cmd(&[
        "enqueue", "--model", "m", "--repeat", "2", "--batch", "a", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(server.count(), 6);

    // The same prompts in a new batch: every answer from the cache, no request. keep_alive
    // is not part of the key.
    env.cmd(&["models", "set", "m", "--keep-alive", "10m"])
        .assert()
        .success();
    env.cmd(&[
        "enqueue", "--model", "m", "--repeat", "2", "--batch", "b", &input,
    ])
    .assert()
    .success();
    let out = env.cmd(&["run", "--cache"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("llmbatch: 6 done (6 answered from the cache), 0 failed"),
        "{stderr}"
    );
    assert_eq!(server.count(), 6, "the cache made requests");
    let (a, b) = (outputs(&env, "a", "m"), outputs(&env, "b", "m"));
    assert_eq!(a, b);
    // Repeats never share an answer.
    assert_ne!(a[0][2], a[1][2]);
    // A cached attempt: not charged, no duration, pointing at the answer it reuses.
    let rows = env.rows(
        "SELECT c.outcome, c.charged, c.duration_ms, c.endpoint IS NULL, o.outcome, o.batch,
                c.cache_key = o.cache_key, c.output = o.output
         FROM attempts c JOIN attempts o ON o.id = c.cached_from WHERE c.batch = 'b'",
    );
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r, &["cached", "0", "0", "1", "ok", "a", "1", "1"]);
    }
    // `report jobs --format json` shows the key and the source of each answer.
    let jobs = env.report_json(&["jobs", "--batch", "b"]);
    let first = &jobs["jobs"][0];
    assert_eq!(first["last_outcome"], "cached");
    assert_eq!(first["cache_key"].as_str().unwrap().len(), 64);
    assert!(first["cached_from"].as_i64().is_some());

    // Latency counts the six real calls only; status and failures count the cached ones.
    let latency = env.report_json(&["latency"]);
    assert_eq!(latency["latency"][0]["n"], 6, "{latency}");
    // Cost counts the six calls made (26 prompt and 290 output tokens each), not the copies.
    let cost = env.report_json(&["cost"]);
    let row = &cost["cost"][0];
    assert_eq!(
        (
            &row["attempts"],
            &row["prompt_tokens"],
            &row["output_tokens"]
        ),
        (&Value::from(6), &Value::from(6 * 26), &Value::from(6 * 290)),
        "{cost}"
    );
    let failures = env.failures_row("m");
    assert_eq!(failures["cached"], 6, "{failures}");
    assert_eq!(failures["failed_attempts"], 0, "{failures}");
    let status = env.stdout(&["report", "status"]);
    assert!(
        status.contains("\n6 of the done jobs were answered from the cache (run --cache)"),
        "{status}"
    );

    // Without --cache the model is called.
    env.cmd(&[
        "enqueue", "--model", "m", "--repeat", "2", "--batch", "c", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(server.count(), 12);

    // Variants of the same served model: another option or another system prompt is a miss;
    // a third repeat is a miss too, while repeats 1 and 2 hit.
    ollama_model(
        &env,
        "m-opt",
        &url,
        &["--remote-model", "m", "--option", "temperature=0.5"],
    );
    ollama_model(
        &env,
        "m-sys",
        &url,
        &[
            "--remote-model",
            "m",
            "--option",
            "temperature=0",
            "--system",
            "Be terse.",
        ],
    );
    env.cmd(&[
        "enqueue", "--model", "m", "--model", "m-opt", "--model", "m-sys", "--repeat", "3",
        "--batch", "d", &input,
    ])
    .assert()
    .success();
    let out = env.cmd(&["run", "--cache"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("27 done (6 answered from the cache)"),
        "{stderr}"
    );
    assert_eq!(server.count(), 12 + 3 + 9 + 9);
    let cached = env.rows(
        "SELECT j.model, j.repeat, COUNT(*) FROM jobs j WHERE j.batch = 'd'
         AND j.last_outcome = 'cached' GROUP BY j.model, j.repeat ORDER BY 1, 2",
    );
    assert_eq!(cached, [["m", "1", "3"], ["m", "2", "3"]]);
}

#[test]
fn the_same_grader_rubric_and_output_give_a_cached_verdict() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    env.grader("fair", "fair", &["funny"], &["--timeout", "20"]);
    let input = env.write("j.csv", "id,prompt\n1,so funny\n2,plain\n");
    for batch in ["a", "b"] {
        env.cmd(&["enqueue", "--model", "echo", "--batch", batch, &input])
            .assert()
            .success();
    }
    env.cmd(&["run", "--batch", "a"]).assert().code(0);
    env.cmd(&[
        "grade", "--grader", "fair", "--rubric", "joke", "--batch", "a",
    ])
    .assert()
    .success();
    env.cmd(&["run", "--batch", "a"]).assert().code(0);
    env.cmd(&[
        "grade", "--grader", "fair", "--rubric", "joke", "--batch", "b",
    ])
    .assert()
    .success();
    // Batch b's outputs and then its verdicts come from the cache: nothing runs.
    let out = env
        .cmd(&["run", "--cache", "--batch", "b"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("4 done (4 answered from the cache)"),
        "{stderr}"
    );
    let verdicts = env.rows(
        "SELECT p.batch, p.item_id, g.pass, g.score, a.outcome FROM grades g
         JOIN jobs p ON p.id = g.graded_job_id JOIN attempts a ON a.id = g.attempt_id
         ORDER BY p.batch, p.item_id",
    );
    assert_eq!(
        verdicts,
        [
            ["a", "1", "1", "8", "ok"],
            ["a", "2", "0", "3", "ok"],
            ["b", "1", "1", "8", "cached"],
            ["b", "2", "0", "3", "cached"],
        ]
    );
}

#[test]
fn consistency_report_gives_shares_scores_and_pass_at_k_over_repeats() {
    let env = Env::new();
    // Repeat 1 gets a "y" appended: "funn" becomes "funny" once in three.
    env.model_cmd(
        "gen",
        "sh -c 'cat; [ {repeat} = 1 ] && printf y; true'",
        &["--timeout", "20"],
    );
    env.grader("fair", "fair", &["funny"], &["--timeout", "20"]);
    env.grader("harsh", "harsh", &[], &["--timeout", "20"]);
    let input = env.write("c.csv", "id,prompt\n1,so funny\n2,plain\n3,funn\n");
    env.cmd(&["enqueue", "--model", "gen", "--repeat", "3", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    env.cmd(&[
        "grade", "--grader", "fair", "--grader", "harsh", "--rubric", "joke",
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    let doc = env.report_json(&["consistency"]);
    let rows = doc["consistency"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{doc:#}");
    let close = |v: &Value, x: f64| {
        let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
        assert!((got - x).abs() < 0.0015, "{got} != {x}");
    };
    // fair: item 1 passes 3/3, item 2 0/3, item 3 1/3 (scores 8, 3, 3).
    let fair = rows.iter().find(|r| r["grader"] == "fair").unwrap();
    assert_eq!(fair["model"], "gen");
    assert_eq!(fair["items"], 3);
    assert_eq!(fair["k"], 3);
    close(&fair["all_passed"], 1.0 / 3.0);
    close(&fair["agreed"], 2.0 / 3.0);
    close(&fair["pass_at_1"], (1.0 + 0.0 + 1.0 / 3.0) / 3.0);
    close(&fair["pass_at_k"], 2.0 / 3.0);
    close(&fair["score_mean"], (8.0 + 3.0 + 14.0 / 3.0) / 3.0);
    close(&fair["score_sd"], (25.0f64 / 3.0).sqrt() / 3.0);
    let harsh = rows.iter().find(|r| r["grader"] == "harsh").unwrap();
    close(&harsh["all_passed"], 0.0);
    close(&harsh["agreed"], 1.0);
    close(&harsh["pass_at_k"], 0.0);
    close(&harsh["score_sd"], 0.0);
}

#[test]
fn variants_on_one_server_share_its_concurrency() {
    let server = Server::start(|req, _| {
        crate::fake_server::Reply::Body(
            200,
            ollama_answer(req.model(), "slow answer", None, "stop").to_string(),
            std::time::Duration::from_millis(150),
        )
    });
    let env = Env::new();
    for (name, t) in [("v-a", "temperature=0"), ("v-b", "temperature=1")] {
        ollama_model(
            &env,
            name,
            &server.url,
            &[
                "--remote-model",
                "served",
                "--option",
                t,
                "--concurrency",
                "2",
            ],
        );
    }
    let input = env.prompts("p.csv", 4);
    env.cmd(&["enqueue", "--model", "v-a", "--model", "v-b", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(server.count(), 8);
    // Attempts in flight at once, over both variants: never more than the 2 of the endpoint.
    // (A replacement is claimed in the transaction that records the end it follows, so a
    // start never precedes the finish it replaces; ends sort first on a tie.)
    let mut events: Vec<(i64, i64)> = env
        .rows("SELECT started_at, finished_at FROM attempts")
        .iter()
        .flat_map(|r| [(r[0].parse().unwrap(), 1), (r[1].parse().unwrap(), -1)])
        .collect();
    events.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, d) in events {
        now += d;
        most = most.max(now);
    }
    assert_eq!(most, 2);
}
