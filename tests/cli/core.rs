//! Core: models, enqueue, run, outcomes, reports (issue: core).

use crate::common::*;
use predicates::prelude::*;
use std::time::{Duration, Instant};

#[test]
fn echo_runs_to_done() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "10"]);
    let input = env.prompts("p.csv", 3);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 3);
}

/// Every outcome a command model can have, each produced by its fixture, each counted by
/// `report failures` in its own column (LESSONS 11).
#[test]
fn each_outcome_is_produced_by_its_fixture_and_counted() {
    let env = Env::new();
    let one = ["--max-attempts", "1", "--timeout", "20"];
    env.model("ok", "echo", &one);
    env.model("exit", "exit1", &one);
    env.model("crash", "crash", &one);
    env.model("empty", "empty", &one);
    env.model_cmd("spawn", "/no/such/model-binary --flag", &one);
    env.model(
        "timeout",
        "hang",
        &["--max-attempts", "1", "--timeout", "1"],
    );
    let input = env.prompts("p.csv", 2);
    env.cmd(&[
        "enqueue", "--model", "ok", "--model", "exit", "--model", "crash", "--model", "empty",
        "--model", "spawn", "--model", "timeout", &input,
    ])
    .assert()
    .success();
    env.cmd(&["run", "--kill-grace", "0.5"]).assert().code(3);

    for (model, outcome) in [
        ("ok", "ok"),
        ("exit", "exit"),
        ("crash", "crash"),
        ("empty", "empty"),
        ("spawn", "spawn"),
        ("timeout", "timeout"),
    ] {
        let row = env.failures_row(model);
        assert_eq!(row["attempts"], 2, "{model}: {row}");
        if outcome == "ok" {
            assert_eq!(row["failed_attempts"], 0, "{model}: {row}");
            assert_eq!(row["fail_rate"], 0.0, "{model}: {row}");
        } else {
            assert_eq!(row[outcome], 2, "{model}: {row}");
            assert_eq!(row["failed_attempts"], 2, "{model}: {row}");
            assert_eq!(row["fail_rate"], 1.0, "{model}: {row}");
        }
        let n = env.int(&format!(
            "SELECT COUNT(*) FROM attempts WHERE model = '{model}' AND outcome = '{outcome}'"
        ));
        assert_eq!(n, 2, "{model} attempts with outcome {outcome}");
    }
    // The details of each kind are on record.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'exit' AND exit_code = 1"),
        2
    );
    assert_eq!(
        env.int(&format!(
            "SELECT COUNT(*) FROM attempts WHERE model = 'crash' AND signal = {}",
            libc::SIGSEGV
        )),
        2
    );
    let stderr: String = env
        .conn()
        .query_row(
            "SELECT stderr FROM attempts WHERE model = 'crash' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stderr.contains("about to crash"), "{stderr}");
    let err: String = env
        .conn()
        .query_row(
            "SELECT last_error FROM jobs WHERE model = 'spawn' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(err.contains("/no/such/model-binary"), "{err}");
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(env.state_count("failed"), 10);
}

/// A `spawn` failure is a bad command: retrying cannot help, so it is not retried.
#[test]
fn spawn_failure_is_not_retried() {
    let env = Env::new();
    env.model_cmd("bad", "/no/such/program", &["--max-attempts", "3"]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "bad", &input])
        .assert()
        .success();
    env.cmd(&["run", "--retry-base", "0.05"]).assert().code(3);
    assert_eq!(env.int("SELECT COUNT(*) FROM attempts"), 1);
    assert_eq!(env.state_count("failed"), 1);
}

/// `hang` ignores SIGTERM and leaves a grandchild: the attempt still ends within timeout +
/// grace, and nothing of its process group survives (LESSONS 1, 9).
#[test]
fn hang_is_killed_within_timeout_and_grace_with_its_whole_group() {
    let env = Env::new();
    let marker = unique_marker("hang");
    env.model_cmd(
        "hang",
        &marked(&marker, "hang", ""),
        &["--timeout", "1", "--max-attempts", "1"],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "hang", &input])
        .assert()
        .success();

    let started = Instant::now();
    let mut child = env
        .spawn_cmd(&["run", "--kill-grace", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // While it runs, the model and its grandchild are both there to be killed.
    wait_for("the hang fixture to start", Duration::from_secs(20), || {
        process_alive_with_env(&marker)
    });
    let status = wait_child(&mut child, Duration::from_secs(60));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(3));
    // timeout 1 s + grace 1 s, with room for a busy machine.
    assert!(took < Duration::from_secs(15), "run took {took:?}");
    let (outcome, ms): (String, i64) = env
        .conn()
        .query_row("SELECT outcome, duration_ms FROM attempts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(outcome, "timeout");
    assert!(ms >= 1000, "killed before its timeout: {ms} ms");
    assert!(
        ms < 2000 + 3000,
        "not killed within timeout + grace: {ms} ms"
    );
    // SIGKILL is delivered at once; give the kernel a moment to finish the exits.
    wait_for(
        "no process of the hang group alive",
        Duration::from_secs(5),
        || !process_alive_with_env(&marker),
    );
}

/// Fails attempt 1, succeeds on attempt 2: done, two attempt rows, no stale error (LESSONS 12, 14).
#[test]
fn flaky_is_done_after_two_attempts_with_no_error_left() {
    let env = Env::new();
    env.model("flaky", "flaky", &[]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "flaky", &input])
        .assert()
        .success();
    env.cmd(&["run", "--retry-base", "0.05"])
        .assert()
        .code(0)
        .stderr(summary("2 done, 0 failed, 2 retried"));
    assert_eq!(env.state_count("done"), 2);
    for job in env.rows("SELECT id, last_error IS NULL, last_outcome, attempts, charged FROM jobs")
    {
        assert_eq!(job[1..], ["1", "ok", "2", "2"], "job {job:?}");
        let attempts = env.rows(&format!(
            "SELECT number, outcome, exit_code, error IS NOT NULL FROM attempts WHERE job_id = {} ORDER BY number",
            job[0]
        ));
        assert_eq!(
            attempts,
            vec![
                vec!["1".to_string(), "exit".into(), "1".into(), "1".into()],
                vec!["2".to_string(), "ok".into(), "NULL".into(), "0".into()],
            ]
        );
        let id: i64 = job[0].parse().unwrap();
        let ok_attempt = env.int(&format!(
            "SELECT id FROM attempts WHERE job_id = {id} AND outcome = 'ok'"
        ));
        assert_eq!(
            env.int(&format!("SELECT attempt_id FROM jobs WHERE id = {id}")),
            ok_attempt
        );
        let out = env.job_output(id).unwrap();
        assert!(
            out.starts_with("flaky answer on attempt 2: prompt number"),
            "{out}"
        );
    }
}

#[test]
fn enqueue_twice_adds_nothing_and_says_so() {
    let env = Env::new();
    let input = env.prompts("p.csv", 5);
    env.cmd(&["enqueue", "--model", "a", "--model", "b", &input])
        .assert()
        .success()
        .stdout("batch p: 10 new, 0 already queued (5 items × 2 models)\n");
    let before = env.dump();
    env.cmd(&["enqueue", "--model", "a", "--model", "b", &input])
        .assert()
        .success()
        .stdout("batch p: 0 new, 10 already queued (5 items × 2 models)\n");
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 10);
    assert_eq!(env.dump(), before);
    // A new model on the same input adds only its own jobs.
    let out = env
        .cmd(&[
            "enqueue", "--model", "a", "--model", "c", "--format", "json", &input,
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &doc["enqueue"][0];
    assert_eq!(row["batch"], "p");
    assert_eq!(row["new"], 5);
    assert_eq!(row["existing"], 5);
    assert_eq!(row["items"], 5);
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 15);
}

/// A broken line anywhere: exit 2 naming the file and line, and the database exactly as it was.
#[test]
fn broken_csv_line_changes_nothing() {
    let env = Env::new();
    let good = env.prompts("good.csv", 3);
    env.cmd(&["enqueue", "--model", "m", &good])
        .assert()
        .success();
    // Every connection is closed, so the WAL is checkpointed into the main file.
    let bytes = std::fs::read(&env.db).unwrap();
    let before = env.dump();

    let bad = env.write(
        "bad.csv",
        "id,prompt\nn1,first fine line\nn2,second fine line\nn3,a line,with one field too many\nn4,after it\n",
    );
    env.cmd(&["enqueue", "--model", "m", "--model", "m2", &bad])
        .assert()
        .code(2)
        .stderr(error_line(
            "bad.csv line 4: expected 2 fields like the header, found 3",
        ));
    assert_eq!(env.dump(), before, "rows changed");
    assert_eq!(
        std::fs::read(&env.db).unwrap(),
        bytes,
        "database file changed"
    );

    // A broken JSONL line, the same.
    let bad = env.write(
        "bad.jsonl",
        "{\"id\": 1, \"prompt\": \"fine\"}\n{\"id\": 2, \"prompt\": \n",
    );
    env.cmd(&["enqueue", "--model", "m", &bad])
        .assert()
        .code(2)
        .stderr(error_line("bad.jsonl line 2: invalid JSON"));
    assert_eq!(env.dump(), before, "rows changed");
}

#[test]
fn jsonl_input_and_templates_with_variables() {
    let env = Env::new();
    let jsonl = fixtures().join("prompts.jsonl");
    env.cmd(&["enqueue", "--model", "m", jsonl.to_str().unwrap()])
        .assert()
        .success()
        .stdout("batch prompts: 4 new, 0 already queued (4 items × 1 models)\n");
    let prompt: String = env
        .conn()
        .query_row(
            "SELECT prompt FROM items WHERE batch = 'prompts' AND item_id = 'haiku'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(prompt, "Write a haiku about autumn.");
    let vars: String = env
        .conn()
        .query_row("SELECT vars FROM items WHERE item_id = 'haiku'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(vars.contains("\"style\":\"haiku\""), "{vars}");

    // CSV with variables, rendered through a template; item ids from the `id` column.
    let csv = fixtures().join("jokes.csv");
    let tpl = fixtures().join("joke-template.txt");
    env.cmd(&[
        "enqueue",
        "--model",
        "m",
        "--template",
        tpl.to_str().unwrap(),
        csv.to_str().unwrap(),
    ])
    .assert()
    .success();
    let prompt: String = env
        .conn()
        .query_row(
            "SELECT prompt FROM items WHERE batch = 'jokes' AND item_id = '3'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        prompt,
        "Tell one short joke about cats in the style of Maria Bamford. Answer with the joke only.\n"
    );

    // JSONL from stdin, no ids: the record number is the item id; batch `stdin`.
    env.cmd(&["enqueue", "--model", "m", "--input-format", "jsonl", "-"])
        .write_stdin("{\"prompt\": \"one\"}\n\n{\"prompt\": \"two\"}\n")
        .assert()
        .success();
    let ids = env.rows("SELECT item_id, prompt FROM items WHERE batch = 'stdin' ORDER BY item_id");
    assert_eq!(
        ids,
        vec![
            vec!["1".to_string(), "one".into()],
            vec!["2".to_string(), "two".into()]
        ]
    );
}

#[test]
fn unknown_template_variable_is_named_and_nothing_is_enqueued() {
    let env = Env::new();
    let tpl = env.write(
        "t.txt",
        "Tell a joke about {topic} in the voice of {narrator}.",
    );
    let csv = fixtures().join("jokes.csv");
    env.cmd(&[
        "enqueue",
        "--model",
        "m",
        "--template",
        &tpl,
        csv.to_str().unwrap(),
    ])
    .assert()
    .code(2)
    .stderr(error_line(
        "jokes.csv line 2: unknown variable {narrator} in template",
    ));
    // Nothing was enqueued: not even the database the first enqueue would have created.
    assert!(!env.db.exists());
}

#[test]
fn run_and_report_on_a_missing_database_fail_without_creating_it() {
    let env = Env::new();
    for args in [
        vec!["run"],
        vec!["report"],
        vec!["report", "runners"],
        vec!["reap"],
        vec!["resume"],
    ] {
        env.cmd(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("no database at"));
        assert!(!env.db.exists(), "{args:?} created the database");
    }
    let names: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .collect();
    assert!(names.is_empty(), "files were created: {names:?}");
}

#[test]
fn exit_codes_zero_when_all_done_three_when_some_failed() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.model("exit1", "exit1", &["--max-attempts", "2"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["run"])
        .assert()
        .code(0)
        .stderr(summary("2 done, 0 failed, 0 retried"));
    // Nothing left to do is success too.
    env.cmd(&["run"]).assert().code(0);
    env.cmd(&["enqueue", "--model", "exit1", &input])
        .assert()
        .success();
    env.cmd(&["run", "--retry-base", "0.05"])
        .assert()
        .code(3)
        .stderr(summary("0 done, 2 failed, 2 retried"));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM attempts WHERE model = 'exit1'"),
        4
    );
    // Usage errors are 2.
    env.cmd(&["run", "--jobs", "0"]).assert().code(2);
    env.cmd(&["run", "--lease", "soon"]).assert().code(2);
}

/// Two lanes: a slow model (concurrency 1, 3 s per job) never holds back a fast one (LESSONS 7).
#[test]
fn a_slow_model_never_stalls_a_fast_one() {
    let env = Env::new();
    env.model_cmd(
        "slow",
        &format!("'{}' 3", fake("slow")),
        &["--concurrency", "1"],
    );
    env.model("fast", "echo", &["--concurrency", "2"]);
    let input = env.prompts("p.csv", 3);
    let fast = env.prompts("f.csv", 12);
    env.cmd(&["enqueue", "--model", "slow", &input])
        .assert()
        .success();
    env.cmd(&["enqueue", "--model", "fast", &fast])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 15);
    let fast_last = env.int("SELECT MAX(finished_at) FROM attempts WHERE model = 'fast'");
    let slow_first = env.int("SELECT MIN(finished_at) FROM attempts WHERE model = 'slow'");
    let slow_last = env.int("SELECT MAX(finished_at) FROM attempts WHERE model = 'slow'");
    let start = env.int("SELECT MIN(started_at) FROM attempts");
    // The slow lane takes ~9 s; every fast job is done before its first job is.
    assert!(
        slow_last - start >= 9000,
        "slow lane took {} ms",
        slow_last - start
    );
    assert!(
        fast_last < slow_first,
        "fast jobs finished {} ms after the slow lane's first job",
        fast_last - slow_first
    );
    assert!(fast_last + 5000 < slow_last);
}

/// Percentiles by nearest rank over `ok` attempts of known durations (LESSONS 16).
#[test]
fn latency_percentiles_of_known_durations() {
    let env = Env::new();
    env.model("a", "echo", &[]);
    env.model("b", "flaky", &[]);
    let twenty = env.prompts("twenty.csv", 20);
    let three = env.prompts("three.csv", 3);
    env.cmd(&["enqueue", "--model", "a", &twenty])
        .assert()
        .success();
    env.cmd(&["enqueue", "--model", "b", &three])
        .assert()
        .success();
    env.cmd(&["run", "--retry-base", "0.01"]).assert().code(0);
    let conn = env.conn();
    // a: 100 ms, 200 ms, …, 2000 ms in a shuffled order of jobs.
    conn.execute(
        "UPDATE attempts SET duration_ms = ((job_id * 7) % 20 + 1) * 100 WHERE model = 'a'",
        [],
    )
    .unwrap();
    // b: ok attempts take 1 s, 2 s and 9 s; its failed attempts are far slower and must not count.
    conn.execute_batch(
        "UPDATE attempts SET duration_ms = 999000 WHERE model = 'b' AND outcome <> 'ok';
         UPDATE attempts SET duration_ms = 1000 WHERE model = 'b' AND outcome = 'ok' AND job_id = (SELECT MIN(job_id) FROM attempts WHERE model = 'b');
         UPDATE attempts SET duration_ms = 9000 WHERE model = 'b' AND outcome = 'ok' AND job_id = (SELECT MAX(job_id) FROM attempts WHERE model = 'b');
         UPDATE attempts SET duration_ms = 2000 WHERE model = 'b' AND outcome = 'ok' AND duration_ms NOT IN (1000, 9000);",
    )
    .unwrap();
    drop(conn);
    let doc = env.report_json(&["latency"]);
    let rows = doc["latency"].as_array().unwrap();
    let row = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    let a = row("a");
    assert_eq!(a["n"], 20);
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9;
    // Nearest rank of 20: p50 → 10th, p95 → 19th, p99 → 20th.
    assert!(close(&a["p50_s"], 1.0), "{a}");
    assert!(close(&a["p95_s"], 1.9), "{a}");
    assert!(close(&a["p99_s"], 2.0), "{a}");
    assert!(close(&a["max_s"], 2.0), "{a}");
    assert!(close(&a["mean_s"], 1.05), "{a}");
    let b = row("b");
    assert_eq!(b["n"], 3);
    // Of 3: p50 → 2nd, p95 and p99 → 3rd.
    assert!(close(&b["p50_s"], 2.0), "{b}");
    assert!(close(&b["p95_s"], 9.0), "{b}");
    assert!(close(&b["p99_s"], 9.0), "{b}");
    assert!(close(&b["max_s"], 9.0), "{b}");
    assert!(close(&b["mean_s"], 4.0), "{b}");
    // --model narrows the report to one model.
    let doc = env.report_json(&["latency", "--model", "b"]);
    assert_eq!(doc["latency"].as_array().unwrap().len(), 1);
}

/// Prompt text is data, never code: no shell runs, on stdin or in an argument (DESIGN: no shell).
#[test]
fn prompt_with_shell_syntax_reaches_the_model_verbatim_and_runs_nothing() {
    let env = Env::new();
    std::fs::create_dir(env.dir.path().join("x")).unwrap();
    std::fs::write(env.dir.path().join("x").join("keep"), "keep").unwrap();
    env.model("stdin", "echo", &[]);
    // The prompt as an argument of the command, too.
    env.model_cmd("argv", "printf '%s|' {prompt} {id}", &[]);
    let jsonl = fixtures().join("prompts.jsonl");
    env.cmd(&[
        "enqueue",
        "--model",
        "stdin",
        "--model",
        "argv",
        jsonl.to_str().unwrap(),
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    let prompt = "Say $(touch pwned) and ; rm -rf x verbatim";
    let by_stdin: String = env
        .conn()
        .query_row(
            "SELECT a.output FROM jobs j JOIN attempts a ON a.id = j.attempt_id
             WHERE j.item_id = 'inject' AND j.model = 'stdin'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by_stdin, format!("echo: {prompt}"));
    let by_argv: String = env
        .conn()
        .query_row(
            "SELECT a.output FROM jobs j JOIN attempts a ON a.id = j.attempt_id
             WHERE j.item_id = 'inject' AND j.model = 'argv'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by_argv, format!("{prompt}|inject|"));
    assert!(
        !env.dir.path().join("pwned").exists(),
        "a shell ran the prompt"
    );
    assert!(
        env.dir.path().join("x").join("keep").exists(),
        "rm -rf x ran"
    );
}

/// A reasoning model's `<think>` block is kept apart: the output is the answer only.
#[test]
fn thinking_is_split_from_the_answer() {
    let env = Env::new();
    env.model("thinker", "thinking", &[]);
    let input = env.write("p.csv", "id,prompt\nq,What is 2+2?\n");
    env.cmd(&["enqueue", "--model", "thinker", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    let row = env.rows("SELECT output, reasoning, raw_output FROM attempts");
    assert_eq!(row[0][0], "Here is my answer to: What is 2+2?");
    assert!(!row[0][0].contains("<think>"));
    assert_eq!(
        row[0][1],
        "The user asked: What is 2+2?\nLet me think about a good answer."
    );
    assert!(
        row[0][2].starts_with("<think>"),
        "raw output kept: {}",
        row[0][2]
    );
}

/// The child sees its job, attempt and model in the environment; `{model}` fills arguments.
#[test]
fn child_environment_and_model_variable() {
    let env = Env::new();
    env.model_cmd(
        "envy",
        "sh -c 'cat >/dev/null; printf \"%s %s %s %s\" \"$LLMBATCH_JOB_ID\" \"$LLMBATCH_ATTEMPT\" \"$LLMBATCH_MODEL\" \"$0\"' {model}",
        &[],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "envy", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.job_output(1).unwrap(), "1 1 envy envy");
}

/// `report` with no section gives status, latency, failures and the leaderboard (`models`);
/// JSON keys as DESIGN says.
#[test]
fn report_json_has_the_four_default_sections() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.model("exit1", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", "--model", "exit1", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    let doc = env.report_json(&[]);
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["failures", "latency", "models", "status"]);
    let status = doc["status"].as_array().unwrap();
    let echo = status.iter().find(|r| r["model"] == "echo").unwrap();
    assert_eq!(echo["done"], 2);
    assert_eq!(echo["pending"], 0);
    assert_eq!(echo["running"], 0);
    assert_eq!(echo["failed"], 0);
    let exit1 = status.iter().find(|r| r["model"] == "exit1").unwrap();
    assert_eq!(exit1["failed"], 2);
    // Table and CSV render the same sections.
    env.cmd(&["report"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Latency"))
        .stdout(predicate::str::contains("Failures"));
    env.cmd(&["report", "status", "--format", "csv"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("model,pending"));
}

/// `--limit N` claims at most N jobs.
#[test]
fn run_limit_claims_at_most_n() {
    let env = Env::new();
    env.model("echo", "echo", &["--concurrency", "4"]);
    let input = env.prompts("p.csv", 7);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["run", "--limit", "3"]).assert().code(0);
    assert_eq!(env.state_count("done"), 3);
    assert_eq!(env.state_count("pending"), 4);
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 7);
}

/// `--command` alone means the command backend: the template is never silently ignored.
#[test]
fn models_set_command_implies_the_command_backend() {
    let env = Env::new();
    env.cmd(&["models", "set", "m", "--command", &fake("echo")])
        .assert()
        .success()
        .stdout(predicate::str::contains("command"));
    let out = env
        .cmd(&["models", "list", "--format", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["models"][0]["backend"], "command", "{doc}");
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "m", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.job_output(1).unwrap(), "echo: prompt number 1");
}

/// A noisy model cannot deadlock its pipes or blow up memory: 16 MiB of output kept, the
/// last 8 KiB of stderr kept, the truncation noted.
#[test]
fn noisy_output_is_bounded_and_never_deadlocks() {
    let env = Env::new();
    env.model_cmd(
        "noisy",
        r#"sh -c 'cat >/dev/null; head -c 100000 /dev/zero | tr "\000" e >&2; head -c 20000000 /dev/zero | tr "\000" a; echo END >&2'"#,
        &["--timeout", "60"],
    );
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "noisy", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    let row = env.rows(
        "SELECT outcome, length(output), length(stderr), substr(stderr, -4), error FROM attempts",
    );
    assert_eq!(row[0][0], "ok");
    assert_eq!(row[0][1], (16 * 1024 * 1024).to_string());
    assert_eq!(row[0][2], "8192");
    assert_eq!(row[0][3], "END\n");
    assert!(row[0][4].contains("truncated"), "{:?}", row[0][4]);
}

/// `--log-file` keeps timestamped log lines; `-q` leaves stderr to errors only.
#[test]
fn log_file_and_quiet() {
    let env = Env::new();
    env.model("exit1", "exit1", &["--max-attempts", "1"]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "exit1", &input])
        .assert()
        .success();
    let log = env.dir.path().join("run.log");
    env.cmd(&["-q", "run", "--log-file", log.to_str().unwrap()])
        .assert()
        .code(3)
        .stderr("");
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().unwrap_or_default();
    // 2026-01-02T03:04:05.678Z ERROR …
    assert!(
        first.len() > 25 && &first[4..5] == "-" && &first[10..11] == "T",
        "{text}"
    );
    assert!(text.contains("failed after attempt 1"), "{text}");
}

/// A first enqueue that fails on bad input leaves no empty database behind.
#[test]
fn a_failed_first_enqueue_creates_no_database() {
    let env = Env::new();
    let bad = env.write("bad.csv", "id,prompt\n1,fine\n2,too,many\n");
    env.cmd(&["enqueue", "--model", "m", &bad]).assert().code(2);
    assert!(!env.db.exists(), "an empty database was left behind");
}

/// A reader that goes away (`| head`) ends the command quietly, as for any Unix filter.
#[test]
fn a_closed_pipe_is_not_an_error() {
    let env = Env::new();
    // Far more than a pipe buffer holds, in every format.
    env.cmd(&["enqueue", "--model", "m", &env.prompts("p.csv", 3000)])
        .assert()
        .success();
    for format in ["table", "csv", "json"] {
        let mut child = env
            .spawn_cmd(&["report", "jobs", "--format", format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then close the pipe before the report is written out.
        let mut out = child.stdout.take().unwrap();
        let mut one = [0u8; 1];
        std::io::Read::read_exact(&mut out, &mut one).unwrap();
        drop(out);
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "{format}: {:?}", result.status);
        assert!(
            !String::from_utf8_lossy(&result.stderr).contains("error"),
            "{format}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Out of file descriptors, a command cannot be started: that is the machine's state, not the
/// job's fault. The attempt is `unavailable` and uncharged, the job stays pending, and `run`
/// stops past --unavailable-limit with a message saying what is wrong (never a failed job).
#[test]
fn a_system_limit_at_spawn_fails_no_job() {
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    env.model("echo", "echo", &[]);
    env.cmd(&["enqueue", "--model", "echo", &env.prompts("p.csv", 2)])
        .assert()
        .success();
    // The exact number of descriptors the runner needs before it spawns may change: try a few
    // limits, from too few to open the database up to enough to run.
    let mut limited = false;
    for n in 8..=24u64 {
        let mut cmd = env.spawn_cmd(&["run", "--unavailable-limit", "1s"]);
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(env.state_count("failed"), 0, "limit {n}: {stderr}");
        if stderr.contains("its command could not be started") {
            limited = true;
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert_eq!(env.state_count("pending"), 2, "{stderr}");
            assert!(
                env.int(
                    "SELECT COUNT(*) FROM attempts WHERE outcome = 'unavailable' AND charged = 0"
                ) > 0
            );
        }
        if env.state_count("done") == 2 {
            break;
        }
    }
    assert!(limited, "no file limit made the spawn fail");
    assert_eq!(
        env.state_count("done"),
        2,
        "a later run with enough files finishes"
    );
}

/// `run`'s summary line, anchored: "2 done" must not match "12 done" (counts are plain text).
fn summary(counts: &str) -> impl predicates::Predicate<str> {
    predicate::str::is_match(format!("(?m)^llmbatch: {counts} in ")).unwrap()
}

/// The error line names a path ending in `text`, anchored at both ends of the path and
/// message start ("line 4" must not match "line 40").
fn error_line(text: &str) -> impl predicates::Predicate<str> {
    let text = text.to_string();
    predicate::function(move |s: &str| {
        s.lines().any(|l| {
            l.strip_prefix("llmbatch: error: ")
                .and_then(|rest| rest.split_once(&text))
                .is_some_and(|(path, _)| path.is_empty() || path.ends_with('/'))
        })
    })
}
