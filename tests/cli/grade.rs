//! Grading (issue 5): grade queueing, verdict parsing with fake graders, the `parse` retry,
//! waiting for the parent, `report grades` (pass rates, agreement, kappa) and `export`.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Eight outputs whose verdicts are known: the fair grader says YES to "funny", the chatty
/// one (given the marker "haha") to "haha". Both YES: 1-3; only fair: 4-5; neither: 6-8.
const KNOWN: &str = "id,prompt
1,a funny haha one
2,funny and haha
3,haha so funny
4,funny only
5,funny again
6,plain
7,dull
8,boring
";

fn graded_env() -> Env {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    env.grader("fair", "fair", &["funny"], &["--timeout", "20"]);
    env.grader("chatty", "chatty", &["haha"], &["--timeout", "20"]);
    env.grader("harsh", "harsh", &[], &["--timeout", "20"]);
    let input = env.write("known.csv", KNOWN);
    env.cmd(&["enqueue", "--model", "echo", "--batch", "known", &input])
        .assert()
        .success();
    env
}

fn row<'a>(rows: &'a Value, pairs: &[(&str, &str)]) -> &'a Value {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| pairs.iter().all(|(k, v)| r[*k] == *v))
        .unwrap_or_else(|| panic!("no row with {pairs:?} in {rows:#}"))
}

fn close(v: &Value, expected: f64) {
    let x = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!((x - expected).abs() < 0.0015, "{x} != {expected}");
}

#[test]
fn grades_are_parsed_and_reported_with_agreement_and_kappa() {
    let env = graded_env();
    let out = env.stdout(&[
        "grade", "--grader", "fair", "--grader", "chatty", "--grader", "harsh",
    ]);
    assert!(out.contains("24 new"), "{out}");
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 8 + 24);

    // Each grade row: fair from the marker, harsh from decorated markdown (`1/10`), chatty
    // from JSON in a fence after a <think> block that says something else.
    let pass = |grader: &str, item: &str| -> (i64, f64) {
        env.conn()
            .query_row(
                "SELECT g.pass, g.score FROM grades g JOIN jobs p ON p.id = g.graded_job_id
                 WHERE g.grader = ?1 AND p.item_id = ?2",
                [grader, item],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    assert_eq!(pass("fair", "1"), (1, 8.0));
    assert_eq!(pass("fair", "6"), (0, 3.0));
    assert_eq!(pass("harsh", "1"), (0, 1.0));
    assert_eq!(pass("chatty", "3"), (1, 7.0));
    assert_eq!(pass("chatty", "4"), (0, 4.0));
    let reason: String = env
        .conn()
        .query_row(
            "SELECT reason FROM grades WHERE grader = 'chatty' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reason, "graded by a chatty judge");
    // The grade job belongs to its parent's batch and item.
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM jobs g JOIN jobs p ON p.id = g.parent_id
             WHERE g.kind = 'grade' AND g.batch = p.batch AND g.item_id = p.item_id"
        ),
        24
    );

    let report = env.report_json(&["grades"]);
    // Per (model, grader): fair YES on 5 of 8 (scores 5×8 + 3×3), chatty on 3 (3×7 + 5×4).
    let fair = row(&report["grades"], &[("model", "echo"), ("grader", "fair")]);
    assert_eq!(fair["n"], 8);
    assert_eq!(fair["rubric"], "joke");
    close(&fair["pass_rate"], 5.0 / 8.0);
    close(&fair["mean_score"], 49.0 / 8.0);
    close(&fair["median_score"], 8.0);
    let chatty = row(&report["grades"], &[("grader", "chatty")]);
    close(&chatty["pass_rate"], 3.0 / 8.0);
    close(&chatty["mean_score"], 41.0 / 8.0);
    close(&chatty["median_score"], 4.0);
    // Harshness per grader.
    close(
        &row(&report["graders"], &[("grader", "harsh")])["pass_rate"],
        0.0,
    );
    close(
        &row(&report["graders"], &[("grader", "fair")])["pass_rate"],
        0.625,
    );
    close(
        &row(&report["graders"], &[("grader", "chatty")])["pass_rate"],
        0.375,
    );

    // Agreement, fair vs chatty, by hand: they agree on 3 YES + 3 NO of 8, po = 6/8;
    // fair says YES to 5/8, chatty to 3/8, so chance agreement pe = 5/8·3/8 + 3/8·5/8.
    let pair = row(
        &report["agreement"],
        &[("grader_a", "chatty"), ("grader_b", "fair")],
    );
    assert_eq!(pair["n"], 8);
    assert_eq!(pair["agree"], 6);
    close(&pair["agreement_pct"], 75.0);
    let po = 6.0 / 8.0;
    let pe = (5.0 / 8.0) * (3.0 / 8.0) + (3.0 / 8.0) * (5.0 / 8.0);
    close(&pair["kappa"], (po - pe) / (1.0 - pe));
    // The harsh grader agrees with fair only on fair's 3 NOs, and no better than chance.
    let harsh = row(
        &report["agreement"],
        &[("grader_a", "fair"), ("grader_b", "harsh")],
    );
    assert_eq!(harsh["agree"], 3);
    close(&harsh["agreement_pct"], 37.5);
    close(&harsh["kappa"], 0.0);
    assert_eq!(report["agreement"].as_array().unwrap().len(), 3);

    // The table says out loud that one grader passed nothing.
    let table = env.stdout(&["report", "grades"]);
    assert!(
        table.contains("grader harsh passed none of 8 outputs"),
        "{table}"
    );
    // Scoped to another batch: nothing.
    let other = env.report_json(&["grades", "--batch", "nope"]);
    assert_eq!(other["grades"].as_array().unwrap().len(), 0);
}

#[test]
fn unreadable_verdict_is_a_parse_attempt_then_retried() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    env.grader(
        "broken",
        "broken",
        &[],
        &["--timeout", "20", "--max-attempts", "3"],
    );
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["grade", "--grader", "broken"]).assert().success();
    env.cmd(&["run", "--retry-base", "50ms"]).assert().code(0);

    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'grade' AND state = 'done' AND attempts = 2"
        ),
        2
    );
    // Attempt 1 is `parse`, charged, its raw answer kept and the reason said.
    let (outcome, charged, output, error): (String, i64, String, String) = env
        .conn()
        .query_row(
            "SELECT a.outcome, a.charged, a.output, a.error FROM attempts a JOIN jobs j ON j.id = a.job_id
             WHERE j.kind = 'grade' AND a.number = 1 LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(outcome, "parse");
    assert_eq!(charged, 1);
    assert!(output.contains("As an AI language model"), "{output}");
    assert!(error.contains("unreadable verdict"), "{error}");
    assert!(error.contains("eleventy"), "{error}");
    assert_eq!(
        env.int("SELECT COUNT(*) FROM grades WHERE score = 6 AND pass = 1"),
        2
    );
    // No verdict is recorded for a job still being retried, and the last error is cleared.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade' AND last_error IS NOT NULL"),
        0
    );
    let report = env.report_json(&["grades", "failures"]);
    assert_eq!(
        row(&report["graders"], &[("grader", "broken")])["parse_failures"],
        2
    );
    assert_eq!(row(&report["failures"], &[("model", "broken")])["parse"], 2);

    // With a budget of one attempt, the garbage answer fails the grade job as `parse`.
    env.grader(
        "broken1",
        "broken",
        &[],
        &["--timeout", "20", "--max-attempts", "1"],
    );
    env.cmd(&["grade", "--grader", "broken1"])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(3);
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE model = 'broken1' AND state = 'failed' AND last_outcome = 'parse'"),
        2
    );
    let report = env.report_json(&["grades"]);
    assert_eq!(
        row(&report["graders"], &[("grader", "broken1")])["failed"],
        2
    );
}

#[test]
fn grade_waits_for_its_parent_and_follows_a_resume() {
    let env = Env::new();
    env.model("gen", "exit1", &["--timeout", "20", "--max-attempts", "1"]);
    env.grader("fair", "fair", &["echo"], &["--timeout", "20"]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "gen", &input])
        .assert()
        .success();

    // Queued while the parent is pending: shown as waiting, not pending.
    let out = env.stdout(&["grade", "--grader", "fair"]);
    assert!(out.contains("1 output(s) not done yet"), "{out}");
    let status = env.report_json(&["status"]);
    let fair = row(&status["status"], &[("model", "fair")]);
    assert_eq!(fair["waiting"], 1);
    assert_eq!(fair["pending"], 0);

    // The parent fails: run ends (exit 3) instead of waiting on the grade job for ever.
    let started = Instant::now();
    env.cmd(&["run", "--retry-base", "50ms"]).assert().code(3);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'generate' AND state = 'failed'"),
        1
    );
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM jobs WHERE kind = 'grade' AND state = 'pending' AND attempts = 0"
        ),
        1
    );
    let status = env.report_json(&["status"]);
    assert_eq!(row(&status["status"], &[("model", "fair")])["waiting"], 1);
    // A second run has nothing it can do: it exits at once, the grade still waiting.
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.int("SELECT COUNT(*) FROM grades"), 0);

    // The model is fixed and the parent resumed: the parent runs, then its grade.
    let echo = fake("echo");
    env.cmd(&["models", "set", "gen", "--command", &echo])
        .assert()
        .success();
    env.cmd(&["resume", "--model", "gen"]).assert().success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 2);
    assert_eq!(env.int("SELECT pass FROM grades"), 1);
}

#[test]
fn a_grader_run_alone_does_not_wait_for_parents_out_of_scope() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    env.grader("fair", "fair", &[], &["--timeout", "20"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["grade", "--grader", "fair"]).assert().success();
    // Only the grader's jobs are in scope and their parents are not done: nothing to do.
    let started = Instant::now();
    env.cmd(&["run", "--model", "fair"]).assert().code(0);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(env.state_count("pending"), 4);
    env.cmd(&["run", "--model", "echo"]).assert().code(0);
    env.cmd(&["run", "--model", "fair"]).assert().code(0);
    assert_eq!(env.state_count("done"), 4);
}

#[test]
fn grade_queueing_is_idempotent_and_checks_its_input() {
    let env = graded_env();
    let json = |args: &[&str]| -> Value {
        let mut all = vec!["grade"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        serde_json::from_str(&env.stdout(&all)).expect("json")
    };
    let first = json(&["--grader", "fair"]);
    assert_eq!(first["new"], 8);
    assert_eq!(first["existing"], 0);
    assert_eq!(first["outputs"], 8);
    assert_eq!(first["rubric"], "joke");
    let again = json(&["--grader", "fair", "--grader", "harsh", "--grader", "fair"]);
    assert_eq!(again["new"], 8);
    assert_eq!(again["existing"], 8);
    let text = env.stdout(&["grade", "--grader", "fair", "--grader", "harsh"]);
    assert!(
        text.contains("0 new grade job(s), 16 already queued"),
        "{text}"
    );
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade'"),
        16
    );

    // Another rubric is another grade of the same output.
    let summary = common_fixture("rubrics/summary.txt");
    let s = json(&["--grader", "fair", "--rubric", &summary]);
    assert_eq!(s["rubric"], "summary");
    assert_eq!(s["new"], 8);
    let one = env
        .cmd(&[
            "grade",
            "--grader",
            "harsh",
            "--rubric",
            &summary,
            "--ids-file",
            "-",
            "--format",
            "json",
        ])
        .write_stdin("3\n")
        .output()
        .unwrap();
    let one: Value = serde_json::from_slice(&one.stdout).unwrap();
    assert_eq!(one["new"], 1);
    assert_eq!(env.int("SELECT COUNT(*) FROM rubrics"), 2);

    // Bad rubrics and an empty scope are bad input (exit 2), with the reason.
    let bad = env.write("bad.txt", "pass: OK\nscale: 1-5\n---\n{output}\n");
    let out = env
        .cmd(&["grade", "--grader", "fair", "--rubric", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no `score:` field"), "{err}");
    let blind = env.write("blind.txt", "pass: OK\n---\nIs it good?\n");
    let out = env
        .cmd(&["grade", "--grader", "fair", "--rubric", &blind])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("{output}"));
    let out = env
        .cmd(&[
            "grade",
            "--grader",
            "fair",
            "--rubric",
            "no-such-rubric.txt",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read rubric"));
    let fresh = Env::new();
    let out = fresh.cmd(&["grade", "--grader", "fair"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
    assert!(!fresh.db.exists());
    let out = env
        .cmd(&["grade", "--grader", "fair", "--batch", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no generated jobs match batch"));
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE kind = 'grade'"),
        25
    );
}

fn common_fixture(rel: &str) -> String {
    fixtures().join(rel).to_string_lossy().into_owned()
}

#[test]
fn export_streams_records_csv_and_a_joblog() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    env.model("flaky", "flaky", &["--timeout", "20"]);
    env.grader("fair", "fair", &["number 1"], &["--timeout", "20"]);
    env.grader("harsh", "harsh", &[], &["--timeout", "20"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&[
        "enqueue", "--model", "echo", "--model", "flaky", "--batch", "b", &input,
    ])
    .assert()
    .success();
    env.cmd(&[
        "grade", "--grader", "fair", "--grader", "harsh", "--model", "echo",
    ])
    .assert()
    .success();
    env.cmd(&["run", "--retry-base", "50ms"]).assert().code(0);

    // JSONL: one record per generated job, grades only when asked for.
    let plain = env.stdout(&["export"]);
    let records: Vec<Value> = plain
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.get("grades").is_none()));
    let lines = env.stdout(&["export", "--with-grades", "--model", "echo"]);
    let records: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    let r = &records[0];
    assert_eq!(r["batch"], "b");
    assert_eq!(r["item_id"], "1");
    assert_eq!(r["model"], "echo");
    assert_eq!(r["prompt"], "prompt number 1");
    assert_eq!(r["output"], "echo: prompt number 1");
    assert_eq!(r["vars"]["prompt"], "prompt number 1");
    assert_eq!(r["state"], "done");
    assert_eq!(r["attempts"], 1);
    assert!(r["latency_s"].as_f64().unwrap() >= 0.0);
    assert!(r["job_id"].as_i64().unwrap() > 0);
    let grades = r["grades"].as_array().unwrap();
    assert_eq!(grades.len(), 2);
    assert_eq!(grades[0]["grader"], "fair");
    assert_eq!(grades[0]["pass"], true);
    assert_eq!(grades[0]["score"], 8.0);
    assert_eq!(grades[0]["rubric"], "joke");
    assert_eq!(grades[1]["grader"], "harsh");
    assert_eq!(grades[1]["pass"], false);
    assert_eq!(records[1]["grades"][0]["pass"], false);
    // The flaky model took two attempts.
    let flaky: Vec<Value> = env
        .stdout(&["export", "--model", "flaky"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(flaky
        .iter()
        .all(|r| r["attempts"] == 2 && r["state"] == "done"));

    // CSV: the fixed columns, then one pass/score/reason triple per grader.
    let csv_text = env.stdout(&["export", "--format", "csv", "--with-grades", "--batch", "b"]);
    let mut rd = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    for col in [
        "job_id",
        "batch",
        "item_id",
        "model",
        "state",
        "attempts",
        "latency_s",
        "prompt",
        "output",
        "vars",
        "fair_pass",
        "fair_score",
        "fair_reason",
        "harsh_pass",
    ] {
        assert!(header.contains(&col.to_string()), "no {col} in {header:?}");
    }
    let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let first = rows.iter().find(|r| &r[at("model")] == "echo").unwrap();
    assert_eq!(&first[at("output")], "echo: prompt number 1");
    assert_eq!(&first[at("fair_pass")], "yes");
    assert_eq!(&first[at("harsh_pass")], "no");
    let flaky_row = rows.iter().find(|r| &r[at("model")] == "flaky").unwrap();
    assert_eq!(&flaky_row[at("fair_pass")], "");

    // Joblog: GNU parallel's columns, one row per attempt of the generated jobs.
    let log = env.stdout(&["export", "--format", "joblog"]);
    let mut lines = log.lines();
    assert_eq!(
        lines.next().unwrap(),
        "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2 + 4, "{log}");
    for r in &rows {
        assert_eq!(r.len(), 9, "{r:?}");
        let (secs, frac) = r[2].split_once('.').expect("Starttime with decimals");
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
        assert_eq!(frac.len(), 3);
        assert!(r[3].parse::<f64>().is_ok());
        assert_eq!(r[4], "15", "Send = prompt bytes");
        assert_eq!(r[1], ":");
    }
    let failed: Vec<&Vec<&str>> = rows.iter().filter(|r| r[6] != "0").collect();
    assert_eq!(failed.len(), 2, "flaky's first attempts");
    assert!(failed
        .iter()
        .all(|r| r[6] == "1" && r[8].starts_with("flaky b/")));
    // Each failed attempt's job shows again with its successful retry (same Seq).
    for f in &failed {
        assert!(rows.iter().any(|r| r[0] == f[0] && r[6] == "0"));
    }
    let echo_row = rows.iter().find(|r| r[8] == "echo b/1").unwrap();
    assert_eq!(echo_row[5], "21", "Receive = output bytes");
}
