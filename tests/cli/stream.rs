//! Streamed HTTP answers (issue 13): time to first token and per output token in `report
//! latency`, a stall timeout that stops a silent stream while a slow steady one finishes,
//! reassembly of chunked bodies, and errors the server sends part way through.

use crate::common::*;
use crate::fake_server::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn http_model(env: &Env, name: &str, backend: &str, url: &str, extra: &[&str]) {
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
}

fn text(env: &Env, sql: &str) -> Option<String> {
    env.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn latency_row(env: &Env, model: &str) -> Value {
    let doc = env.report_json(&["latency"]);
    doc["latency"]
        .as_array()
        .expect("latency rows")
        .iter()
        .find(|r| r["model"] == model)
        .unwrap_or_else(|| panic!("no latency row for {model}: {doc}"))
        .clone()
}

fn num(row: &Value, col: &str) -> f64 {
    row[col]
        .as_f64()
        .unwrap_or_else(|| panic!("{col} is not a number in {row}"))
}

const TEN: [&str; 10] = [
    "One", " two", " three", " four", " five", " six", " seven", " eight", " nine", " ten.",
];

#[test]
fn known_timing_gives_ttft_and_tpot_on_both_backends() {
    // First token after 0.5 s, then one every 0.1 s: TTFT 0.5 s, TPOT 0.1 s by definition.
    let first = Duration::from_millis(500);
    let each = Duration::from_millis(100);
    let server = Server::start(move |req, _| match (req.path.as_str(), req.model()) {
        ("/api/generate", "whole") => {
            now_json(200, ollama_answer("whole", "All at once.", None, "stop"))
        }
        ("/api/generate", m) => Reply::Stream(ollama_stream(m, &TEN, first, each)),
        (_, m) => Reply::Stream(openai_stream(m, &TEN, first, each)),
    });
    let env = Env::new();
    http_model(&env, "oll", "ollama", &server.url, &["--timeout", "60"]);
    http_model(&env, "oai", "openai", &server.url, &["--timeout", "60"]);
    // A server that ignores `stream` and answers one body still works, unmeasured.
    http_model(&env, "whole", "ollama", &server.url, &["--timeout", "60"]);
    env.model("cmd", "echo", &[]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&[
        "enqueue", "--model", "oll", "--model", "oai", "--model", "whole", "--model", "cmd", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run", "--jobs", "2"]).assert().code(0);
    assert_eq!(env.state_count("done"), 8);

    for model in ["oll", "oai"] {
        let row = latency_row(&env, model);
        let (ttft, tpot) = (num(&row, "ttft_p50_s"), num(&row, "tpot_p50_s"));
        // Lower bounds are the server's sleeps; upper bounds leave room for a loaded machine.
        assert!((0.5..1.5).contains(&ttft), "{model} ttft {ttft}: {row}");
        assert!((0.09..0.2).contains(&tpot), "{model} tpot {tpot}: {row}");
        assert!(num(&row, "ttft_p99_s") >= ttft && num(&row, "tpot_p95_s") >= tpot);
        // 10 tokens in ≈ 1.4 s.
        let rate = num(&row, "tokens_per_s");
        assert!((3.0..7.2).contains(&rate), "{model} tokens/s {rate}: {row}");
        let out = text(
            &env,
            &format!("SELECT output FROM attempts WHERE model = '{model}' LIMIT 1"),
        );
        assert_eq!(out.as_deref(), Some(TEN.concat().as_str()));
        // Exported with the answer too.
        let export = env.stdout(&["export", "--model", model]);
        let rec: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
        let ttft_s = num(&rec, "ttft_s");
        assert!((0.5..1.5).contains(&ttft_s), "{rec}");
    }
    for model in ["whole", "cmd"] {
        let row = latency_row(&env, model);
        for col in [
            "ttft_p50_s",
            "ttft_p95_s",
            "ttft_p99_s",
            "tpot_p50_s",
            "tpot_p95_s",
            "tokens_per_s",
        ] {
            assert_eq!(row[col], Value::Null, "{model} {col}: {row}");
        }
    }
    // The leaderboard's tokens/s is generation speed: the server's own where it reports it
    // (Ollama: eval_count / eval_duration), else 9 tokens after the first in ≥ 0.9 s.
    let board = env.report_json(&["models"]);
    let speed = |model: &str| {
        board["models"]
            .as_array()
            .expect("leaderboard rows")
            .iter()
            .find(|r| r["model"] == model)
            .unwrap_or_else(|| panic!("no leaderboard row for {model}: {board}"))["tokens_per_s"]
            .clone()
    };
    assert_eq!(speed("oll"), json!(2.1), "{board}");
    assert_eq!(speed("whole"), json!(61.6), "{board}");
    let oai = speed("oai").as_f64().unwrap_or_else(|| panic!("{board}"));
    assert!((4.0..=10.0).contains(&oai), "oai tokens/s {oai}: {board}");
    assert_eq!(speed("cmd"), Value::Null, "{board}");
    // Token counts stay where they were: the stream's final object and usage chunk.
    let eval: i64 = env.int(
        "SELECT json_extract(timings, '$.eval_count') FROM attempts WHERE model = 'oll' LIMIT 1",
    );
    assert_eq!(eval, 10);
    let usage: i64 = env.int(
        "SELECT json_extract(timings, '$.completion_tokens') FROM attempts WHERE model = 'oai' LIMIT 1",
    );
    assert_eq!(usage, 10);
    let sent = server.requests();
    let oai = sent.iter().find(|r| r.model() == "oai").unwrap();
    assert_eq!(oai.body["stream"], json!(true));
    assert_eq!(oai.body["stream_options"], json!({"include_usage": true}));
    let oll = sent.iter().find(|r| r.model() == "oll").unwrap();
    assert_eq!(oll.body["stream"], json!(true));
}

#[test]
fn a_silent_stream_ends_stall_in_seconds_and_a_steady_one_finishes() {
    let server = Server::start(|req, _| match req.model() {
        // Two tokens, then nothing, with the connection held open.
        "silent" => Reply::Stream(
            ollama_stream("silent", &TEN, Duration::ZERO, Duration::ZERO).then_silence(2),
        ),
        // 40 tokens over 4 s: never a second without one.
        m => {
            let tokens: Vec<String> = (0..40).map(|i| format!("t{i} ")).collect();
            let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
            Reply::Stream(openai_stream(
                m,
                &tokens,
                Duration::from_millis(100),
                Duration::from_millis(100),
            ))
        }
    });
    let env = Env::new();
    let stall = [
        "--stall-timeout",
        "1s",
        "--timeout",
        "60",
        "--max-attempts",
        "2",
    ];
    http_model(&env, "silent", "ollama", &server.url, &stall);
    http_model(&env, "steady", "openai", &server.url, &stall);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "silent", "--model", "steady", &input])
        .assert()
        .success();
    let marker = unique_marker("stall");
    let started = Instant::now();
    env.cmd(&["run", "--jobs", "2", "--retry-base", "100ms"])
        .env("LLMBATCH_TEST_MARKER", &marker)
        .assert()
        .code(3);
    let took = started.elapsed();
    // Two attempts of ≈ 1 s of silence each, far from the 60 s timeout.
    assert!(took < Duration::from_secs(20), "run took {took:?}");
    assert!(
        !process_alive_with_env(&marker),
        "a worker outlived its attempt"
    );

    let outcomes = env.rows(
        "SELECT a.outcome, a.charged FROM attempts a JOIN jobs j ON j.id = a.job_id
         WHERE j.model = 'silent' ORDER BY a.number",
    );
    assert_eq!(
        outcomes,
        vec![vec!["stall", "1"], vec!["stall", "1"]],
        "retried, charged"
    );
    let error = text(
        &env,
        "SELECT error FROM attempts WHERE model = 'silent' LIMIT 1",
    )
    .unwrap();
    assert!(
        error.contains("went silent for 1.0s (--stall-timeout)"),
        "{error}"
    );
    let partial = text(
        &env,
        "SELECT raw_output FROM attempts WHERE model = 'silent' LIMIT 1",
    );
    assert_eq!(
        partial.as_deref(),
        Some("One two"),
        "the partial answer is kept"
    );
    let durations = env.rows("SELECT duration_ms FROM attempts WHERE model = 'silent'");
    for d in durations {
        let ms: i64 = d[0].parse().unwrap();
        assert!(
            (1000..10_000).contains(&ms),
            "a stall ends about 1 s after the last chunk: {ms} ms"
        );
    }

    let steady = text(&env, "SELECT state FROM jobs WHERE model = 'steady'");
    assert_eq!(steady.as_deref(), Some("done"));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'steady'"),
        1
    );

    let row = env.failures_row("silent");
    assert_eq!(row["stall"], json!(2));
    assert_eq!(row["failed_attempts"], json!(2));
    let export = env.stdout(&["export", "--model", "silent"]);
    let rec: Value = serde_json::from_str(export.lines().next().unwrap()).unwrap();
    assert_eq!(rec["last_outcome"], json!("stall"));
}

#[test]
fn a_first_token_timeout_bounds_the_wait_for_the_first_bytes() {
    let server = Server::start(|_, _| Reply::Hang);
    let env = Env::new();
    http_model(
        &env,
        "loading",
        "ollama",
        &server.url,
        &[
            "--first-token-timeout",
            "1s",
            "--timeout",
            "60",
            "--max-attempts",
            "1",
        ],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "loading", &input])
        .assert()
        .success();
    let started = Instant::now();
    env.cmd(&["run"]).assert().code(3);
    assert!(started.elapsed() < Duration::from_secs(20));
    let error = text(&env, "SELECT error FROM attempts LIMIT 1").unwrap();
    assert_eq!(
        text(&env, "SELECT outcome FROM attempts LIMIT 1").as_deref(),
        Some("timeout")
    );
    assert!(
        error.contains("within the first-token timeout of 1.0s (--first-token-timeout)"),
        "{error}"
    );
}

#[test]
fn chunked_streams_are_reassembled_exactly() {
    // Multi-byte characters split across pieces of 3 bytes; CRLF and blank lines kept.
    let tokens = ["Grüße", ", 世界", "! 🎉", " naïve\n", "café\r\n", "ok"];
    let server = Server::start(move |req, _| {
        let gap = Duration::from_millis(2);
        match (req.path.as_str(), req.model()) {
            ("/api/generate", m) => {
                Reply::Stream(ollama_stream(m, &tokens, Duration::ZERO, Duration::ZERO).cut(3, gap))
            }
            (_, "plain") => now_json(200, openai_answer("plain", "One body.", None)),
            (_, m) => {
                Reply::Stream(openai_stream(m, &tokens, Duration::ZERO, Duration::ZERO).cut(5, gap))
            }
        }
    });
    let env = Env::new();
    http_model(&env, "oll", "ollama", &server.url, &["--timeout", "60"]);
    http_model(&env, "oai", "openai", &server.url, &["--timeout", "60"]);
    http_model(
        &env,
        "plain",
        "openai",
        &server.url,
        &["--timeout", "60", "--stream", "false"],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&[
        "enqueue", "--model", "oll", "--model", "oai", "--model", "plain", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    for model in ["oll", "oai"] {
        let out = text(
            &env,
            &format!("SELECT output FROM attempts WHERE model = '{model}'"),
        );
        assert_eq!(out.as_deref(), Some(tokens.concat().as_str()), "{model}");
    }
    assert_eq!(
        text(&env, "SELECT output FROM attempts WHERE model = 'plain'").as_deref(),
        Some("One body.")
    );
    // `--stream false` asks for one body.
    let plain = server
        .requests()
        .into_iter()
        .find(|r| r.model() == "plain")
        .unwrap();
    assert_eq!(plain.body["stream"], json!(false));
    assert!(plain.body.get("stream_options").is_none());
}

#[test]
fn errors_part_way_through_a_stream_map_to_outcomes() {
    let server = Server::start(|req, _| {
        match req.model() {
        // Ollama's runner dies mid-answer: an error object in the NDJSON stream.
        "oll" => Reply::Stream(
            ollama_stream("oll", &TEN, Duration::ZERO, Duration::ZERO)
                .insert(2, "{\"error\":\"an error was encountered while running the model: CUDA error\"}\n"),
        ),
        // An SSE `error` event without a code: the server failed; another attempt may not.
        "oai" => Reply::Stream(
            openai_stream("oai", &TEN, Duration::ZERO, Duration::ZERO).insert(
                3,
                "event: error\ndata: {\"error\": {\"message\": \"engine dead\", \"type\": \"InternalServerError\"}}\n\n",
            ),
        ),
        // An error event with a 4xx code is the request's fault: not retried.
        _ => Reply::Stream(
            openai_stream("bad", &TEN, Duration::ZERO, Duration::ZERO).insert(
                1,
                "data: {\"error\": {\"message\": \"context length exceeded\", \"code\": 400}}\n\n",
            ),
        ),
    }
    });
    let env = Env::new();
    let two = ["--timeout", "60", "--max-attempts", "2"];
    http_model(&env, "oll", "ollama", &server.url, &two);
    http_model(&env, "oai", "openai", &server.url, &two);
    http_model(&env, "bad", "openai", &server.url, &two);
    let input = env.prompts("p.csv", 1);
    env.cmd(&[
        "enqueue", "--model", "oll", "--model", "oai", "--model", "bad", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run", "--retry-base", "100ms"]).assert().code(3);
    let rows = env.rows(
        "SELECT model, COUNT(*), MIN(outcome), MAX(outcome), MAX(COALESCE(http_status, 0))
         FROM attempts GROUP BY model ORDER BY model",
    );
    assert_eq!(
        rows,
        vec![
            vec!["bad", "1", "http", "http", "400"],
            vec!["oai", "2", "http", "http", "0"],
            vec!["oll", "2", "http", "http", "0"],
        ]
    );
    let oll = text(
        &env,
        "SELECT error FROM attempts WHERE model = 'oll' LIMIT 1",
    )
    .unwrap();
    assert!(oll.contains("failed part way through the answer: an error was encountered while running the model: CUDA error"), "{oll}");
    let oai = text(
        &env,
        "SELECT error FROM attempts WHERE model = 'oai' LIMIT 1",
    )
    .unwrap();
    assert!(
        oai.ends_with("failed part way through the answer: engine dead"),
        "{oai}"
    );
    // What came before the error is on record, not taken for an answer.
    assert_eq!(
        text(
            &env,
            "SELECT raw_output FROM attempts WHERE model = 'oll' LIMIT 1"
        )
        .as_deref(),
        Some("One two")
    );
    assert_eq!(
        text(
            &env,
            "SELECT output FROM attempts WHERE model = 'oll' LIMIT 1"
        ),
        None
    );
}

#[test]
fn stall_flags_are_checked_and_shown() {
    let env = Env::new();
    env.cmd(&[
        "models",
        "set",
        "c",
        "--command",
        "cat",
        "--stall-timeout",
        "5s",
    ])
    .assert()
    .code(2)
    .stderr(predicates::str::contains("apply to streamed HTTP answers"));
    env.cmd(&["models", "set", "m", "--stall-timeout", "soon"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--stall-timeout: invalid duration \"soon\"",
        ));
    let out = env.stdout(&[
        "models",
        "set",
        "m",
        "--stall-timeout",
        "30s",
        "--first-token-timeout",
        "2m",
        "--stream",
        "false",
    ]);
    assert!(
        out.ends_with(", streaming off, stall timeout 30s, first-token timeout 120s\n"),
        "{out}"
    );
    let out = env.stdout(&[
        "models",
        "set",
        "m",
        "--stall-timeout",
        "0",
        "--stream",
        "true",
    ]);
    assert!(out.ends_with(", first-token timeout 120s\n"), "{out}");
}

#[test]
fn report_timeouts_advises_a_stall_timeout_from_the_gaps_seen() {
    // Three tokens 0.2 s apart: every success has a longest gap of about 0.2 s.
    let server = Server::start(|req, _| {
        Reply::Stream(ollama_stream(
            req.model(),
            &["a", "b", "c"],
            Duration::ZERO,
            Duration::from_millis(200),
        ))
    });
    let env = Env::new();
    http_model(
        &env,
        "gappy",
        "ollama",
        &server.url,
        &[
            "--timeout",
            "60",
            "--concurrency",
            "4",
            "--stall-timeout",
            "45s",
        ],
    );
    let input = env.prompts("p.csv", 20);
    env.cmd(&["enqueue", "--model", "gappy", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    let doc = env.report_json(&["timeouts"]);
    let row = &doc["timeouts"][0];
    assert_eq!(row["model"], json!("gappy"));
    assert_eq!(row["stall_timeout_s"], json!(45.0));
    let gap = num(row, "gap_p99_s");
    assert!((0.19..2.0).contains(&gap), "gap p99 {gap}: {row}");
    // 2 × p99 is under the floor: the advice is the floor.
    assert_eq!(row["stall_advice_s"], json!(5.0), "{row}");
    assert_eq!(row["stalls"], json!(0));
}
