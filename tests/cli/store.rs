//! What enqueue accepts and refuses, how the database file is created, opened read-only by
//! reports and upgraded from older schemas: nothing stored is ever lost or rewritten.

use assert_cmd::Command;
use predicates::prelude::*;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// Names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// stderr must be exactly one error line starting so (anchored, not a substring).
fn error_starts(prefix: &str) -> impl Predicate<str> {
    let prefix = format!("llmbatch: error: {prefix}");
    predicate::function(move |s: &str| s.starts_with(&prefix) && s.lines().count() == 1)
}

/// Defect 1: a long enqueue that fails at its last line, started first on a new database,
/// must not take with it what a second enqueue committed meanwhile.
#[test]
fn a_failed_first_enqueue_never_deletes_what_another_committed() {
    let env = Env::new();
    let mut long = env
        .spawn_cmd(&[
            "enqueue",
            "--model",
            "m",
            "--input-format",
            "jsonl",
            "--batch",
            "big",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut feed = long.stdin.take().unwrap();
    for i in 0..2000 {
        writeln!(feed, r#"{{"id": {i}, "prompt": "long prompt {i}"}}"#).unwrap();
    }
    feed.flush().unwrap();
    // The long enqueue has started on the (new) database and still waits for its input.
    wait_for(
        "the long enqueue to open its database",
        Duration::from_secs(30),
        || {
            listing(env.dir.path())
                .iter()
                .any(|n| n.starts_with("test.db") || n.starts_with(".test.db"))
        },
    );
    let small = env.write("small.csv", "id,prompt\n1,one\n2,two\n");
    env.cmd(&["enqueue", "--model", "m", &small])
        .env("LLMBATCH_BUSY_TIMEOUT", "3s")
        .assert()
        .success()
        .stdout("batch small: 2 new, 0 already queued (2 items × 1 models)\n");
    writeln!(feed, "{{broken").unwrap();
    drop(feed);
    let status = wait_child(&mut long, Duration::from_secs(60));
    assert_eq!(status.code(), Some(2));
    let mut err = String::new();
    std::io::Read::read_to_string(long.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        err.starts_with("llmbatch: error: stdin line 2001: invalid JSON"),
        "{err}"
    );
    // The small enqueue's jobs survive, and the failed one left nothing of its own.
    assert_eq!(
        env.int("SELECT COUNT(*) FROM jobs WHERE batch = 'small'"),
        2
    );
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 2);
    assert_eq!(listing(env.dir.path()), ["small.csv", "test.db"]);
}

/// Two first enqueues at once on a new database: the one that commits second merges into
/// the database the first created, and both keep every job.
#[test]
fn two_first_enqueues_at_once_both_land() {
    let env = Env::new();
    let start = |batch: &str, format: &str| {
        let mut child = env
            .spawn_cmd(&[
                "enqueue", "--model", "m", "--batch", batch, "--format", format, "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let feed = child.stdin.take().unwrap();
        (child, feed)
    };
    let (a, mut feed_a) = start("shared", "table");
    let (mut b, mut feed_b) = start("shared", "ids");
    wait_for(
        "both enqueues to start their drafts",
        Duration::from_secs(30),
        || {
            listing(env.dir.path())
                .iter()
                .filter(|n| {
                    n.starts_with(".test.db.draft-") && !n.contains("-wal") && !n.contains("-shm")
                })
                .count()
                == 2
        },
    );
    feed_a.write_all(b"id,prompt\n1,one\n2,two\n").unwrap();
    drop(feed_a);
    let out = a.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "batch shared: 2 new, 0 already queued (2 items × 1 models)\n"
    );
    feed_b.write_all(b"id,prompt\n2,two\n3,three\n").unwrap();
    drop(feed_b);
    let status = wait_child(&mut b, Duration::from_secs(60));
    let mut ids = String::new();
    std::io::Read::read_to_string(b.stdout.as_mut().unwrap(), &mut ids).unwrap();
    assert!(status.success());
    assert_eq!(ids, "3\n");
    assert_eq!(
        env.rows("SELECT id, item_id FROM jobs ORDER BY id"),
        [["1", "1"], ["2", "2"], ["3", "3"]]
    );
    assert_eq!(listing(env.dir.path()), ["test.db"]);
}

/// A first enqueue that fails creates nothing at all: no database, no stray file.
#[test]
fn a_failed_first_command_leaves_no_file() {
    let env = Env::new();
    let bad = env.write("bad.csv", "id,prompt\n1,fine\n2,too,many\n");
    env.cmd(&["enqueue", "--model", "m", &bad]).assert().code(2);
    env.cmd(&["models", "set", "x", "--backend", "command"])
        .assert()
        .code(2);
    assert_eq!(listing(env.dir.path()), ["bad.csv"]);
}

/// Defect 2: one id twice in one input with different content: exit 2 naming both lines.
#[test]
fn a_repeated_id_with_different_content_names_both_lines() {
    let env = Env::new();
    let input = env.write(
        "dup.jsonl",
        "{\"id\": 1, \"prompt\": \"a\"}\n{\"id\": 2, \"prompt\": \"b\"}\n{\"id\": 1, \"prompt\": \"a\", \"style\": \"haiku\"}\n",
    );
    env.cmd(&["enqueue", "--model", "m", &input])
        .assert()
        .code(2)
        .stderr(error_starts(&format!(
            "{input} line 3: item \"1\" repeats line 1 with a different field `style`"
        )));
    assert!(!env.db.exists());
    // Across chunks, and into a database that holds other work.
    let other = env.prompts("other.csv", 2);
    env.cmd(&["enqueue", "--model", "m", &other])
        .assert()
        .success();
    let before = env.dump();
    let mut text = String::from("id,prompt\n");
    for i in 1..=300 {
        text.push_str(&format!("{i},prompt {i}\n"));
    }
    text.push_str("5,a different prompt\n");
    let long = env.write("long.csv", &text);
    env.cmd(&["enqueue", "--model", "m", &long])
        .assert()
        .code(2)
        .stderr(error_starts(&format!(
            "{long} line 302: item \"5\" repeats line 6 with a different prompt"
        )));
    assert_eq!(env.dump(), before);
    std::fs::remove_file(&env.db).unwrap();
    // A pipe cannot be read twice to find the first line; it still names the repeat.
    env.cmd(&["enqueue", "--model", "m", "-"])
        .write_stdin("id,prompt\n7,a\n8,b\n7,c\n")
        .assert()
        .code(2)
        .stderr(error_starts(
            "stdin line 4: item \"7\" repeats an earlier record with a different prompt",
        ));
    assert!(!env.db.exists());
    // The same record twice is harmless.
    let same = env.write("same.csv", "id,prompt\n1,a\n1,a\n");
    env.cmd(&["enqueue", "--model", "m", &same])
        .assert()
        .success();
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 1);
}

/// Defect 2: an item already queued never changes; a changed one is refused, naming it and
/// what differs, and the database stays as it was.
#[test]
fn a_changed_item_is_refused_and_the_database_kept() {
    let env = Env::new();
    let first = env.write(
        "v1.csv",
        "id,prompt,style\n1,tell a joke,haiku\n2,and another,pun\n",
    );
    env.cmd(&["enqueue", "--model", "m", "--batch", "b", &first])
        .assert()
        .success();
    let before = env.dump();
    let changed = env.write(
        "v2.csv",
        "id,prompt,style\n1,tell a joke,haiku\n2,and another,limerick\n",
    );
    env.cmd(&[
        "enqueue", "--model", "m", "--model", "n", "--batch", "b", &changed,
    ])
    .assert()
    .code(2)
    .stderr(error_starts(&format!(
        "{changed} line 3: item \"2\" is already in batch \"b\" with a different field `style`"
    )));
    assert_eq!(env.dump(), before);
    let reworded = env.write("v3.csv", "id,prompt,style\n1,tell two jokes,haiku\n");
    env.cmd(&["enqueue", "--model", "m", "--batch", "b", &reworded])
        .assert()
        .code(2)
        .stderr(error_starts(&format!(
            "{reworded} line 2: item \"1\" is already in batch \"b\" with a different prompt"
        )));
    assert_eq!(env.dump(), before);
    // The same input again, or with columns in another order, is the same item.
    let reordered = env.write(
        "v4.csv",
        "style,id,prompt\nhaiku,1,tell a joke\npun,2,and another\n",
    );
    env.cmd(&["enqueue", "--model", "m", "--batch", "b", &reordered])
        .assert()
        .success()
        .stdout("batch b: 0 new, 2 already queued (2 items × 1 models)\n");
}

/// Defect 11: one rule for inputs with no records: exit 2 naming the input, nothing created,
/// nothing changed.
#[test]
fn an_input_with_no_records_is_refused_everywhere() {
    let env = Env::new();
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (env.write("empty.csv", ""), vec![], "no records"),
        (env.write("header.csv", "id,prompt\n"), vec![], "no records"),
        (env.write("empty.jsonl", ""), vec![], "no records"),
        (env.write("blank.jsonl", "\n  \n"), vec![], "no records"),
        (
            env.write("header.tsv", "id\tprompt\n"),
            vec![],
            "no records",
        ),
        (
            env.write("one.jsonl", "{\"id\": 1, \"prompt\": \"a\"}\n"),
            vec!["--input-format", "csv"],
            "line 1: this looks like JSONL, not CSV",
        ),
    ];
    let check = |env: &Env| {
        for (path, extra, problem) in &cases {
            let mut args = vec!["enqueue", "--model", "m"];
            args.extend(extra.iter().copied());
            args.push(path);
            env.cmd(&args).assert().code(2).stderr(
                error_starts(&format!("{path}: {problem}"))
                    .or(error_starts(&format!("{path} {problem}"))),
            );
        }
        env.cmd(&["enqueue", "--model", "m", "-"])
            .write_stdin("")
            .assert()
            .code(2)
            .stderr(error_starts("stdin: no records"));
    };
    check(&env);
    assert!(!env.db.exists(), "a refused input created the database");
    let good = env.prompts("good.csv", 2);
    env.cmd(&["enqueue", "--model", "m", &good])
        .assert()
        .success();
    let before = env.dump();
    check(&env);
    assert_eq!(env.dump(), before);
}

/// Defect 11: a UTF-8 byte-order mark before JSONL is accepted, as for CSV (file and stdin).
#[test]
fn jsonl_with_a_byte_order_mark_is_accepted() {
    let env = Env::new();
    let text =
        "\u{feff}{\"id\": \"a\", \"prompt\": \"first\"}\n{\"id\": \"b\", \"prompt\": \"second\"}\n";
    let input = env.write("bom.jsonl", text);
    env.cmd(&["enqueue", "--model", "m", &input])
        .assert()
        .success()
        .stdout("batch bom: 2 new, 0 already queued (2 items × 1 models)\n");
    env.cmd(&["enqueue", "--model", "m", "--batch", "piped", "-"])
        .write_stdin(text)
        .assert()
        .success()
        .stdout("batch piped: 2 new, 0 already queued (2 items × 1 models)\n");
    assert_eq!(
        env.rows("SELECT item_id, prompt FROM items WHERE batch = 'bom' ORDER BY item_id"),
        [["a", "first"], ["b", "second"]]
    );
}

/// Defect 11: .tsv is tab-separated (commas inside a field are text).
#[test]
fn tsv_is_read_as_tab_separated() {
    let env = Env::new();
    let input = env.write("t.tsv", "id\tprompt\tstyle\n1\tsay hi, then bye\tterse\n");
    env.cmd(&["enqueue", "--model", "m", &input])
        .assert()
        .success();
    assert_eq!(
        env.rows("SELECT item_id, prompt, json_extract(vars, '$.style') FROM items"),
        [["1", "say hi, then bye", "terse"]]
    );
}

/// Defect 11: a directory as input is named, with exit 2.
#[test]
fn a_directory_as_input_is_named() {
    let env = Env::new();
    let dir = env.dir.path().join("prompts.csv");
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.to_string_lossy().into_owned();
    env.cmd(&["enqueue", "--model", "m", &dir])
        .assert()
        .code(2)
        .stderr(error_starts(&format!(
            "cannot read {dir}: it is a directory"
        )));
    assert!(!env.db.exists());
}

/// `enqueue --format`: csv and json give the counts as a row (json as sections of rows, like
/// every command); ids the new jobs' ids, ready for `run --ids-file -`.
#[test]
fn enqueue_honours_the_shared_format() {
    let env = Env::new();
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "a", "--format", "ids", &input])
        .assert()
        .success()
        .stdout("1\n2\n");
    env.cmd(&[
        "enqueue", "--model", "a", "--model", "b", "--format", "ids", &input,
    ])
    .assert()
    .success()
    .stdout("3\n4\n");
    assert_eq!(
        env.rows("SELECT id, model, item_id FROM jobs WHERE id >= 3 ORDER BY id"),
        [["3", "b", "1"], ["4", "b", "2"]]
    );
    env.cmd(&["enqueue", "--model", "a", "--format", "ids", &input])
        .assert()
        .success()
        .stdout("");
    env.cmd(&[
        "enqueue", "--model", "a", "--model", "c", "--format", "csv", &input,
    ])
    .assert()
    .success()
    .stdout("batch,new,existing,items,models,repeat\np,2,2,2,\"a,c\",1\n");
}

/// `report`, `export` and `models list` never write: the database's bytes and its directory
/// are exactly as before, with or without an ids file (which needs a temp table).
#[test]
fn read_commands_leave_the_file_and_its_directory_untouched() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    let input = env.prompts("p.csv", 3);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().success();
    let files = listing(env.dir.path());
    assert_eq!(files, ["p.csv", "test.db"]);
    let bytes = std::fs::read(&env.db).unwrap();
    let ids = env.write("ids.txt", "1\n3\n");
    let files = listing(env.dir.path());
    for args in [
        vec!["report"],
        vec![
            "report",
            "jobs",
            "runners",
            "timeouts",
            "throughput",
            "grades",
            "--format",
            "json",
        ],
        vec!["report", "jobs", "--ids-file", &ids],
        vec!["export"],
        vec!["export", "--format", "csv", "--ids-file", &ids],
        vec!["export", "--format", "joblog"],
        vec!["models", "list"],
    ] {
        env.cmd(&args).assert().success();
        assert_eq!(listing(env.dir.path()), files, "{args:?} left files behind");
        assert!(
            std::fs::read(&env.db).unwrap() == bytes,
            "{args:?} changed the database"
        );
    }
}

/// Runs the binary as an unprivileged user: as `nobody` when the tests run as root (root
/// ignores file modes), else as ourselves.
fn as_user(env: &Env, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut c = env.spawn_cmd(args);
    if unsafe { libc::geteuid() } == 0 {
        c.uid(65534).gid(65534);
    }
    c.output().unwrap_or_else(|e| std::process::Output {
        status: std::process::ExitStatus::from_raw(127 << 8),
        stdout: Vec::new(),
        stderr: e.to_string().into_bytes(),
    })
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Defect 11: `report` and `export` on a read-only database file, and on a database in a
/// read-only directory, work and leave no `-wal`/`-shm` behind.
#[test]
fn reports_work_on_a_read_only_file_and_in_a_read_only_directory() {
    let env = Env::new();
    env.model("echo", "echo", &[]);
    let input = env.prompts("p.csv", 2);
    env.cmd(&["enqueue", "--model", "echo", &input])
        .assert()
        .success();
    env.cmd(&["run"]).assert().success();
    let root = unsafe { libc::geteuid() } == 0;
    chmod(env.dir.path(), 0o755);
    if root && !as_user(&env, &["--version"]).status.success() {
        // E.g. a checkout under /root: the unprivileged user cannot reach the binary, and
        // as root file modes stop nothing, so there is nothing to learn here.
        eprintln!("skipped: user nobody cannot run {}", bin_path().display());
        return;
    }
    // A directory only its owner (root) may write when we run as nobody; 0555 otherwise.
    for (dir_mode, file_mode, what) in [
        (
            if root { 0o755 } else { 0o555 },
            0o644,
            "read-only directory",
        ),
        (0o777, 0o444, "read-only file"),
    ] {
        chmod(&env.db, file_mode);
        chmod(env.dir.path(), dir_mode);
        let files = listing(env.dir.path());
        for (args, lines) in [
            (vec!["report", "status", "--format", "csv"], 2),
            (vec!["export", "--format", "csv"], 3),
        ] {
            let out = as_user(&env, &args);
            assert!(
                out.status.success(),
                "{what}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text.lines().count(),
                lines,
                "{what}: {args:?} printed {text}"
            );
            assert!(
                text.lines().any(|l| l == "echo,0,0,0,2,0,0,") || text.lines().count() == 3,
                "{text}"
            );
            assert_eq!(
                listing(env.dir.path()),
                files,
                "{what}: {args:?} left files"
            );
        }
        // A command that must write says why it cannot, and leaves nothing either.
        let out = as_user(&env, &["reap"]);
        assert_eq!(out.status.code(), Some(1), "{what}: reap");
        assert_eq!(listing(env.dir.path()), files, "{what}: reap left files");
        chmod(env.dir.path(), 0o755);
        chmod(&env.db, 0o644);
    }
}

/// Defect 11: `models list` does not create a missing database; `report` does not write a
/// schema into an empty file.
#[test]
fn reads_never_create_a_database() {
    let env = Env::new();
    env.cmd(&["models", "list"])
        .assert()
        .code(2)
        .stderr(error_starts(&format!(
            "no database at {}",
            env.db.display()
        )));
    assert!(!env.db.exists());
    std::fs::write(&env.db, b"").unwrap();
    for args in [vec!["report"], vec!["export"], vec!["models", "list"]] {
        env.cmd(&args)
            .assert()
            .code(2)
            .stderr(error_starts(&format!(
                "{} is empty, not an llmbatch database",
                env.db.display()
            )));
    }
    assert_eq!(std::fs::metadata(&env.db).unwrap().len(), 0);
    assert_eq!(listing(env.dir.path()), ["test.db"]);
}

/// Defect 11: a database from a newer llmbatch is refused before anything is written to it:
/// it stays in its own journal mode, byte for byte.
#[test]
fn a_newer_schema_is_refused_untouched() {
    let env = Env::new();
    {
        let conn = rusqlite::Connection::open(&env.db).unwrap();
        conn.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let bytes = std::fs::read(&env.db).unwrap();
    let input = env.prompts("p.csv", 1);
    for args in [
        vec!["report"],
        vec!["run"],
        vec!["enqueue", "--model", "m", &input],
        vec!["models", "list"],
    ] {
        env.cmd(&args)
            .assert()
            .code(2)
            .stderr(error_starts(&format!(
                "database {} has schema version 99, newer than this llmbatch",
                env.db.display()
            )));
        assert!(
            std::fs::read(&env.db).unwrap() == bytes,
            "{args:?} wrote to the file"
        );
        assert_eq!(listing(env.dir.path()), ["p.csv", "test.db"]);
    }
}

/// `LLMBATCH_DB` chooses the database when `--db` is not given; `--db` wins over it.
#[test]
fn the_database_comes_from_llmbatch_db() {
    let env = Env::new();
    let elsewhere = env.dir.path().join("elsewhere.db");
    let input = env.prompts("p.csv", 2);
    let bare = |args: &[&str]| {
        let mut c = Command::cargo_bin("llmbatch").unwrap();
        c.args(args)
            .env("LLMBATCH_DB", &elsewhere)
            .env_remove("RUST_LOG")
            .env_remove("OLLAMA_HOST")
            .current_dir(env.dir.path());
        c
    };
    bare(&["enqueue", "--model", "m", &input])
        .assert()
        .success();
    assert!(elsewhere.exists());
    assert!(!env.dir.path().join("llmbatch.db").exists());
    bare(&["report", "status", "--format", "csv"])
        .assert()
        .success()
        .stdout(predicate::str::is_match("(?m)^m,2,0,0,0,0,0,$").unwrap());
    // --db wins over the variable.
    bare(&[
        "--db",
        env.db.to_str().unwrap(),
        "enqueue",
        "--model",
        "m",
        &input,
    ])
    .assert()
    .success();
    assert_eq!(env.int("SELECT COUNT(*) FROM jobs"), 2);
    let conn = rusqlite::Connection::open(&elsewhere).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

/// `{batch}`, `{item_id}`, `{job_id}` and `{attempt}` reach a command model as arguments;
/// a retry sees its own attempt number.
#[test]
fn command_templates_get_batch_item_job_and_attempt() {
    let env = Env::new();
    env.model_cmd(
        "args",
        r#"sh -c 'test "$4" = 2 || exit 1; printf "%s|%s|%s|%s" "$1" "$2" "$3" "$4"' sh {batch} {item_id} {job_id} {attempt}"#,
        &[],
    );
    let input = env.write("q.csv", "id,prompt\nfirst,a\nsecond,b\n");
    env.cmd(&["enqueue", "--model", "args", "--batch", "night run", &input])
        .assert()
        .success();
    env.cmd(&["run", "--retry-base", "0.05"]).assert().success();
    assert_eq!(env.job_output(1).as_deref(), Some("night run|first|1|2"));
    assert_eq!(env.job_output(2).as_deref(), Some("night run|second|2|2"));
}

/// A database as an older llmbatch left it: the first `version` migrations from `sql/`, with
/// rows in every table they made (a done job with its attempt, a pending one, a runner, a
/// model; from version 2 a rubric, a grade job and its grade).
fn old_database(path: &Path, version: usize) {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let conn = rusqlite::Connection::open(path).unwrap();
    for f in &files[..version] {
        conn.execute_batch(&std::fs::read_to_string(f).unwrap())
            .unwrap();
    }
    let echo = shell_words::quote(&fake("echo")).into_owned();
    conn.execute(
        "INSERT INTO models (name, backend, command, updated_at) VALUES ('echo', 'command', ?1, 1)",
        [echo],
    )
    .unwrap();
    conn.execute_batch(
        "INSERT INTO items VALUES ('old', '1', 'first prompt', '{\"id\":\"1\",\"prompt\":\"first prompt\"}');
         INSERT INTO items VALUES ('old', '2', 'second prompt', '{\"id\":\"2\",\"prompt\":\"second prompt\"}');
         INSERT INTO runners (id, host, pid, started_at, heartbeat_at, stopped_at, stop_reason)
             VALUES (1, 'oldhost', 4242, 1000, 2000, 3000, 'done');
         INSERT INTO jobs (id, batch, item_id, model, state, attempts, charged, attempt_id,
                           last_outcome, created_at, updated_at)
             VALUES (1, 'old', '1', 'echo', 'done', 1, 1, 1, 'ok', 900, 2000);
         INSERT INTO jobs (id, batch, item_id, model, created_at, updated_at)
             VALUES (2, 'old', '2', 'echo', 900, 900);
         INSERT INTO attempts (id, job_id, number, model, batch, runner_id, timeout_s, started_at,
                               finished_at, duration_ms, outcome, charged, exit_code, output)
             VALUES (1, 1, 1, 'echo', 'old', 1, 300, 1000, 1500, 500, 'ok', 1, 0, 'an old answer');",
    )
    .unwrap();
    if version >= 2 {
        conn.execute_batch(
            "INSERT INTO rubrics (id, name, body, pass_field, fields)
                 VALUES (1, 'joke', 'Grade {output}', 'pass', '[\"pass\"]');
             INSERT INTO jobs (id, batch, item_id, model, kind, parent_id, rubric_id, state,
                               attempts, charged, attempt_id, last_outcome, created_at, updated_at)
                 VALUES (3, 'old', '1', 'echo', 'grade', 1, 1, 'done', 1, 1, 2, 'ok', 1600, 1900);
             INSERT INTO attempts (id, job_id, number, model, batch, runner_id, started_at,
                                   finished_at, duration_ms, outcome, charged, output)
                 VALUES (2, 3, 1, 'echo', 'old', 1, 1600, 1900, 300, 'ok', 1, 'pass: yes');
             INSERT INTO grades (job_id, graded_job_id, attempt_id, grader, pass, fields)
                 VALUES (3, 1, 2, 'echo', 1, '{\"pass\":\"yes\"}');",
        )
        .unwrap();
    }
    conn.pragma_update(None, "user_version", version as i64)
        .unwrap();
}

/// Upgrades: databases at schema versions 1 and 2, with rows, opened by today's binary are
/// migrated (by a report, which writes nothing else) and keep every row; work left in them
/// then runs.
#[test]
fn old_schema_versions_upgrade_and_keep_every_row() {
    // SQLite's migrations: the .sql files of sql/ (PostgreSQL's live in sql/postgres/).
    let latest = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64;
    for version in [1, 2] {
        let env = Env::new();
        old_database(&env.db, version);
        let before = env.dump();
        let done = if version == 2 { 2 } else { 1 };
        env.cmd(&["report", "status", "--format", "csv"])
            .assert()
            .success()
            .stdout(predicate::str::is_match(format!("(?m)^echo,1,0,0,{done},0,0,$")).unwrap());
        assert_eq!(
            env.int("PRAGMA user_version"),
            latest,
            "from version {version}"
        );
        let after = env.dump();
        // Every old row keeps its values; columns added later come after them.
        for line in &before {
            let kept = after
                .iter()
                .any(|a| a == line || a.starts_with(&format!("{line} | ")));
            assert!(kept, "from version {version}: lost {line}");
        }
        // New tables are empty; nothing else was added.
        assert_eq!(
            after.iter().filter(|l| !l.starts_with("table ")).count(),
            before.iter().filter(|l| !l.starts_with("table ")).count(),
            "from version {version}"
        );
        env.cmd(&["run"]).assert().success();
        assert_eq!(env.job_output(1).as_deref(), Some("an old answer"));
        assert_eq!(env.state_count("done"), if version == 2 { 3 } else { 2 });
        assert_eq!(
            env.int("SELECT COUNT(*) FROM attempts WHERE job_id = 2 AND number = 1"),
            1
        );
    }
}
