//! The ecosystem's formats: OpenAI Batch API files in and out, chat messages per item, shell
//! completions and man pages.

use crate::common::*;

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
