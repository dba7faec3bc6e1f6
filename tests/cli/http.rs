//! HTTP backends end to end (issue 4): the real binary and its worker against a small HTTP/1.1
//! server on 127.0.0.1 that answers like Ollama's `/api/generate` and OpenAI's
//! `/v1/chat/completions` (tests/cli/fake_server.rs), in the modes that matter: slow, busy,
//! missing model, silent, malformed, thinking, down.

use crate::common::*;
use crate::fake_server::*;
use serde_json::json;
use std::io::Read;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

fn ollama_not_found(model: &str) -> Reply {
    now_json(
        404,
        json!({"error": format!("model \"{model}\" not found, try pulling it first")}),
    )
}

fn text(env: &Env, sql: &str) -> Option<String> {
    env.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
}

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

#[test]
fn a_closed_port_refuses_connections() {
    let closed = ClosedPort::new();
    let err = std::net::TcpStream::connect(("127.0.0.1", closed.port)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    // Nobody else can bind it meanwhile (std sets SO_REUSEADDR; we do not).
    assert!(TcpListener::bind(("127.0.0.1", closed.port)).is_err());
    let port = closed.port;
    let listener = closed.open();
    assert_eq!(listener.local_addr().unwrap().port(), port);
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
}

#[test]
fn ollama_answers_with_timings_and_sends_the_settings() {
    let server = Server::start(|req, _| {
        if req.path != "/api/generate" {
            return now_json(404, json!({"error": "404 page not found"}));
        }
        match req.model() {
            // An answer without timing fields: they are unknown, not zero.
            "bare" => now_json(
                200,
                json!({"model": "bare", "response": "short", "done": true}),
            ),
            m => Reply::Body(
                200,
                ollama_answer(m, "Why did the cat sit on the computer?", None, "stop").to_string(),
                Duration::from_millis(300),
            ),
        }
    });
    let env = Env::new();
    ollama_model(
        &env,
        "qwen2.5:7b",
        &server.url,
        &[
            "--option",
            "num_ctx=4096",
            "--option",
            "temperature=0.2",
            "--keep-alive",
            "5m",
            "--think",
            "false",
            "--system",
            "Be brief.",
            "--format-output",
            "json",
            "--timeout",
            "60",
        ],
    );
    ollama_model(&env, "bare", &server.url, &["--timeout", "60"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&[
        "enqueue",
        "--model",
        "qwen2.5:7b",
        "--model",
        "bare",
        &input,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 4);

    let sent: Vec<Req> = server
        .requests()
        .into_iter()
        .filter(|r| r.model() == "qwen2.5:7b")
        .collect();
    assert_eq!(sent.len(), 2);
    let b = &sent[0].body;
    // Asked to stream; this server answers one body anyway, which still works.
    assert_eq!(b["stream"], json!(true));
    assert_eq!(b["think"], json!(false), "think is sent explicitly: {b}");
    assert_eq!(b["options"], json!({"num_ctx": 4096, "temperature": 0.2}));
    assert_eq!(b["keep_alive"], json!("5m"));
    assert_eq!(b["system"], json!("Be brief."));
    assert_eq!(b["format"], json!("json"));
    assert!(b["prompt"].as_str().unwrap().starts_with("prompt number"));
    let bare = server
        .requests()
        .into_iter()
        .find(|r| r.model() == "bare")
        .unwrap();
    assert!(bare.body.get("think").is_none() && bare.body.get("options").is_none());

    let q = "SELECT COUNT(*) FROM attempts WHERE model = 'qwen2.5:7b' AND outcome = 'ok' AND http_status = 200
             AND output = 'Why did the cat sit on the computer?'
             AND json_extract(timings, '$.total_duration') = 5043500667
             AND json_extract(timings, '$.load_duration') = 5025959
             AND json_extract(timings, '$.prompt_eval_count') = 26
             AND json_extract(timings, '$.prompt_eval_duration') = 325953000
             AND json_extract(timings, '$.eval_count') = 290
             AND json_extract(timings, '$.eval_duration') = 4709213000
             AND json_extract(timings, '$.done_reason') = 'stop'
             AND abs(json_extract(timings, '$.tokens_per_s') - 61.58) < 0.01";
    assert_eq!(env.int(q), 2, "timings recorded as Ollama sent them");
    let q = "SELECT COUNT(*) FROM attempts WHERE model = 'bare' AND outcome = 'ok'
             AND json_type(timings, '$.load_duration') = 'null'
             AND json_type(timings, '$.eval_count') = 'null'
             AND json_type(timings, '$.tokens_per_s') = 'null'";
    assert_eq!(env.int(q), 2, "missing timing fields are null, not 0");
    // The delay is seen in the recorded duration.
    assert!(env.int("SELECT MIN(duration_ms) FROM attempts WHERE model = 'qwen2.5:7b'") >= 300);
}

#[test]
fn reasoning_is_kept_apart_and_thinking_can_eat_the_budget() {
    let server = Server::start(|req, _| match req.model() {
        "field" => now_json(
            200,
            ollama_answer(
                "field",
                "Because it was purr-fect.",
                Some("Cats... puns."),
                "stop",
            ),
        ),
        "inline" => now_json(
            200,
            ollama_answer(
                "inline",
                "<think>\nLet me think.\n</think>\n\nA pun.",
                None,
                "stop",
            ),
        ),
        "budget" => now_json(
            200,
            ollama_answer("budget", "", Some("Thinking and thinking and"), "length"),
        ),
        // Ollama refuses `think` for a model that cannot think.
        "plain" => now_json(400, json!({"error": "\"plain\" does not support thinking"})),
        m => ollama_not_found(m),
    });
    let env = Env::new();
    for m in ["field", "inline", "budget"] {
        ollama_model(
            &env,
            m,
            &server.url,
            &["--timeout", "60", "--max-attempts", "1"],
        );
    }
    ollama_model(
        &env,
        "plain",
        &server.url,
        &["--timeout", "60", "--think", "true"],
    );
    let input = env.prompts("p.csv", 1);
    let mut args = vec!["enqueue"];
    for m in ["field", "inline", "budget", "plain"] {
        args.extend(["--model", m]);
    }
    args.push(&input);
    env.cmd(&args).assert().success();
    env.cmd(&["run", "--retry-base", "100ms"]).assert().code(3);

    let row = |m: &str| {
        env.conn()
            .query_row(
                "SELECT outcome, output, reasoning, raw_output, error FROM attempts WHERE model = ?1",
                [m],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<String>>(2)?,
                        r.get::<_, Option<String>>(3)?, r.get::<_, Option<String>>(4)?)),
            )
            .unwrap()
    };
    let (o, out, reasoning, _, _) = row("field");
    assert_eq!(
        (o.as_str(), out.as_deref()),
        ("ok", Some("Because it was purr-fect."))
    );
    assert_eq!(reasoning.as_deref(), Some("Cats... puns."));
    let (o, out, reasoning, raw, _) = row("inline");
    assert_eq!((o.as_str(), out.as_deref()), ("ok", Some("A pun.")));
    assert_eq!(reasoning.as_deref(), Some("Let me think."));
    assert!(raw.unwrap().contains("<think>"), "raw text kept");
    let (o, _, reasoning, _, err) = row("budget");
    assert_eq!(o, "empty");
    assert!(reasoning.is_some());
    let err = err.unwrap();
    assert!(err.contains("thinking used up the budget"), "{err}");
    assert_eq!(
        text(
            &env,
            "SELECT json_extract(timings, '$.done_reason') FROM attempts WHERE model = 'budget'"
        )
        .as_deref(),
        Some("length")
    );
    let failures = env.report_json(&["failures", "--model", "budget"]);
    assert_eq!(failures["failures"][0]["truncated"], json!(1), "{failures}");

    // 400 is not retried, and says what the server said.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'plain'"),
        1
    );
    let (o, _, _, _, err) = row("plain");
    assert_eq!(o, "http");
    let err = err.unwrap();
    assert!(
        err.contains("does not support thinking") && err.contains("400"),
        "{err}"
    );
    assert_eq!(
        env.int("SELECT http_status FROM attempts WHERE model = 'plain'"),
        400
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'plain' AND state = 'failed'"),
        1
    );
}

#[test]
fn busy_is_retried_missing_model_and_garbage_are_not() {
    let server = Server::start(|req, n| match req.model() {
        // Ollama's answer when its queue is full (OLLAMA_MAX_QUEUE), then a real answer.
        "busy" if n == 1 => now_json(
            503,
            json!({"error": "server busy, please try again.  maximum pending requests exceeded"}),
        ),
        "busy" => now_json(200, ollama_answer("busy", "finally", None, "stop")),
        "garbage" => Reply::Body(
            200,
            "<html><body>Welcome to nginx!</body></html>".into(),
            Duration::ZERO,
        ),
        m => ollama_not_found(m),
    });
    let env = Env::new();
    for m in ["busy", "ghost", "garbage"] {
        ollama_model(
            &env,
            m,
            &server.url,
            &["--timeout", "60", "--max-attempts", "3"],
        );
    }
    let input = env.prompts("p.csv", 1);
    env.cmd(&[
        "enqueue", "--model", "busy", "--model", "ghost", "--model", "garbage", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run", "--retry-base", "100ms"]).assert().code(3);

    // 503 then 200: retried, done, both attempts on record.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'busy' AND state = 'done'"),
        1
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'busy'"),
        2
    );
    let busy = text(
        &env,
        "SELECT error FROM attempts WHERE model = 'busy' AND number = 1",
    )
    .unwrap();
    assert!(busy.contains("maximum pending requests exceeded"), "{busy}");
    assert_eq!(
        env.int("SELECT http_status FROM attempts WHERE model = 'busy' AND number = 1"),
        503
    );
    assert!(
        text(&env, "SELECT last_error FROM jobs WHERE model = 'busy'").is_none(),
        "error cleared on success"
    );

    // 404 model not found: one attempt, the fix in the message.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'ghost'"),
        1
    );
    let ghost = text(&env, "SELECT error FROM attempts WHERE model = 'ghost'").unwrap();
    let want = format!(
        "model ghost not found at {} — run `ollama pull ghost`",
        server.url
    );
    assert!(ghost.contains(&want), "{ghost}");
    assert_eq!(
        env.int("SELECT http_status FROM attempts WHERE model = 'ghost'"),
        404
    );

    // Not JSON: `http`, the first bytes quoted.
    let garbage = text(
        &env,
        "SELECT error FROM attempts WHERE model = 'garbage' ORDER BY number LIMIT 1",
    )
    .unwrap();
    assert!(garbage.contains("Welcome to nginx"), "{garbage}");
    assert_eq!(
        text(
            &env,
            "SELECT outcome FROM attempts WHERE model = 'garbage' LIMIT 1"
        )
        .as_deref(),
        Some("http")
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'garbage' AND state = 'failed'"),
        1
    );
}

#[test]
fn a_server_that_never_answers_ends_in_timeout() {
    let server = Server::start(|_, _| Reply::Hang);
    let env = Env::new();
    ollama_model(
        &env,
        "silent",
        &server.url,
        &["--timeout", "3", "--max-attempts", "1"],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "silent", &input])
        .assert()
        .success();
    let started = Instant::now();
    env.cmd(&["run", "--kill-grace", "1s"]).assert().code(3);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(server.count(), 1);
    assert_eq!(
        text(&env, "SELECT outcome FROM attempts").as_deref(),
        Some("timeout")
    );
    let d = env.int("SELECT duration_ms FROM attempts");
    assert!((1500..20_000).contains(&d), "duration {d} ms");
    assert!(text(&env, "SELECT error FROM attempts")
        .unwrap()
        .contains("no answer"));
}

#[test]
fn a_down_server_is_not_charged_and_stops_its_lane() {
    let closed = ClosedPort::new();
    let url = closed.url();
    let env = Env::new();
    ollama_model(
        &env,
        "down",
        &url,
        &["--timeout", "10", "--max-attempts", "1"],
    );
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "down", &input])
        .assert()
        .success();
    let started = Instant::now();
    let out = env
        .cmd(&["run", "--unavailable-limit", "3s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        stderr.contains(&url) && stderr.contains("unreachable"),
        "{stderr}"
    );
    // Jobs wait for the next run; nothing was charged even with a budget of 1.
    assert_eq!(env.state_count("pending"), 2);
    assert_eq!(env.int("SELECT SUM(charged) FROM jobs"), 0);
    assert!(
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'unavailable' AND charged = 0") >= 1
    );
    let err = text(&env, "SELECT error FROM attempts LIMIT 1").unwrap();
    assert!(
        err.contains(&format!("is Ollama running at {url}?")),
        "{err}"
    );

    // The server comes up: the next run finishes the same jobs.
    let server = Server::on(closed.open(), |req, _| {
        now_json(200, ollama_answer(req.model(), "up", None, "stop"))
    });
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(server.count(), 2);
}

#[test]
fn two_endpoints_share_the_work_and_a_down_one_rests() {
    let answer = |req: &Req, _: usize| {
        Reply::Body(
            200,
            ollama_answer(req.model(), "hi", None, "stop").to_string(),
            Duration::from_millis(400),
        )
    };
    let (a, b) = (Server::start(answer), Server::start(answer));
    let closed = ClosedPort::new();
    let down = closed.url();
    let env = Env::new();
    env.cmd(&[
        "models",
        "set",
        "shared",
        "--backend",
        "ollama",
        "--endpoint",
        &a.url,
        "--endpoint",
        &b.url,
        "--concurrency",
        "1",
        "--timeout",
        "60",
    ])
    .assert()
    .success();
    env.cmd(&[
        "models",
        "set",
        "half",
        "--backend",
        "ollama",
        "--endpoint",
        &down,
        "--endpoint",
        &a.url,
        "--timeout",
        "60",
        "--max-attempts",
        "1",
    ])
    .assert()
    .success();
    let input = env.prompts("p.csv", 6);
    env.cmd(&["enqueue", "--model", "shared", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 6);
    let (na, nb) = (a.count(), b.count());
    assert!(na >= 1 && nb >= 1 && na + nb == 6, "a {na}, b {nb}");
    let lat = env.report_json(&["latency", "--by", "endpoint"]);
    let eps: Vec<&str> = lat["latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert!(
        eps.contains(&a.url.as_str()) && eps.contains(&b.url.as_str()),
        "{lat}"
    );

    // One endpoint down, one up: the live one carries the work; the down one is not charged.
    let input = env.prompts("q.csv", 3);
    env.cmd(&["enqueue", "--model", "half", "--batch", "half", &input])
        .assert()
        .success();
    env.cmd(&["run", "--model", "half"]).assert().code(0);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'half' AND state = 'done'"),
        3
    );
    let f = env.report_json(&["failures", "--model", "half", "--by", "endpoint"]);
    let rows = f["failures"].as_array().unwrap();
    let down_row = rows
        .iter()
        .find(|r| r["endpoint"] == json!(down))
        .expect("down endpoint row");
    assert!(down_row["unavailable"].as_i64().unwrap() >= 1, "{f}");
    assert_eq!(
        env.int(
            "SELECT SUM(charged) FROM attempts WHERE model = 'half' AND outcome = 'unavailable'"
        ),
        0
    );
}

#[test]
fn zero_config_model_uses_ollama_host() {
    let server = Server::start(|req, _| {
        now_json(200, ollama_answer(req.model(), "zero config", None, "stop"))
    });
    let env = Env::new();
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "qwen2.5:0.5b", &input])
        .assert()
        .success();
    // OLLAMA_HOST as people set it: host:port, no scheme.
    let host = server.url.trim_start_matches("http://").to_string();
    env.cmd(&["run"]).env("OLLAMA_HOST", &host).assert().code(0);
    assert_eq!(env.state_count("done"), 2);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs
        .iter()
        .all(|r| r.path == "/api/generate" && r.model() == "qwen2.5:0.5b"));
    assert!(
        reqs[0].body.get("think").is_none(),
        "defaults: nothing but the prompt"
    );
    assert_eq!(
        text(&env, "SELECT endpoint FROM attempts LIMIT 1"),
        Some(server.url.clone())
    );
}

const KEY: &str = "sk-test-7f3a9c1e5b2d4f6a8c0e";

#[test]
fn openai_compatible_with_an_api_key_that_is_never_kept() {
    let server = Server::start(|req, _| {
        if req.path != "/v1/chat/completions" {
            return now_json(404, json!({"detail": "Not Found"}));
        }
        let auth = req.header("authorization").unwrap_or("").to_string();
        if auth != format!("Bearer {KEY}") {
            return now_json(
                401,
                json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}),
            );
        }
        match req.model() {
            "thinker" => now_json(
                200,
                openai_answer("thinker", "42", Some("Six times seven.")),
            ),
            // A careless server echoes what it got; the key must still not be kept.
            "echo" => now_json(
                400,
                json!({"error": {"message": format!("bad request with header {auth}")}}),
            ),
            "missing" => now_json(
                404,
                json!({"object": "error", "message": "The model `missing` does not exist.", "type": "NotFoundError", "code": 404}),
            ),
            m => now_json(200, openai_answer(m, "Hello!", None)),
        }
    });
    let env = Env::new();
    let v1 = format!("{}/v1", server.url);
    for (m, ep) in [
        ("gpt", server.url.as_str()),
        ("thinker", v1.as_str()),
        ("echo", v1.as_str()),
        ("missing", v1.as_str()),
    ] {
        env.cmd(&[
            "models",
            "set",
            m,
            "--backend",
            "openai",
            "--endpoint",
            ep,
            "--api-key-env",
            "LLMB_TEST_KEY",
            "--option",
            "max_tokens=64",
            "--option",
            "temperature=0",
            "--system",
            "You are terse.",
            "--timeout",
            "60",
        ])
        .assert()
        .success();
    }
    let input = env.prompts("p.csv", 1);
    env.cmd(&[
        "enqueue", "--model", "gpt", "--model", "thinker", "--model", "echo", "--model", "missing",
        &input,
    ])
    .assert()
    .success();
    let log = env.dir.path().join("run.log");
    let out = env
        .cmd(&[
            "-vv",
            "--log-file",
            log.to_str().unwrap(),
            "run",
            "--retry-base",
            "100ms",
        ])
        .env("LLMB_TEST_KEY", KEY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{stderr}");

    let reqs = server.requests();
    assert!(
        reqs.iter().all(|r| r.path == "/v1/chat/completions"),
        "no doubled /v1"
    );
    let gpt = reqs.iter().find(|r| r.model() == "gpt").unwrap();
    assert_eq!(
        gpt.body["messages"],
        json!([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "prompt number 1"}])
    );
    assert_eq!(
        (
            gpt.body["max_tokens"].clone(),
            gpt.body["temperature"].clone()
        ),
        (json!(64), json!(0))
    );

    let q = "SELECT COUNT(*) FROM attempts WHERE model = 'gpt' AND outcome = 'ok' AND output = 'Hello!'
             AND json_extract(timings, '$.prompt_tokens') = 12 AND json_extract(timings, '$.completion_tokens') = 7
             AND json_extract(timings, '$.total_tokens') = 19";
    assert_eq!(env.int(q), 1, "usage recorded");
    assert_eq!(
        text(&env, "SELECT output FROM attempts WHERE model = 'thinker'").as_deref(),
        Some("42")
    );
    assert_eq!(
        text(
            &env,
            "SELECT reasoning FROM attempts WHERE model = 'thinker'"
        )
        .as_deref(),
        Some("Six times seven.")
    );
    let missing = text(&env, "SELECT error FROM attempts WHERE model = 'missing'").unwrap();
    assert!(
        missing.contains(&format!("model missing not found at {v1}")),
        "{missing}"
    );
    let echo = text(&env, "SELECT error FROM attempts WHERE model = 'echo'").unwrap();
    assert!(echo.contains("[redacted]"), "{echo}");

    // The key is nowhere: not in the database (WAL and shm included), the log file or stderr.
    for entry in std::fs::read_dir(env.dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap();
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "API key found in {}",
            entry.path().display()
        );
    }
    assert!(
        std::fs::metadata(&log).unwrap().len() > 0,
        "the log file was written"
    );
    assert!(!stderr.contains(KEY));
    assert_eq!(
        text(&env, "SELECT api_key_env FROM models WHERE name = 'gpt'").as_deref(),
        Some("LLMB_TEST_KEY")
    );

    // Without the variable set: a clear message naming the variable, not the key.
    let env2 = Env::new();
    env2.cmd(&[
        "models",
        "set",
        "gpt",
        "--backend",
        "openai",
        "--endpoint",
        &server.url,
        "--api-key-env",
        "LLMB_TEST_KEY",
        "--max-attempts",
        "1",
    ])
    .assert()
    .success();
    env2.cmd(&["enqueue", "--model", "gpt", &env2.prompts("p.csv", 1)])
        .assert()
        .success();
    env2.cmd(&["run"])
        .env_remove("LLMB_TEST_KEY")
        .assert()
        .code(3);
    let err = text(&env2, "SELECT error FROM attempts").unwrap();
    assert!(
        err.contains("LLMB_TEST_KEY") && err.contains("not set"),
        "{err}"
    );
    assert_eq!(
        server.requests().len(),
        reqs.len(),
        "no request without the key"
    );
}

#[test]
fn openai_server_down_says_so() {
    let closed = ClosedPort::new();
    let url = closed.url();
    let env = Env::new();
    env.cmd(&[
        "models",
        "set",
        "vllm",
        "--backend",
        "openai",
        "--endpoint",
        &url,
        "--timeout",
        "10",
    ])
    .assert()
    .success();
    env.cmd(&["enqueue", "--model", "vllm", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    env.cmd(&["run", "--unavailable-limit", "2s"])
        .assert()
        .code(1);
    let err = text(&env, "SELECT error FROM attempts LIMIT 1").unwrap();
    assert!(
        err.contains(&format!("is the server running at {url}?")),
        "{err}"
    );
    assert_eq!(env.state_count("pending"), 1);
}

#[test]
fn an_ollama_restart_mid_run_fails_nothing() {
    let closed = ClosedPort::new();
    let url = closed.url();
    let env = Env::new();
    ollama_model(
        &env,
        "nightly",
        &url,
        &[
            "--timeout",
            "30",
            "--max-attempts",
            "1",
            "--concurrency",
            "2",
        ],
    );
    env.cmd(&["enqueue", "--model", "nightly", &env.prompts("p.csv", 3)])
        .assert()
        .success();
    let mut run = env
        .spawn_cmd(&["run", "--unavailable-limit", "90s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("an unavailable attempt", Duration::from_secs(30), || {
        env.int("SELECT COUNT(*) FROM attempts WHERE outcome = 'unavailable'") >= 1
    });
    // Ollama is back, on the same port.
    let server = Server::on(closed.open(), |req, _| {
        now_json(200, ollama_answer(req.model(), "morning", None, "stop"))
    });
    let until = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = run.kill();
            panic!("run did not finish after the server came back");
        }
        thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    run.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("unreachable, resting it") && stderr.contains("reachable again"),
        "{stderr}"
    );
    assert_eq!(
        env.state_count("done"),
        3,
        "a budget of 1 and still nothing failed"
    );
    assert_eq!(env.int("SELECT SUM(charged) FROM jobs"), 3);
    assert_eq!(server.count(), 3);
}

#[test]
fn a_watching_runner_outlives_an_outage() {
    let closed = ClosedPort::new();
    let url = closed.url();
    let env = Env::new();
    ollama_model(&env, "daemon", &url, &["--timeout", "30"]);
    env.cmd(&["enqueue", "--model", "daemon", &env.prompts("p.csv", 2)])
        .assert()
        .success();
    let log = env.dir.path().join("watch.log");
    let mut run = env
        .spawn_cmd(&[
            "--log-file",
            log.to_str().unwrap(),
            "run",
            "--watch",
            "--poll",
            "200ms",
            "--unavailable-limit",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the outage to be reported", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("still trying (--watch)")
    });
    assert!(
        run.try_wait().unwrap().is_none(),
        "a watching runner does not exit on an outage"
    );
    let _server = Server::on(closed.open(), |req, _| {
        now_json(200, ollama_answer(req.model(), "back", None, "stop"))
    });
    wait_for(
        "the jobs to finish once the server is back",
        Duration::from_secs(60),
        || env.state_count("done") == 2,
    );
    kill(run.id(), libc::SIGTERM);
    let until = Instant::now() + Duration::from_secs(30);
    while run.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "runner did not stop on SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
}
