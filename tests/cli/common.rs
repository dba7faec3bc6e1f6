//! Helpers shared by the test modules: a temp database, the binary, fixtures, SQL peeks.

use assert_cmd::Command;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Path of a fake model script in `fixtures/models`.
pub fn fake(name: &str) -> String {
    fixtures()
        .join("models")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

pub fn bin_path() -> PathBuf {
    assert_cmd::cargo::cargo_bin("llmbatch")
}

/// A temp directory holding one database; commands run with `--db` pointing at it. On the
/// PostgreSQL engine `db` is the URL of a database made for this test alone (dropped at the end).
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub engine: Engine,
}

/// Which storage engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The server `scripts/with-postgres.sh` started (`LLMBATCH_TEST_PG`). Absent: under CI a
/// failure (CI always has one), elsewhere None after saying how to get one.
pub fn pg_server() -> Option<String> {
    if let Ok(url) = std::env::var("LLMBATCH_TEST_PG") {
        return Some(url);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "LLMBATCH_TEST_PG is not set: CI must run the tests through scripts/with-postgres.sh"
        );
    }
    eprintln!(
        "PostgreSQL not available: this test is skipped; run scripts/with-postgres.sh cargo test"
    );
    None
}

/// Runs `$body` with `env` on PostgreSQL, or skips (saying so) when no server is available.
#[macro_export]
macro_rules! on_postgres {
    ($body:expr) => {
        if let Some(env) = $crate::common::Env::with_engine($crate::common::Engine::Postgres) {
            $body(env);
        }
    };
}

/// A client for the test server's maintenance database (to create and drop test databases).
pub fn pg_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("connect to the test PostgreSQL")
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("test.db");
        Env {
            dir,
            db,
            engine: Engine::Sqlite,
        }
    }

    /// An Env on `engine`; None when it is PostgreSQL and no server is available (see
    /// [`pg_server`]).
    pub fn with_engine(engine: Engine) -> Option<Env> {
        if engine == Engine::Sqlite {
            return Some(Env::new());
        }
        let server = pg_server()?;
        let name = format!("t_{}", unique_marker("pg").replace('-', "_").to_lowercase());
        pg_client(&server)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let (base, _) = server.rsplit_once('/').expect("database URL");
        let dir = tempfile::tempdir().expect("temp dir");
        Some(Env {
            dir,
            db: PathBuf::from(format!("{base}/{name}")),
            engine,
        })
    }

    /// The database's URL (PostgreSQL) or path (SQLite) as text.
    pub fn db_arg(&self) -> String {
        self.db.to_string_lossy().into_owned()
    }

    /// `llmbatch --db <db> ARGS…`, with a clean environment for the variables we read.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("llmbatch").expect("binary");
        c.arg("--db").arg(&self.db).args(args);
        c.env_remove("LLMBATCH_DB")
            .env_remove("RUST_LOG")
            .env_remove("OLLAMA_HOST");
        c.current_dir(self.dir.path());
        c.timeout(Duration::from_secs(120));
        c
    }

    /// A std Command for the binary, for tests that signal or kill it.
    pub fn spawn_cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(bin_path());
        c.arg("--db").arg(&self.db).args(args);
        c.env_remove("LLMBATCH_DB")
            .env_remove("RUST_LOG")
            .env_remove("OLLAMA_HOST");
        c.current_dir(self.dir.path());
        c
    }

    /// Configures a command-backend model running a fixture script (with extra arguments).
    pub fn model(&self, name: &str, script: &str, extra: &[&str]) {
        self.model_cmd(name, &fake(script), extra);
    }

    /// Writes a file in the temp directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p.to_string_lossy().into_owned()
    }

    /// A CSV of `n` prompts with ids 1..=n.
    pub fn prompts(&self, name: &str, n: usize) -> String {
        let mut text = String::from("id,prompt\n");
        for i in 1..=n {
            text.push_str(&format!("{i},prompt number {i}\n"));
        }
        self.write(name, &text)
    }

    pub fn conn(&self) -> Connection {
        let c = Connection::open(&self.db).expect("open db");
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    /// One integer from a query (on either engine).
    pub fn int(&self, sql: &str) -> i64 {
        if self.engine == Engine::Postgres {
            let v = self.rows(sql).remove(0).remove(0);
            return v
                .parse()
                .unwrap_or_else(|_| panic!("{sql}: {v} is not an integer"));
        }
        self.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
    }

    /// A client on this test's PostgreSQL database.
    pub fn pg(&self) -> postgres::Client {
        pg_client(&self.db_arg())
    }

    /// Job counts by state.
    pub fn state_count(&self, state: &str) -> i64 {
        self.int(&format!(
            "SELECT COUNT(*) FROM jobs WHERE state = '{state}'"
        ))
    }

    /// `report ... --format json` parsed.
    pub fn report_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["report"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--format", "json"]);
        let out = self.cmd(&all).output().expect("report");
        assert!(
            out.status.success(),
            "report failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("report json")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.engine == Engine::Postgres {
            if let (Some(server), Some((_, name))) = (
                std::env::var("LLMBATCH_TEST_PG").ok(),
                self.db_arg().rsplit_once('/'),
            ) {
                let _ = pg_client(&server)
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Live processes (zombies left out) whose `/proc/PID/<file>` contains `needle`.
fn pids_where(file: &str, needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read(e.path().join(file)).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'));
            let text = String::from_utf8_lossy(&text).replace('\0', " ");
            (!zombie && text.contains(needle)).then_some(pid)
        })
        .collect()
}

pub fn kill(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// A string unique to this test run and call: for finding the processes one test started.
pub fn unique_marker(tag: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "llmbatch-test-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A command template running a fixture script with `args`, carrying `marker` in its
/// environment. Every process the script starts inherits it, grandchildren included, so
/// [`process_alive_with_env`] finds them all where their command lines would not.
pub fn marked(marker: &str, script: &str, args: &str) -> String {
    format!(
        "env LLMBATCH_TEST_MARKER={marker} '{}' {args}",
        fake(script)
    )
}

/// Whether any live process (zombies don't count) has `needle` in its environment.
pub fn process_alive_with_env(needle: &str) -> bool {
    !pids_with_env(needle).is_empty()
}

impl Env {
    /// Configures a command-backend model from a whole command template.
    pub fn model_cmd(&self, name: &str, command: &str, extra: &[&str]) {
        let mut args = vec![
            "models",
            "set",
            name,
            "--backend",
            "command",
            "--command",
            command,
        ];
        args.extend_from_slice(extra);
        self.cmd(&args).assert().success();
    }

    /// Rows of a query, each value rendered as text (NULL as "NULL").
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        if self.engine == Engine::Postgres {
            // The simple protocol sends every value as text, whatever its type.
            return self
                .pg()
                .simple_query(sql)
                .expect(sql)
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or("NULL").to_string())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect();
        }
        let conn = self.conn();
        let mut stmt = conn.prepare(sql).expect(sql);
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| {
                        Ok(match r.get_ref(i)? {
                            rusqlite::types::ValueRef::Null => "NULL".to_string(),
                            rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                            rusqlite::types::ValueRef::Real(v) => v.to_string(),
                            rusqlite::types::ValueRef::Text(t) => {
                                String::from_utf8_lossy(t).into_owned()
                            }
                            rusqlite::types::ValueRef::Blob(b) => format!("{b:?}"),
                        })
                    })
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .expect(sql)
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect(sql);
        rows
    }

    /// Every row of every table, sorted: two dumps are equal when the data is.
    pub fn dump(&self) -> Vec<String> {
        let tables = self.rows(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        );
        let mut out = Vec::new();
        for t in tables {
            let mut rows: Vec<String> = self
                .rows(&format!("SELECT * FROM \"{}\"", t[0]))
                .into_iter()
                .map(|r| format!("{}: {}", t[0], r.join(" | ")))
                .collect();
            rows.sort();
            out.push(format!("table {} ({} rows)", t[0], rows.len()));
            out.extend(rows);
        }
        out
    }

    /// The output of a job: that of the attempt `jobs.attempt_id` points at.
    pub fn job_output(&self, job_id: i64) -> Option<String> {
        if self.engine == Engine::Postgres {
            return self
                .pg()
                .query_one(
                    "SELECT a.output FROM jobs j JOIN attempts a ON a.id = j.attempt_id WHERE j.id = $1",
                    &[&job_id],
                )
                .expect("job output")
                .get(0);
        }
        self.conn()
            .query_row(
                "SELECT a.output FROM jobs j JOIN attempts a ON a.id = j.attempt_id WHERE j.id = ?1",
                [job_id],
                |r| r.get(0),
            )
            .expect("job output")
    }

    /// One row of `report failures --format json` for `model`.
    pub fn failures_row(&self, model: &str) -> serde_json::Value {
        let doc = self.report_json(&["failures"]);
        doc["failures"]
            .as_array()
            .expect("failures array")
            .iter()
            .find(|r| r["model"] == model)
            .unwrap_or_else(|| panic!("no failures row for {model}: {doc}"))
            .clone()
    }
}

/// Waits for a child with a deadline, killing it if it overstays.
pub fn wait_child(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a fake grader script in `fixtures/graders`.
pub fn fake_grader(name: &str) -> String {
    fixtures()
        .join("graders")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

impl Env {
    /// Configures a command-backend grader running a `fixtures/graders` script; `args` are
    /// appended to its command (e.g. the fair grader's marker word).
    pub fn grader(&self, name: &str, script: &str, args: &[&str], extra: &[&str]) {
        let mut command = shell_words::quote(&fake_grader(script)).into_owned();
        for a in args {
            command.push(' ');
            command.push_str(&shell_words::quote(a));
        }
        self.model_cmd(name, &command, extra);
    }

    /// stdout of a successful command, as text.
    pub fn stdout(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

/// Pids of live processes with `needle` in their environment.
pub fn pids_with_env(needle: &str) -> Vec<u32> {
    pids_where("environ", needle)
}
