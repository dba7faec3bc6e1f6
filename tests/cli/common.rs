//! Helpers shared by the test modules: a temp database, the binary, fixtures, SQL peeks.

#![allow(dead_code)]

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

/// A temp directory holding one database; commands run with `--db` pointing at it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("test.db");
        Env { dir, db }
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
        let mut args = vec!["models", "set", name, "--backend", "command", "--command"];
        let command = fake(script);
        args.push(&command);
        args.extend_from_slice(extra);
        self.cmd(&args).assert().success();
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

    /// One integer from a query.
    pub fn int(&self, sql: &str) -> i64 {
        self.conn().query_row(sql, [], |r| r.get(0)).expect(sql)
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

/// Whether any live process has `needle` in its command line (zombies don't count).
pub fn process_alive_matching(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let zombie = stat
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'))
            .unwrap_or(false);
        if !zombie
            && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(needle)
        {
            return true;
        }
    }
    false
}

pub fn kill(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
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
        let mut all = vec![
            "models",
            "set",
            name,
            "--backend",
            "command",
            "--command",
            &command,
        ];
        all.extend_from_slice(extra);
        self.cmd(&all).assert().success();
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
