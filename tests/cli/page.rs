//! The leaderboard (`report models`) and the HTML page (`report --format html`, issue 14):
//! ranking by grades then p95 with ties and gaps said, the page's data pinned for a fixed
//! database and equal to the tables', hostile text escaped, and the page rendered in a real
//! headless Chromium (no console message, not blank, one leaderboard row per model).

use crate::common::*;
use crate::reports::fixed_db;
use std::path::Path;
use std::time::Duration;

/// The JSON the page embeds (`<script type="application/json" id="report-data">`).
fn page_data(html: &str) -> serde_json::Value {
    let open = "<script type=\"application/json\" id=\"report-data\">";
    let start = html.find(open).expect("data island") + open.len();
    let end = start + html[start..].find("</script>").expect("end of data island");
    serde_json::from_str(&html[start..end]).expect("page data is JSON")
}

fn models_rows(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["models"];
    all.extend_from_slice(args);
    env.report_json(&all)["models"]
        .as_array()
        .expect("models rows")
        .clone()
}

#[test]
fn leaderboard_ranks_by_success_then_p95_when_nothing_is_graded() {
    let env = fixed_db();
    let rows = models_rows(&env, &[]);
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["fast", "steady", "broken"], "{rows:#?}");
    let (fast, steady, broken) = (&rows[0], &rows[1], &rows[2]);
    // fast and steady both finished every job: the p95 latency decides, and it is said.
    assert_eq!(fast["rank"], 1);
    assert_eq!(fast["done"], 25);
    assert_eq!(fast["success_rate"], 1.0);
    assert_eq!(fast["p50_s"], 0.14);
    assert_eq!(fast["p95_s"], 0.86);
    // Ollama timings: 30·k tokens in 3·k ms for every item k.
    assert_eq!(fast["tokens_per_s"], 10000.0);
    assert_eq!(fast["graders"], 0);
    assert!(fast["grade_pass_rate"].is_null());
    assert_eq!(steady["rank"], 2);
    assert_eq!(steady["p95_s"], 24.0);
    assert!(
        steady["tokens_per_s"].is_null(),
        "no timings: unknown, not 0"
    );
    assert_eq!(steady["advised_timeout_s"], 50.0);
    assert_eq!(steady["note"], "same success rate as fast: ordered by p95");
    // broken: 3 exits and 2 timeouts, nothing done.
    assert_eq!(broken["rank"], 3);
    assert_eq!(broken["success_rate"], 0.0);
    assert_eq!(broken["top_failure"], "exit");
    assert_eq!(broken["top_failure_n"], 3);
    assert!(broken["p95_s"].is_null());
    assert_eq!(broken["note"], "no successful attempt: no latency");

    let text = env.stdout(&["report", "models"]);
    assert!(
        text.contains("\nBest model: fast, on success rate 100% (25 of 25 finished jobs done); steady has the same success rate but is slower (p95 latency 24.0s against 860ms). No grades in scope"),
        "{text}"
    );
    // The default report ends with the leaderboard.
    let default = env.stdout(&["report"]);
    assert!(
        default.contains("\nModels, best first (by success rate, then p95 latency)\n"),
        "{default}"
    );
    let csv = env.stdout(&["report", "models", "--format", "csv"]);
    assert!(
        csv.starts_with("rank,model,done,failed,success_rate,graders,grade_pass_rate,mean_score,p50_s,p95_s,tokens_per_s,cost_usd,cost_per_1k_jobs_usd,top_failure,top_failure_n,advised_timeout_s,note\n1,fast,25,0,1.000,0,,,0.140,0.860,10000.000,,,,,10.000,same success rate as steady: ordered by p95\n"),
        "{csv}"
    );
}

#[test]
fn leaderboard_ties_and_models_with_nothing_finished_are_said() {
    let env = Env::new();
    env.model("a", "echo", &[]);
    env.model("b", "echo", &[]);
    env.model("later", "echo", &[]);
    let p = env.prompts("p.csv", 4);
    env.cmd(&["enqueue", "--model", "a", "--model", "b", &p])
        .assert()
        .success();
    env.cmd(&["run"]).assert().success();
    env.cmd(&["enqueue", "--model", "later", &p])
        .assert()
        .success();
    env.conn()
        .execute("UPDATE attempts SET duration_ms = 200", [])
        .unwrap();
    let rows = models_rows(&env, &[]);
    let by = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    assert_eq!(by("a")["rank"], 1);
    assert_eq!(by("b")["rank"], 1, "same success rate and p95: a tie");
    assert_eq!(by("a")["note"], "tied with b");
    assert_eq!(by("b")["note"], "tied with a");
    let later = by("later");
    assert!(later["rank"].is_null());
    assert!(later["success_rate"].is_null());
    assert_eq!(
        later["note"],
        "not ranked: no finished jobs; no successful attempt: no latency"
    );
    assert_eq!(rows[2]["model"], "later", "unranked rows come last");
    let text = env.stdout(&["report", "models"]);
    assert!(
        text.contains("; tied with b on success rate and p95 latency."),
        "{text}"
    );
}

#[test]
fn leaderboard_ranks_by_grades_over_speed_and_leaves_graders_out() {
    let env = Env::new();
    // `good` appends the fair grader's marker word to every answer; `plain` does not.
    env.model_cmd("good", "sh -c 'cat; echo funny'", &[]);
    env.model("plain", "echo", &[]);
    env.grader("fair", "fair", &["funny"], &["--timeout", "20"]);
    env.grader("harsh", "harsh", &[], &["--timeout", "20"]);
    let p = env.prompts("p.csv", 4);
    env.cmd(&["enqueue", "--model", "good", "--model", "plain", &p])
        .assert()
        .success();
    env.cmd(&["grade", "--grader", "fair", "--grader", "harsh"])
        .assert()
        .success();
    env.cmd(&["run"]).assert().success();
    // good is the slower one: grades still come first.
    env.conn()
        .execute_batch(
            "UPDATE attempts SET duration_ms = 5000 WHERE model = 'good';
             UPDATE attempts SET duration_ms = 100 WHERE model = 'plain';",
        )
        .unwrap();
    let rows = models_rows(&env, &[]);
    let names: Vec<&str> = rows.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["good", "plain"],
        "graders are not ranked: {rows:#?}"
    );
    assert_eq!(rows[0]["graders"], 2);
    // fair passes all of good's answers, harsh none: 0.5 averaged over the two.
    assert_eq!(rows[0]["grade_pass_rate"], 0.5);
    assert_eq!(rows[1]["grade_pass_rate"], 0.0);
    // Scores: fair 8 for a yes, 3 for a no; harsh 1.
    assert_eq!(rows[0]["mean_score"], 4.5);
    let text = env.stdout(&["report", "models"]);
    assert!(
        text.contains("\nBest model: good, on grade pass rate 50% averaged over 2 grader(s) on 8 graded output(s); next is plain at 0%. It finished 4 of 4 jobs; p95 latency 5.0s.\nGraders only (not ranked): fair, harsh; see `report grades`.\n"),
        "{text}"
    );
}

/// Time-dependent values in the page data replaced, so a snapshot pins the rest.
fn scrub(mut data: serde_json::Value) -> serde_json::Value {
    if let Some(rows) = data["tables"]["throughput_timeline"].as_array_mut() {
        for r in rows {
            r["interval_start"] = "[time]".into();
            r["offset_s"] = "[offset]".into();
        }
    }
    data
}

#[test]
fn page_data_is_pinned_and_equal_to_the_tables() {
    let env = fixed_db();
    let html = env.stdout(&["report", "--format", "html"]);
    let data = page_data(&html);
    insta::assert_snapshot!(
        "page_data",
        serde_json::to_string_pretty(&scrub(data.clone())).unwrap()
    );
    // Computed once, rendered twice: the page's rows are the tables' rows.
    let tables = env.report_json(&["models", "latency", "failures", "timeouts", "grades"]);
    for name in [
        "models",
        "latency",
        "failures",
        "timeouts",
        "grades",
        "agreement",
    ] {
        assert_eq!(data["tables"][name], tables[name], "{name}");
    }
    // The verdict leads the page, as text.
    let verdict = data["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("Best model: fast, on success rate 100%"));
    assert!(
        html.contains(&format!(
            "<p class=\"verdict\" id=\"verdict\">{verdict}</p>"
        )),
        "the verdict is at the top"
    );
    // One self-contained page: no reference to anything outside it.
    for outside in [
        "src=",
        "href=\"http",
        "href='http",
        "url(",
        "@import",
        "http://",
        "https://",
    ] {
        assert!(!html.contains(outside), "page refers outside: {outside}");
    }
    assert_eq!(
        html.matches("<svg ").count(),
        4,
        "latency, failures, throughput, timeouts"
    );
    // --batch narrows the page like every report.
    let broken = page_data(&env.stdout(&["report", "--format", "html", "--batch", "broken"]));
    let models: Vec<&str> = broken["tables"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["broken"]);
    assert_eq!(broken["scope"], "batch broken · all models · all time");
    assert_eq!(broken["tables"]["failed_jobs"].as_array().unwrap().len(), 5);
}

#[test]
fn hostile_text_is_escaped_everywhere_on_the_page() {
    let env = Env::new();
    let evil_model = "m<script>alert(1)</script>\"'&";
    // The model writes its prompt to stderr and fails: the prompt comes back as its error.
    env.model_cmd(
        evil_model,
        "sh -c 'cat >&2; exit 1'",
        &["--max-attempts", "1"],
    );
    env.model("ok</svg><b>", "echo", &[]);
    let csv = env.write(
        "evil.csv",
        "id,prompt\n\"<img src=x onerror=alert(2)>\",\"<script>alert(3)</script> </svg> & \"\"quoted\"\" 'single'\"\n",
    );
    env.cmd(&[
        "enqueue",
        "--batch",
        "b</svg>&\"",
        "--model",
        evil_model,
        "--model",
        "ok</svg><b>",
        &csv,
    ])
    .assert()
    .success();
    env.cmd(&["run"]).assert().code(3);
    let html = env.stdout(&["report", "--format", "html"]);
    for raw in [
        "<script>alert",
        "</svg><b>",
        "<img src",
        "b</svg>&\"",
        "\"quoted\"",
    ] {
        assert!(!html.contains(raw), "unescaped {raw:?} on the page");
    }
    for escaped in [
        "m&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;",
        "ok&lt;/svg&gt;&lt;b&gt;",
        "&lt;img src=x onerror=alert(2)&gt;",
        "&lt;script&gt;alert(3)&lt;/script&gt; &lt;/svg&gt; &amp; &quot;quoted&quot; &#39;single&#39;",
    ] {
        assert!(html.contains(escaped), "{escaped:?} not on the page escaped");
    }
    // The only scripts are the page's own two; the SVGs close only where they end.
    assert_eq!(html.matches("<script").count(), 2);
    assert_eq!(
        html.matches("<svg ").count(),
        html.matches("</svg>").count()
    );
    // The data island holds the same text, with no `<` to end it early.
    let data = page_data(&html);
    assert!(
        data["tables"]["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["model"] == evil_model),
        "{data}"
    );
}

// ---- the page in a real browser ----

const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether to go on without a browser: never in CI; locally only when asked to.
fn browser_or_skip() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if !ci && std::env::var("LLMBATCH_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED: {CHROMIUM} is missing and LLMBATCH_SKIP_BROWSER=1: the page was not rendered in a browser");
        return false;
    }
    panic!(
        "{CHROMIUM} is missing: install it (apt-get install -y chromium; .ci/run does) or set LLMBATCH_SKIP_BROWSER=1 to skip this test locally"
    );
}

/// Runs headless Chromium on `page` with `args` and a fresh profile, with every host name
/// unresolvable (anything fetched from the network would fail, and log a console message).
/// Returns (stdout, stderr).
fn chromium(dir: &Path, page: &Path, args: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir_in(dir).unwrap();
    let mut cmd = std::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("start chromium");
    let out = wait_output(child, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wait_with_output` with a deadline: pipes drained on threads, the child killed if late.
fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let status = wait_child(&mut child, limit);
    std::process::Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

/// Console messages (errors included) Chromium logged for the page.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains(":CONSOLE")).collect()
}

#[test]
fn the_page_renders_in_headless_chromium() {
    if !browser_or_skip() {
        return;
    }
    let env = fixed_db();
    let html = env.stdout(&["report", "--format", "html"]);
    let page = env.dir.path().join("night.html");
    std::fs::write(&page, &html).unwrap();
    let models = models_rows(&env, &[]).len();
    assert_eq!(models, 3);

    // The DOM after the page's script ran: it marks the root when it got to its end.
    let (dom, stderr) = chromium(env.dir.path(), &page, &["--dump-dom"]);
    assert_eq!(
        console_lines(&stderr),
        Vec::<&str>::new(),
        "console messages"
    );
    assert!(
        dom.contains("data-script=\"ran\""),
        "the page's script did not finish"
    );
    let start = dom.find("id=\"leaderboard\"").expect("leaderboard table");
    let body = &dom[start..];
    let body = &body[body.find("<tbody>").unwrap()..body.find("</tbody>").unwrap()];
    assert_eq!(
        body.matches("<tr").count(),
        models,
        "one leaderboard row per model"
    );

    // A screenshot a laptop would show: not blank.
    let shot = env.dir.path().join("night.png");
    let (_, stderr) = chromium(
        env.dir.path(),
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1366,3000",
        ],
    );
    assert_eq!(
        console_lines(&stderr),
        Vec::<&str>::new(),
        "console messages"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("screenshot written"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert_eq!((info.width, info.height), (1366, 3000));
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let inked = pixels
        .chunks(channels)
        .filter(|p| p[..3].iter().any(|c| *c < 200))
        .count();
    let share = inked as f64 / (info.width * info.height) as f64;
    assert!(share > 0.02, "the screenshot is blank ({:.4} inked)", share);
    // Keep it for a person to look at when asked.
    if let Ok(dir) = std::env::var("LLMBATCH_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&dir).join("page.png")).unwrap();
        std::fs::copy(&page, Path::new(&dir).join("page.html")).unwrap();
    }
}
