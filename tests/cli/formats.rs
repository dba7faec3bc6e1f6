//! The ecosystem's formats: OpenAI Batch API files in and out, chat messages per item, shell
//! completions and man pages.

use crate::common::*;
use crate::fake_server::*;
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn bash_sources_the_completion_script() {
    let env = Env::new();
    let out = env.cmd(&["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = env.write("llmbatch.bash", &String::from_utf8(out.stdout).unwrap());
    // Sourcing must succeed and register the function for our binary name.
    let check = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "set -e; source '{script}'; complete -p llmbatch; declare -F _llmbatch"
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && check.stderr.is_empty(),
        "bash: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.ends_with("-F _llmbatch llmbatch")),
        "{stdout}"
    );
    assert!(!env.db.exists(), "completions must not create a database");
}

#[test]
fn man_pages_are_written_per_subcommand() {
    let env = Env::new();
    let dir = env.dir.path().join("man1");
    env.cmd(&["man", "--out-dir", dir.to_str().unwrap()])
        .assert()
        .success();
    let enqueue = std::fs::read_to_string(dir.join("llmbatch-enqueue.1")).unwrap();
    assert!(enqueue.starts_with(".ie \\n(.g .ds Aq"), "{enqueue}");
    assert!(enqueue.contains("\n.TH llmbatch-enqueue 1 "), "{enqueue}");
    let top = env.stdout(&["man"]);
    assert!(top.contains("\n.TH llmbatch 1 "), "{top}");
}

/// The text the in-test server answers for a conversation: tied to its last user message, so
/// each custom_id's answer is its own.
fn answer_for(messages: &Value) -> String {
    let last = messages
        .as_array()
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("?");
    format!("answer to <{last}>")
}

/// The answer as the tokens a server streams.
fn tokens_of(text: &str) -> Vec<&str> {
    text.split_inclusive(' ').collect()
}

/// An OpenAI-compatible server serving `served` (and no other model), streaming as vLLM does
/// when asked to, and Ollama's `/api/chat` and `/api/generate` that have no model at all, as a
/// fresh Ollama would.
fn batch_server() -> Server {
    Server::start(|req, _| match req.path.as_str() {
        "/v1/chat/completions" if req.model() == "served" => {
            let text = answer_for(&req.body["messages"]);
            if req.body["stream"] == json!(true) {
                Reply::Stream(openai_stream(
                    "served",
                    &tokens_of(&text),
                    Duration::ZERO,
                    Duration::ZERO,
                ))
            } else {
                now_json(200, openai_answer("served", &text, None))
            }
        }
        "/v1/chat/completions" => now_json(
            404,
            json!({"object": "error", "message": format!("The model `{}` does not exist.", req.model()), "type": "NotFoundError", "code": 404}),
        ),
        "/api/chat" | "/api/generate" => now_json(
            404,
            json!({"error": format!("model \"{}\" not found, try pulling it first", req.model())}),
        ),
        _ => now_json(404, json!({"detail": "Not Found"})),
    })
}

fn batch_line(id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
}

#[test]
fn openai_batch_file_round_trip() {
    let server = batch_server();
    let env = Env::new();
    env.cmd(&[
        "models",
        "set",
        "served",
        "--backend",
        "openai",
        "--endpoint",
        &server.url,
        "--system",
        "model default system",
        "--option",
        "temperature=1",
        "--max-attempts",
        "1",
    ])
    .assert()
    .success();
    let chat = "/v1/chat/completions";
    let c1 = json!([
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "colour of the sky"}
    ]);
    let c3 = json!([
        {"role": "user", "content": "pick a number"},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "double it"}
    ]);
    let lines = [
        batch_line(
            "req-1",
            chat,
            json!({"model": "served", "messages": c1, "max_tokens": 16, "temperature": 0.2}),
        ),
        batch_line(
            "req-2",
            chat,
            json!({"model": "served", "messages": [{"role": "user", "content": "say hi"}], "temperature": 0}),
        ),
        batch_line(
            "req-3",
            chat,
            json!({"model": "served", "messages": c3, "seed": 42, "max_tokens": 8}),
        ),
        batch_line(
            "req-4",
            chat,
            json!({"model": "served", "messages": [{"role": "user", "content": "a JSON object"}], "response_format": {"type": "json_object"}}),
        ),
        batch_line(
            "req-5",
            "/v1/completions",
            json!({"model": "served", "prompt": "complete me", "max_tokens": 4}),
        ),
        batch_line(
            "req-6",
            chat,
            json!({"model": "ghost", "messages": [{"role": "user", "content": "anyone there"}], "max_tokens": 16}),
        ),
    ];
    let file = env.write("requests.jsonl", &(lines.join("\n") + "\n"));

    // No --model, no --input-format: the lines say it all.
    let out = env
        .cmd(&["enqueue", &file])
        .env("OLLAMA_HOST", &server.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "batch requests: 6 new, 0 already queued (6 requests; models: ghost, served)"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("run on Ollama at {}: ghost (", server.url)),
        "the unconfigured model is listed: {stderr}"
    );

    let run = env
        .cmd(&["run", "-q"])
        .env("OLLAMA_HOST", &server.url)
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // The server saw each request's messages and parameters as the file gave them.
    let reqs = server.requests();
    let sent = |last_user: &str| -> Value {
        reqs.iter()
            .find(|r| {
                r.path == chat
                    && r.body["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .is_some_and(|m| m["content"] == last_user)
            })
            .unwrap_or_else(|| panic!("no request ending with {last_user:?}: {reqs:?}"))
            .body
            .clone()
    };
    let b1 = sent("colour of the sky");
    assert_eq!(b1["messages"], c1, "its own system message, none prepended");
    assert_eq!(
        (b1["max_tokens"].clone(), b1["temperature"].clone()),
        (json!(16), json!(0.2))
    );
    let b2 = sent("say hi");
    assert_eq!(
        b2["messages"],
        json!([{"role": "system", "content": "model default system"}, {"role": "user", "content": "say hi"}])
    );
    assert_eq!(
        b2["temperature"],
        json!(0),
        "the line's option wins over the model's"
    );
    let b3 = sent("double it");
    let mut with_system = vec![json!({"role": "system", "content": "model default system"})];
    with_system.extend(c3.as_array().unwrap().iter().cloned());
    assert_eq!(b3["messages"], json!(with_system), "multi-turn, as given");
    assert_eq!(
        (b3["seed"].clone(), b3["max_tokens"].clone()),
        (json!(42), json!(8))
    );
    assert_eq!(
        b3["temperature"],
        json!(1),
        "the model's option where the line has none"
    );
    let b4 = sent("a JSON object");
    assert_eq!(b4["response_format"], json!({"type": "json_object"}));
    let b5 = sent("complete me");
    assert_eq!(b5["max_tokens"], json!(4));
    let ghost: Vec<_> = reqs.iter().filter(|r| r.model() == "ghost").collect();
    assert_eq!(ghost.len(), 1, "a 404 is not retried");
    assert_eq!(ghost[0].path, "/api/chat");
    assert_eq!(
        ghost[0].body["messages"],
        json!([{"role": "user", "content": "anyone there"}])
    );
    assert_eq!(ghost[0].body["options"]["num_predict"], json!(16));

    let export = env.stdout(&["export", "--format", "openai-batch"]);
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-1", "req-2", "req-3", "req-4", "req-5", "req-6"]);
    for (line, last) in lines.iter().zip([
        "colour of the sky",
        "say hi",
        "double it",
        "a JSON object",
        "complete me",
    ]) {
        assert!(
            line["id"].as_str().unwrap().starts_with("llmbatch-"),
            "{line}"
        );
        assert_eq!(line["error"], Value::Null, "{line}");
        assert_eq!(line["response"]["status_code"], json!(200), "{line}");
        let body = &line["response"]["body"];
        assert_eq!(body["object"], json!("chat.completion"));
        assert_eq!(body["model"], json!("served"));
        assert_eq!(
            body["choices"][0]["message"]["content"],
            json!(format!("answer to <{last}>"))
        );
        // The tokens as streamed, counted by the server's usage chunk.
        let n = tokens_of(&format!("answer to <{last}>")).len();
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n})
        );
    }
    let missing = &lines[5];
    assert_eq!(missing["error"]["code"], json!("http"), "{missing}");
    let message = missing["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("model ghost not found at ") && message.contains("ollama pull ghost"),
        "{message}"
    );
    assert_eq!(missing["response"]["status_code"], json!(404));

    // The same file again: nothing new.
    let again = env.stdout(&["enqueue", &file]);
    assert_eq!(
        again.trim(),
        "batch requests: 0 new, 6 already queued (6 requests; models: ghost, served)"
    );
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 6);
}

#[test]
fn bad_openai_batch_files_enqueue_nothing() {
    let env = Env::new();
    env.model_cmd("echo", "sh -c cat", &[]);
    let chat = "/v1/chat/completions";
    let ok = |id: &str| {
        batch_line(
            id,
            chat,
            json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    let cases = [
        ("dup.jsonl", ok("a"), "custom_id \"a\" appears twice"),
        (
            "url.jsonl",
            batch_line(
                "c",
                "/v1/embeddings",
                json!({"model": "echo", "input": "hi"}),
            ),
            "custom_id \"c\": url \"/v1/embeddings\" is not batched",
        ),
        (
            "nobody.jsonl",
            json!({"custom_id": "c", "method": "POST", "url": chat}).to_string(),
            "custom_id \"c\": no `body` object",
        ),
    ];
    for (name, third, why) in cases {
        let file = env.write(name, &format!("{}\n{}\n{third}\n", ok("a"), ok("b")));
        let out = env.cmd(&["enqueue", &file]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!("llmbatch: error: {file} line 3: {why}")),
            "{name}: {stderr}"
        );
        assert_eq!(env.int("SELECT COUNT(*) FROM items"), 0, "{name}");
        assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 0, "{name}");
    }
}

#[test]
fn messages_items_to_ollama_use_api_chat() {
    // Streams when asked to, as `ollama serve` does; one body otherwise.
    let server = Server::start(|req, _| match req.path.as_str() {
        "/api/chat" if req.body["stream"] == json!(true) => Reply::Stream(ollama_chat_stream(
            req.model(),
            &tokens_of(&answer_for(&req.body["messages"])),
            Duration::ZERO,
            Duration::ZERO,
        )),
        "/api/chat" => now_json(
            200,
            ollama_chat_answer(req.model(), &answer_for(&req.body["messages"])),
        ),
        "/api/generate" if req.body["stream"] == json!(true) => Reply::Stream(ollama_stream(
            req.model(),
            &["plain ", "answer"],
            Duration::ZERO,
            Duration::ZERO,
        )),
        "/api/generate" => now_json(
            200,
            ollama_answer(req.model(), "plain answer", None, "stop"),
        ),
        _ => now_json(404, json!({"error": "not found"})),
    });
    let env = Env::new();
    let convo = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"}
    ]);
    let jsonl = env.write(
        "chat.jsonl",
        &format!(
            "{}\n{}\n",
            json!({"id": "m1", "messages": convo}),
            json!({"id": "p1", "prompt": "just a prompt"})
        ),
    );
    // CSV too: the messages column holds the JSON array.
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record(["id", "messages"]).unwrap();
    csv.write_record(["m2", r#"[{"role":"user","content":"from csv"}]"#])
        .unwrap();
    let csv = env.write(
        "chat.csv",
        &String::from_utf8(csv.into_inner().unwrap()).unwrap(),
    );
    env.cmd(&[
        "models",
        "set",
        "llama3.2",
        "--endpoint",
        &server.url,
        "--system",
        "model system",
    ])
    .assert()
    .success();
    for input in [&jsonl, &csv] {
        env.cmd(&["enqueue", "--model", "llama3.2", "--batch", "chat", input])
            .assert()
            .success();
    }
    env.cmd(&["run", "-q"]).assert().success();

    let reqs = server.requests();
    let by_path = |p: &str| reqs.iter().filter(|r| r.path == p).collect::<Vec<_>>();
    let chats = by_path("/api/chat");
    assert_eq!(chats.len(), 2, "{reqs:?}");
    assert_eq!(
        chats.iter().filter(|r| r.body["messages"] == convo).count(),
        1
    );
    assert_eq!(
        chats.iter().filter(|r| r.body["messages"]
            == json!([{"role": "system", "content": "model system"}, {"role": "user", "content": "from csv"}]))
            .count(),
        1,
        "the model's system goes first only where the messages have none"
    );
    assert!(chats
        .iter()
        .all(|r| r.body["stream"] == json!(true) && r.body.get("prompt").is_none()));
    let generate = by_path("/api/generate");
    assert_eq!(generate.len(), 1, "plain prompts keep /api/generate");
    assert_eq!(generate[0].body["prompt"], json!("just a prompt"));
    assert_eq!(generate[0].body["system"], json!("model system"));

    // Export: the answers, and the conversation rendered as the prompt.
    let export = env.stdout(&["export", "--batch", "chat"]);
    let rows: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |id: &str| rows.iter().find(|r| r["item_id"] == id).unwrap().clone();
    assert_eq!(row("m1")["output"], json!("answer to <hello there>"));
    assert_eq!(
        row("m1")["prompt"],
        json!("system: Be brief.\n\nuser: hello there")
    );
    assert_eq!(row("m1")["messages"], convo);
    assert!(
        row("p1").get("messages").is_none(),
        "plain items keep their shape"
    );
    assert_eq!(row("m2")["output"], json!("answer to <from csv>"));
    assert_eq!(row("p1")["output"], json!("plain answer"));
    assert!(
        row("m1")["ttft_s"].is_number(),
        "the chat answer was streamed"
    );

    // With streaming off, the one-body chat answer is read the same way.
    env.cmd(&["models", "set", "llama3.2", "--stream", "false"])
        .assert()
        .success();
    let one = env.write(
        "one.jsonl",
        &format!(
            "{}\n",
            json!({"id": "w1", "messages": [{"role": "user", "content": "whole"}]})
        ),
    );
    env.cmd(&["enqueue", "--model", "llama3.2", "--batch", "whole", &one])
        .assert()
        .success();
    env.cmd(&["run", "-q"]).assert().success();
    let export = env.stdout(&["export", "--batch", "whole"]);
    let row: Value = serde_json::from_str(export.trim()).unwrap();
    assert_eq!(row["output"], json!("answer to <whole>"));
    let last = server.requests().pop().unwrap();
    assert_eq!(
        (last.path.as_str(), last.body["stream"].clone()),
        ("/api/chat", json!(false))
    );
}

#[test]
fn command_models_read_messages_as_json_when_asked() {
    let env = Env::new();
    env.model_cmd(
        "json-in",
        "sh -c cat",
        &["--stdin", "json", "--system", "sys"],
    );
    env.model_cmd("text-in", "sh -c cat", &[]);
    let file = env.write(
        "c.jsonl",
        &format!(
            "{}\n",
            json!({"id": "1", "messages": [{"role": "user", "content": "hi"}]})
        ),
    );
    env.cmd(&["enqueue", "--model", "json-in", "--model", "text-in", &file])
        .assert()
        .success();
    env.cmd(&["run", "-q"]).assert().success();
    let out = |m: &str| {
        env.rows(&format!(
            "SELECT a.output FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.model = '{m}'"
        ))[0][0]
            .clone()
    };
    let sent: Value = serde_json::from_str(&out("json-in")).unwrap();
    assert_eq!(
        sent,
        json!([{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(out("text-in"), "user: hi");
}

#[test]
fn templates_fill_the_last_user_message_and_graders_see_the_conversation() {
    let env = Env::new();
    env.model_cmd("echo", "sh -c cat", &[]);
    let capture = env.dir.path().join("grader-stdin.txt");
    let grader = format!(
        "sh -c 'cat > \"$0\"; printf \"IS_JOKE: YES\\nQUALITY: 8\\nREASON: fine\\n\"' {}",
        shell_words::quote(capture.to_str().unwrap())
    );
    env.model_cmd("judge", &grader, &[]);
    let template = env.write("t.txt", "Tell a joke about {topic}.");
    let file = env.write(
        "topics.jsonl",
        &format!(
            "{}\n",
            json!({"id": "t1", "topic": "cats", "messages": [
                {"role": "system", "content": "Be funny."},
                {"role": "user", "content": "replaced by the template"}
            ]})
        ),
    );
    env.cmd(&["enqueue", "--model", "echo", "--template", &template, &file])
        .assert()
        .success();
    env.cmd(&["run", "-q"]).assert().success();
    let conversation = "system: Be funny.\n\nuser: Tell a joke about cats.";
    assert_eq!(env.job_output(1).as_deref(), Some(conversation));
    env.cmd(&["grade", "--grader", "judge"]).assert().success();
    env.cmd(&["run", "-q"]).assert().success();
    let seen = std::fs::read_to_string(&capture).unwrap();
    assert!(
        seen.contains(&format!(
            "The request was:\n{conversation}\n\nThe answer to grade:\n"
        )),
        "{seen}"
    );
    let grades = env.report_json(&["grades"]);
    assert_eq!(grades["grades"][0]["pass_rate"], json!(1.0), "{grades}");
}

#[test]
fn a_batch_file_on_stdin_is_recognised_and_model_overrides_its_lines() {
    let env = Env::new();
    env.model_cmd("echo", "sh -c cat", &[]);
    let lines = [
        batch_line(
            "x",
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "one"}]}),
        ),
        batch_line(
            "y",
            "/v1/completions",
            json!({"model": "gpt-4o", "prompt": "two"}),
        ),
    ];
    let out = env
        .cmd(&["enqueue", "--model", "echo", "--batch", "piped", "-"])
        .write_stdin(lines.join("\n"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "batch piped: 2 new, 0 already queued (2 requests; models: echo)"
    );
    assert!(out.stderr.is_empty(), "echo is configured: nothing to list");
    assert_eq!(
        env.rows("SELECT item_id, model FROM jobs ORDER BY id"),
        [["x", "echo"], ["y", "echo"]]
    );
    env.cmd(&["run", "-q"]).assert().success();
    assert_eq!(env.job_output(1).as_deref(), Some("user: one"));
    assert_eq!(env.job_output(2).as_deref(), Some("two"));
}
