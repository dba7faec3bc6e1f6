//! Hostile first-week use (issue 9, part C): CSV ids files read as CSV, a closed stdout, absurd
//! durations, rubrics that cannot work, an API key pasted where its variable's name belongs,
//! `-q` and warnings, `models set` nonsense, and retryable 5xx statuses.

use crate::common::*;
use crate::fake_server::*;
use serde_json::json;
use std::process::Stdio;

/// Every file in the test's directory (the database, its WAL and shm, logs) as bytes, to prove
/// a secret is in none of them.
fn assert_nowhere(env: &Env, secret: &str, also: &[&[u8]]) {
    for entry in std::fs::read_dir(env.dir.path()).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in {}",
            entry.path().display()
        );
    }
    for text in also {
        assert!(
            !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret was printed: {}",
            String::from_utf8_lossy(text)
        );
    }
}

fn failed_ids(env: &Env) -> Vec<i64> {
    env.rows("SELECT id FROM jobs WHERE state = 'failed' ORDER BY id")
        .into_iter()
        .map(|r| r[0].parse().unwrap())
        .collect()
}

fn pending_ids(env: &Env) -> Vec<i64> {
    env.rows("SELECT id FROM jobs WHERE state = 'pending' ORDER BY id")
        .into_iter()
        .map(|r| r[0].parse().unwrap())
        .collect()
}

// ---------------------------------------------------------------- --ids-file as CSV

/// Four failed jobs whose prompts span lines: job 1's holds an empty line and a line that reads
/// like a CSV row of job 4.
fn four_failed_multiline_jobs(env: &Env) {
    env.model("broken", "exit1", &["--max-attempts", "1"]);
    let mut input = String::new();
    for (id, prompt) in [
        ("a", "first line\n\n4,evil\n\"quoted\", more"),
        ("b", "second\n  \n"),
        ("c", "third"),
        ("d", "fourth"),
    ] {
        input.push_str(&json!({"id": id, "prompt": prompt}).to_string());
        input.push('\n');
    }
    let input = env.write("p.jsonl", &input);
    env.cmd(&["enqueue", "--model", "broken", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    assert_eq!(failed_ids(env), [1, 2, 3, 4]);
}

#[test]
fn export_csv_piped_to_resume_resumes_exactly_the_listed_jobs() {
    let env = Env::new();
    four_failed_multiline_jobs(&env);
    // `export --ids-file` keeps to the listed jobs; its CSV quotes the multi-line prompts.
    let ids = env.write("ids.txt", "# the first two\n1\n2\n");
    let csv = env.stdout(&["export", "--format", "csv", "--ids-file", &ids]);
    assert!(csv.starts_with("job_id,"), "{csv}");
    assert!(csv.contains("\"first line\n\n4,evil\n"), "{csv}");
    let mut exported = csv::Reader::from_reader(csv.as_bytes());
    let exported: Vec<String> = exported
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    assert_eq!(exported, ["1", "2"]);

    let out = env
        .cmd(&["resume", "--ids-file", "-", "--format", "json"])
        .write_stdin(csv)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(resumed["ids"], json!([1, 2]));
    assert_eq!(pending_ids(&env), [1, 2]);
    assert_eq!(
        failed_ids(&env),
        [3, 4],
        "job 4 was only named inside a prompt"
    );
}

#[test]
fn ids_file_csv_needs_the_id_first_and_names_the_bad_line() {
    let env = Env::new();
    four_failed_multiline_jobs(&env);
    // `report jobs --format csv` has an `id` header; `report --ids-file` keeps to the listed jobs.
    let ids = env.write("ids.csv", "id,note\n3,\"spans\n\nlines\"\n");
    let report = env.report_json(&["jobs", "--ids-file", &ids]);
    let listed: Vec<i64> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [3]);
    let csv = env.stdout(&["report", "jobs", "--format", "csv", "--ids-file", &ids]);
    env.cmd(&["resume", "--ids-file", "-"])
        .write_stdin(csv)
        .assert()
        .success();
    assert_eq!(pending_ids(&env), [3]);

    // A first column that is not the id: exit 2 naming the line, nothing resumed.
    let bad = env.write("bad.csv", "batch,id\np,4\n");
    let out = env.cmd(&["resume", "--ids-file", &bad]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{bad} line 1: \"batch\" is not a job id")),
        "{stderr}"
    );
    assert_eq!(failed_ids(&env), [1, 2, 4]);
}

// ---------------------------------------------------------------- closed stdout

/// Runs the binary with stdout the write end of a pipe whose read end is already closed, so
/// its first write fails with EPIPE whenever it comes.
fn with_closed_stdout(env: &Env, args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    env.spawn_cmd(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
        .wait_with_output()
        .expect("wait")
}

fn assert_quiet_exit_0(args: &[&str], out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_exit_0() {
    let env = Env::new();
    let input = env.prompts("p.csv", 3);
    let echo = fake("echo");
    let exit1 = fake("exit1");
    let setups: [&[&str]; 4] = [
        &["models", "set", "echo", "--command", &echo],
        &[
            "models",
            "set",
            "broken",
            "--command",
            &exit1,
            "--max-attempts",
            "1",
        ],
        &["enqueue", "--model", "echo", "--model", "broken", &input],
        &["enqueue", "--model", "echo", "--format", "json", &input],
    ];
    for args in setups {
        assert_quiet_exit_0(args, &with_closed_stdout(&env, args));
    }
    // What the commands were for was done before their output was lost.
    assert_eq!(env.int("SELECT COUNT(*) FROM models"), 2);
    assert_eq!(env.state_count("pending"), 6);

    let out = with_closed_stdout(&env, &["run"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let grades_rubric = env.write(
        "r.txt",
        "pass: OK\nfields: OK\n---\nIs it fine? {output}\nReply OK: YES or NO",
    );
    let after: [&[&str]; 11] = [
        &["resume", "--model", "broken", "--dry-run"],
        &["resume", "--model", "broken", "--format", "ids"],
        &["grade", "--grader", "echo", "--rubric", &grades_rubric],
        &["models", "list"],
        &["reap"],
        &["reap", "--format", "json"],
        &["report"],
        &["report", "jobs", "--format", "csv"],
        &["export"],
        &["export", "--format", "csv"],
        &["export", "--format", "joblog"],
    ];
    for args in after {
        assert_quiet_exit_0(args, &with_closed_stdout(&env, args));
    }
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'broken' AND state = 'pending'"),
        3,
        "resume did its work"
    );
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade'"), 6);
}

// ---------------------------------------------------------------- absurd durations

#[test]
fn absurd_durations_exit_2_naming_the_flag() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.cmd(&["enqueue", "--model", "echo", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    for value in ["99999999999999999999s", "1e300", "36501d"] {
        let cases: [(&[&str], &str); 5] = [
            (&["run", "--lease", value], "--lease"),
            (&["run", "--kill-grace", value], "--kill-grace"),
            (&["run", "--max-runtime", value], "--max-runtime"),
            (&["report", "--since", value], "--since"),
            (&["models", "set", "echo", "--timeout", value], "--timeout"),
        ];
        for (args, flag) in cases {
            let out = env.cmd(args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(stderr.contains(flag), "{args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("invalid duration {value:?}")),
                "{args:?}: {stderr}"
            );
        }
    }
    // Nothing ran and nothing changed.
    assert_eq!(env.state_count("pending"), 1);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM models WHERE name = 'echo' AND timeout_s IS NULL"),
        1
    );
    // The limit itself is allowed.
    env.cmd(&["report", "--since", "36500d"]).assert().success();
    env.cmd(&["models", "set", "echo", "--timeout", "36500d"])
        .assert()
        .success();
    env.cmd(&["run", "--lease", "36500d", "--kill-grace", "36500d"])
        .assert()
        .success();
    assert_eq!(env.state_count("done"), 1);
}

#[test]
fn an_absurd_busy_timeout_warns_and_uses_the_default() {
    let env = Env::new();
    env.cmd(&["enqueue", "--model", "m", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    for value in ["99999999999999999999s", "25h", "soon"] {
        let out = env
            .cmd(&["report", "status", "--format", "json"])
            .env("LLMBATCH_BUSY_TIMEOUT", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{value}: {stderr}");
        assert!(
            stderr.starts_with("llmbatch: warning: LLMBATCH_BUSY_TIMEOUT: ")
                && stderr.contains("using the default 30s"),
            "{value}: {stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["status"][0]["pending"], json!(1));
    }
}

// ---------------------------------------------------------------- rubrics that cannot work

#[test]
fn grade_refuses_a_rubric_that_cannot_work_and_queues_nothing() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    let topics = env.write("topics.csv", "id,prompt,topic\n1,p1,cats\n2,p2,dogs\n");
    let plain = env.prompts("plain.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", &topics])
        .assert()
        .success();
    env.cmd(&["enqueue", "--model", "echo", &plain])
        .assert()
        .success();
    env.cmd(&["run"]).assert().success();

    let refused = |rubric: &str, scope: &[&str], reason: &str| {
        let path = env.write("rubric.txt", rubric);
        let mut args = vec!["grade", "--grader", "echo", "--rubric", path.as_str()];
        args.extend_from_slice(scope);
        let out = env.cmd(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rubric}: {stderr}");
        assert!(stderr.contains(reason), "{rubric}: {stderr}");
        assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade'"), 0);
        assert_eq!(env.int("SELECT COUNT(*) FROM rubrics"), 0);
    };
    refused(
        "pass: VERDICT\nfields: GOOD, REASON\n---\nGrade {output}",
        &[],
        "rubric rubric: `pass: VERDICT` is not among `fields: GOOD, REASON`: add it there",
    );
    refused(
        "score: QUALITY\nscale: 1-10\nfields: VERDICT\n---\nGrade {output}",
        &[],
        "`score: QUALITY` is not among `fields: VERDICT`",
    );
    // {topic} exists in one batch only: grading everything would fail at run.
    let on_topic = "pass: OK\n---\nIs this about {topic}? {output}";
    refused(
        on_topic,
        &[],
        "{topic} is neither {prompt}, {output} nor a variable of the items in scope: 2 output(s) lack it (e.g. batch \"plain\" item \"1\"); nothing was queued",
    );
    refused(on_topic, &["--batch", "plain"], "{topic} is neither");
    // In the batch that has it, the same rubric queues and runs.
    let path = env.write("rubric.txt", on_topic);
    env.cmd(&[
        "grade", "--grader", "echo", "--rubric", &path, "--batch", "topics",
    ])
    .assert()
    .success();
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade'"), 2);
    env.cmd(&["run"]).assert().code(3); // echo is no grader: `parse`, but the prompt rendered
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.kind = 'grade' AND a.outcome = 'spawn'"),
        0
    );
}

// ---------------------------------------------------------------- API keys

const SECRET: &str = "Xk9aQ2mZr7LtB4wP0vNc8yHd";

#[test]
fn a_key_given_as_its_variable_name_is_refused_and_never_printed() {
    let env = Env::new();
    for value in [
        SECRET,
        "sk-proj-Xk9aQ2mZr7LtB4wP0vNc8yHd",
        "1abc",
        "",
        "MY KEY",
    ] {
        let out = env
            .cmd(&[
                "models",
                "set",
                "gpt",
                "--backend",
                "openai",
                "--endpoint",
                "https://api.example.com/v1",
                "--api-key-env",
                value,
            ])
            .env_remove(value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{value:?}: {stderr}");
        assert!(stderr.contains("--api-key-env"), "{stderr}");
        assert!(stderr.contains("not stored"), "{stderr}");
        if value.len() > 4 {
            assert_nowhere(&env, value, &[&out.stdout, &out.stderr]);
        }
    }
    // A real variable's name is taken, set or not (it is read where `run` runs).
    env.cmd(&[
        "models",
        "set",
        "gpt",
        "--backend",
        "openai",
        "--endpoint",
        "https://api.example.com/v1",
        "--api-key-env",
        "OPENAI_API_KEY",
    ])
    .env_remove("OPENAI_API_KEY")
    .assert()
    .success();
    // An odd but set name is a name.
    env.cmd(&["models", "set", "gpt", "--api-key-env", SECRET])
        .env(SECRET, "value")
        .assert()
        .success();
}

#[test]
fn an_echoed_api_key_is_redacted_from_everything_stored() {
    let server = Server::start(|req, _| {
        let auth = req.header("authorization").unwrap_or("").to_string();
        now_json(
            200,
            openai_answer(
                req.model(),
                &format!("you sent {auth}"),
                Some(&format!("the header was {auth}")),
            ),
        )
    });
    let env = Env::new();
    env.cmd(&[
        "models",
        "set",
        "gpt",
        "--backend",
        "openai",
        "--endpoint",
        &server.url,
        "--api-key-env",
        "LLMB_HOSTILE_KEY",
    ])
    .assert()
    .success();
    // A command model that prints its key on stdout and stderr.
    env.model_cmd(
        "leaky",
        "sh -c 'cat >/dev/null; echo \"key $LLMB_HOSTILE_KEY\" >&2; echo \"key $LLMB_HOSTILE_KEY\"'",
        &["--api-key-env", "LLMB_HOSTILE_KEY"],
    );
    env.cmd(&[
        "enqueue",
        "--model",
        "gpt",
        "--model",
        "leaky",
        &env.prompts("p.csv", 1),
    ])
    .assert()
    .success();
    let out = env
        .cmd(&["-vv", "run"])
        .env("LLMB_HOSTILE_KEY", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str()),
        "the key was sent"
    );
    assert_eq!(
        env.rows("SELECT model, output, COALESCE(reasoning, ''), COALESCE(stderr, '') FROM attempts ORDER BY model"),
        [
            vec![
                "gpt".to_string(),
                "you sent Bearer [redacted]".into(),
                "the header was Bearer [redacted]".into(),
                String::new()
            ],
            vec![
                "leaky".to_string(),
                "key [redacted]".into(),
                String::new(),
                "key [redacted]\n".into()
            ],
        ]
    );
    let export = env.stdout(&["export"]);
    assert_nowhere(&env, SECRET, &[&out.stdout, &out.stderr, export.as_bytes()]);
}

// ---------------------------------------------------------------- -q, warnings, models set

#[test]
fn quiet_reap_prints_nothing_unless_rows_are_asked_for() {
    let env = Env::new();
    env.cmd(&["enqueue", "--model", "m", &env.prompts("p.csv", 1)])
        .assert()
        .success();
    let out = env.cmd(&["-q", "reap"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = env.cmd(&["reap"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Reaped\n"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "llmbatch: reaped 0 orphaned job(s)\n"
    );
    // Rows asked for in a machine format are still written.
    let out = env
        .cmd(&["-q", "reap", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, json!({"reaped": []}));
}

#[test]
fn models_set_refuses_nonsense_and_stores_nothing() {
    let env = Env::new();
    env.model("kept", "echo", &[]);
    let cases: [(&[&str], &str); 8] = [
        (&["models", "set", ""], "the model name cannot be empty"),
        (&["models", "set", "  "], "the model name cannot be empty"),
        (
            &["models", "set", "m", "--backend", "ollama", "--command", "cat"],
            "model m: --command is only for --backend command; the ollama backend calls --endpoint URLs",
        ),
        (
            &["models", "set", "m", "--backend", "openai", "--endpoint", "http://x:8000", "--command", "cat"],
            "--command is only for --backend command; the openai backend",
        ),
        (
            &["models", "set", "m", "--endpoint", "not a url"],
            "model m: --endpoint \"not a url\" is not a server URL: it contains spaces",
        ),
        (
            &["models", "set", "m", "--endpoint", "ftp://gpu1"],
            "the scheme must be http or https, not \"ftp\"",
        ),
        (
            &["models", "set", "m", "--endpoint", "http://gpu1:99999"],
            "\"99999\" is not a port",
        ),
        (
            &["models", "set", "m", "--endpoint", "http://"],
            "no host name",
        ),
    ];
    for (args, reason) in cases {
        let out = env.cmd(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert_eq!(
        env.rows("SELECT name FROM models"),
        [vec!["kept".to_string()]]
    );
    // Endpoints people really write are taken.
    for ep in [
        "gpu1:11434",
        "http://10.0.0.5:11434/",
        "https://api.openai.com/v1",
        "http://[::1]:8000",
    ] {
        env.cmd(&["models", "set", "m", "--endpoint", ep])
            .assert()
            .success();
    }
}

// ---------------------------------------------------------------- retryable 5xx

#[test]
fn server_errors_500_502_504_are_retried_and_charged() {
    let server = Server::start(|req, n| match (req.model(), n) {
        ("s500", 1) => now_json(500, json!({"error": "internal error"})),
        ("s502", 1) => Reply::Body(502, "<html>Bad Gateway</html>".into(), Default::default()),
        ("s504", 1) => Reply::Body(
            504,
            "<html>Gateway Timeout</html>".into(),
            Default::default(),
        ),
        (m, _) => now_json(200, ollama_answer(m, "fine", None, "stop")),
    });
    let env = Env::new();
    for m in ["s500", "s502", "s504"] {
        env.cmd(&[
            "models",
            "set",
            m,
            "--backend",
            "ollama",
            "--endpoint",
            &server.url,
            "--max-attempts",
            "2",
        ])
        .assert()
        .success();
    }
    env.cmd(&[
        "enqueue",
        "--model",
        "s500",
        "--model",
        "s502",
        "--model",
        "s504",
        &env.prompts("p.csv", 1),
    ])
    .assert()
    .success();
    env.cmd(&["run", "--retry-base", "50ms"]).assert().code(0);
    assert_eq!(
        env.rows(
            "SELECT model, number, outcome, http_status, charged FROM attempts ORDER BY model, number"
        ),
        [
            ["s500", "1", "http", "500", "1"],
            ["s500", "2", "ok", "200", "1"],
            ["s502", "1", "http", "502", "1"],
            ["s502", "2", "ok", "200", "1"],
            ["s504", "1", "http", "504", "1"],
            ["s504", "2", "ok", "200", "1"],
        ]
        .map(|r| r.map(String::from).to_vec())
    );
    assert_eq!(env.state_count("done"), 3);
    assert_eq!(env.int("SELECT SUM(charged) FROM jobs"), 6);
}
