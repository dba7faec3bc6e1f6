//! Grading with HTTP graders (issue 5 item 4), against the fake server in `fake_server.rs`: an
//! Ollama grader is asked for structured output shaped by the rubric and its JSON answer
//! becomes a grade; a format the grader was given by hand wins; an OpenAI-compatible grader
//! gets no Ollama `format` and its text answer is read by the text parser.

use crate::common::*;
use crate::fake_server::*;
use serde_json::{json, Value};

/// The schema the built-in joke rubric asks an Ollama grader for.
fn joke_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "IS_JOKE": {"type": "string", "enum": ["YES", "NO"]},
            "QUALITY": {"type": "number", "minimum": 1.0, "maximum": 10.0},
            "REASON": {"type": "string"}
        },
        "required": ["IS_JOKE", "QUALITY", "REASON"]
    })
}

/// The schema of `fixtures/rubrics/summary.txt`.
fn summary_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "FAITHFUL": {"type": "string", "enum": ["YES", "NO"]},
            "COVERAGE": {"type": "number", "minimum": 1.0, "maximum": 5.0},
            "REASON": {"type": "string"}
        },
        "required": ["FAITHFUL", "COVERAGE", "REASON"]
    })
}

/// Two echo outputs, `echo: prompt number 1` and `… 2`, ready to grade.
fn generated_env() -> Env {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", "--batch", "b", &input])
        .assert()
        .success();
    env
}

/// The prompt a request carried (Ollama `prompt`, or the OpenAI user message).
fn prompt_of(req: &Req) -> &str {
    req.body["prompt"]
        .as_str()
        .or_else(|| {
            req.body["messages"]
                .as_array()?
                .iter()
                .rev()
                .find(|m| m["role"] == "user")?["content"]
                .as_str()
        })
        .unwrap_or("")
}

/// The joke verdict the fake graders give: output 1 is a joke, output 2 is not.
fn joke_verdict(prompt: &str) -> Value {
    if prompt.contains("echo: prompt number 1") {
        json!({"IS_JOKE": "YES", "QUALITY": 7, "REASON": "a pun on cats"})
    } else {
        json!({"IS_JOKE": "NO", "QUALITY": 2, "REASON": "no punchline"})
    }
}

/// (grader, rubric, item, pass, score, reason, fields) per grade, in a stable order.
type GradeRow = (
    String,
    String,
    String,
    Option<i64>,
    Option<f64>,
    Option<String>,
    Value,
);

fn grades(env: &Env) -> Vec<GradeRow> {
    let conn = env.conn();
    let mut stmt = conn
        .prepare(
            "SELECT g.grader, r.name, p.item_id, g.pass, g.score, g.reason, g.fields
             FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN rubrics r ON r.id = gj.rubric_id
                  JOIN jobs p ON p.id = g.graded_job_id
             ORDER BY g.grader, r.name, p.item_id",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let fields: String = r.get(6)?;
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                serde_json::from_str(&fields).unwrap(),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn report_row<'a>(rows: &'a Value, pairs: &[(&str, &str)]) -> &'a Value {
    rows.as_array()
        .expect("rows")
        .iter()
        .find(|r| pairs.iter().all(|(k, v)| r[*k] == *v))
        .unwrap_or_else(|| panic!("no row with {pairs:?} in {rows:#}"))
}

#[test]
fn a_zero_config_ollama_grader_gets_the_rubric_schema_and_its_json_is_graded() {
    let server = Server::start(|req, _| {
        if req.path != "/api/generate" {
            return now_json(404, json!({"error": "404 page not found"}));
        }
        let prompt = prompt_of(req);
        let answer = if prompt.contains("FAITHFUL") {
            json!({"FAITHFUL": "NO", "COVERAGE": 2, "REASON": "invents a cat"})
        } else {
            joke_verdict(prompt)
        };
        now_json(
            200,
            ollama_answer(req.model(), &answer.to_string(), None, "stop"),
        )
    });
    let env = generated_env();
    // `judge` was never configured: it is Ollama at $OLLAMA_HOST, for either rubric.
    env.cmd(&["grade", "--grader", "judge"]).assert().success();
    let summary = fixtures()
        .join("rubrics/summary.txt")
        .to_string_lossy()
        .into_owned();
    env.cmd(&["grade", "--grader", "judge", "--rubric", &summary])
        .assert()
        .success();
    let host = server.url.trim_start_matches("http://").to_string();
    env.cmd(&["run"]).env("OLLAMA_HOST", &host).assert().code(0);
    assert_eq!(env.state_count("done"), 2 + 4);

    // Each grade request asks for its own rubric's schema, and nothing else was added.
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4);
    for r in &reqs {
        assert_eq!(r.path, "/api/generate");
        assert_eq!(r.model(), "judge");
        let prompt = prompt_of(r);
        let expected = if prompt.contains("FAITHFUL") {
            summary_schema()
        } else {
            assert!(prompt.contains("IS_JOKE: YES or NO"), "{prompt}");
            joke_schema()
        };
        assert_eq!(r.body["format"], expected, "{}", r.body);
        let mut keys: Vec<&str> = r
            .body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["format", "model", "prompt", "stream"]);
    }
    assert!(reqs
        .iter()
        .any(|r| prompt_of(r).contains("The answer to grade:\necho: prompt number 1\n")));

    // The JSON in Ollama's `response` is the verdict.
    let g = grades(&env);
    assert_eq!(g.len(), 4, "{g:?}");
    let (grader, rubric, item, pass, score, reason, fields) = &g[0];
    assert_eq!(
        (grader.as_str(), rubric.as_str(), item.as_str()),
        ("judge", "joke", "1")
    );
    assert_eq!((*pass, *score), (Some(1), Some(7.0)));
    assert_eq!(reason.as_deref(), Some("a pun on cats"));
    assert_eq!(fields["IS_JOKE"], "YES");
    assert_eq!(fields["QUALITY"], "7");
    assert_eq!(fields["REASON"], "a pun on cats");
    assert_eq!((g[1].2.as_str(), g[1].3, g[1].4), ("2", Some(0), Some(2.0)));
    assert_eq!(g[1].5.as_deref(), Some("no punchline"));
    for s in &g[2..] {
        assert_eq!(s.1, "summary");
        assert_eq!((s.3, s.4), (Some(0), Some(2.0)));
        assert_eq!(s.6["FAITHFUL"], "NO");
    }
    assert_eq!(
        env.int(&format!(
            "SELECT COUNT(*) FROM attempts WHERE model = 'judge' AND outcome = 'ok'
             AND http_status = 200 AND endpoint = '{}' AND output LIKE '{{%}}'",
            server.url
        )),
        4,
        "the grader's JSON kept as its output"
    );

    // `report grades` shows them per (model, grader, rubric).
    let report = env.report_json(&["grades"]);
    let joke = report_row(
        &report["grades"],
        &[("model", "echo"), ("grader", "judge"), ("rubric", "joke")],
    );
    assert_eq!(joke["n"], 2);
    assert_eq!(joke["pass_rate"], json!(0.5));
    assert_eq!(joke["mean_score"], json!(4.5));
    let sum = report_row(
        &report["grades"],
        &[("grader", "judge"), ("rubric", "summary")],
    );
    assert_eq!(sum["n"], 2);
    assert_eq!(sum["pass_rate"], json!(0.0));
    assert_eq!(sum["mean_score"], json!(2.0));
    let table = env.stdout(&["report", "grades"]);
    assert!(
        table.contains("judge") && table.contains("summary"),
        "{table}"
    );
}

#[test]
fn a_format_the_grader_was_given_wins_over_the_rubric_schema() {
    let server = Server::start(|req, _| {
        now_json(
            200,
            ollama_answer(
                req.model(),
                &joke_verdict(prompt_of(req)).to_string(),
                None,
                "stop",
            ),
        )
    });
    let env = generated_env();
    let own = r#"{"type":"object","properties":{"IS_JOKE":{"type":"boolean"},"QUALITY":{"type":"integer"}}}"#;
    // Configured by endpoint only (Ollama is the default backend), with and without a format.
    for (name, extra) in [
        ("plain", vec![]),
        ("as-json", vec!["--format-output", "json"]),
        (
            "own-schema",
            vec!["--backend", "ollama", "--format-output", own],
        ),
    ] {
        let mut args = vec![
            "models",
            "set",
            name,
            "--endpoint",
            &server.url,
            "--timeout",
            "20",
        ];
        args.extend(extra);
        env.cmd(&args).assert().success();
    }
    env.cmd(&[
        "grade",
        "--grader",
        "plain",
        "--grader",
        "as-json",
        "--grader",
        "own-schema",
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 2 + 6);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 6);
    let own: Value = serde_json::from_str(own).unwrap();
    for r in &reqs {
        let expected = match r.model() {
            "plain" => joke_schema(),
            "as-json" => json!("json"),
            "own-schema" => own.clone(),
            m => panic!("unexpected model {m}"),
        };
        assert_eq!(r.body["format"], expected, "{}", r.model());
    }
    // The grader's own setting is left as it was set.
    let list: Value =
        serde_json::from_str(&env.stdout(&["models", "list", "--format", "json"])).unwrap();
    assert_eq!(
        report_row(&list["models"], &[("name", "plain")])["settings"],
        "{}"
    );

    // Every grader's JSON answer reads the same.
    let g = grades(&env);
    assert_eq!(g.len(), 6, "{g:?}");
    for (grader, _, item, pass, score, reason, _) in &g {
        let want = if item == "1" {
            (Some(1), Some(7.0), "a pun on cats")
        } else {
            (Some(0), Some(2.0), "no punchline")
        };
        assert_eq!(
            (*pass, *score, reason.as_deref().unwrap()),
            want,
            "{grader} {item}"
        );
    }
}

#[test]
fn an_openai_grader_gets_no_format_and_its_text_answer_parses() {
    let server = Server::start(|req, _| {
        if req.path != "/v1/chat/completions" {
            return now_json(404, json!({"detail": "Not Found"}));
        }
        let prompt = prompt_of(req);
        // Markdown lines for one, JSON in a fence for the other; the reasoning says otherwise
        // and is not what is graded.
        let content = if prompt.contains("echo: prompt number 1") {
            "Here is my grade.\n\n**IS_JOKE:** Yes\n- **Quality:** 8/10\n- Reason: a classic setup"
                .to_string()
        } else {
            "```json\n{\"is_joke\": \"no\", \"quality\": 3, \"reason\": \"flat\"}\n```".to_string()
        };
        now_json(
            200,
            openai_answer(req.model(), &content, Some("IS_JOKE: NO\nQUALITY: 1")),
        )
    });
    let env = generated_env();
    env.cmd(&[
        "models",
        "set",
        "gpt-judge",
        "--backend",
        "openai",
        "--endpoint",
        &server.url,
        "--timeout",
        "20",
    ])
    .assert()
    .success();
    env.cmd(&["grade", "--grader", "gpt-judge"])
        .assert()
        .success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 4);

    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r.path, "/v1/chat/completions");
        assert!(r.body.get("format").is_none(), "{}", r.body);
        assert!(r.body.get("response_format").is_none(), "{}", r.body);
        assert!(prompt_of(r).contains("IS_JOKE: YES or NO"));
    }

    let g = grades(&env);
    assert_eq!(g.len(), 2, "{g:?}");
    assert_eq!((g[0].2.as_str(), g[0].3, g[0].4), ("1", Some(1), Some(8.0)));
    assert_eq!(g[0].5.as_deref(), Some("a classic setup"));
    assert_eq!(g[0].6["QUALITY"], "8/10");
    assert_eq!((g[1].2.as_str(), g[1].3, g[1].4), ("2", Some(0), Some(3.0)));
    assert_eq!(g[1].5.as_deref(), Some("flat"));
    assert_eq!(
        env.int(
            "SELECT COUNT(*) FROM attempts WHERE model = 'gpt-judge' AND outcome = 'ok'
             AND reasoning = 'IS_JOKE: NO\nQUALITY: 1'"
        ),
        2,
        "the reasoning is kept apart"
    );
    let report = env.report_json(&["grades"]);
    let row = report_row(&report["grades"], &[("grader", "gpt-judge")]);
    assert_eq!(row["n"], 2);
    assert_eq!(row["pass_rate"], json!(0.5));
    assert_eq!(row["mean_score"], json!(5.5));
}

#[test]
fn a_schema_shaped_answer_out_of_scale_is_a_parse_attempt_then_retried() {
    // The schema's minimum/maximum is a request, not a guarantee: the first answer says
    // QUALITY 42, which the parser rejects; the retry answers within the scale.
    let server = Server::start(|req, n| {
        let answer = if n == 1 {
            json!({"IS_JOKE": "YES", "QUALITY": 42, "REASON": "off the scale"})
        } else {
            json!({"IS_JOKE": "YES", "QUALITY": 9.5, "REASON": "great"})
        };
        now_json(
            200,
            ollama_answer(req.model(), &answer.to_string(), None, "stop"),
        )
    });
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "20"]);
    let input = env.prompts("p.csv", 1);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    // A zero-config grader given an attempt budget, but no endpoint, while $OLLAMA_HOST is
    // unset: it still follows $OLLAMA_HOST where `run` runs.
    env.cmd(&[
        "models",
        "set",
        "judge",
        "--timeout",
        "20",
        "--max-attempts",
        "2",
    ])
    .assert()
    .success();
    env.cmd(&["grade", "--grader", "judge"]).assert().success();
    let host = server.url.trim_start_matches("http://").to_string();
    env.cmd(&["run", "--retry-base", "50ms"])
        .env("OLLAMA_HOST", &host)
        .assert()
        .code(0);

    assert_eq!(server.count(), 2);
    assert_eq!(
        env.int(&format!(
            "SELECT COUNT(*) FROM attempts WHERE model = 'judge' AND endpoint = '{}'",
            server.url
        )),
        2
    );
    let (outcome, output, error): (String, String, String) = env
        .conn()
        .query_row(
            "SELECT outcome, output, error FROM attempts WHERE model = 'judge' AND number = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(outcome, "parse");
    assert!(output.contains("\"QUALITY\":42"), "{output}");
    assert!(error.contains("QUALITY is \"42\""), "{error}");
    let g = grades(&env);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!((g[0].3, g[0].4), (Some(1), Some(9.5)));
    assert_eq!(g[0].5.as_deref(), Some("great"));
}
