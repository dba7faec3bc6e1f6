//! Core: models, enqueue, run, outcomes, reports (issue: core).

use crate::common::*;

#[test]
fn echo_runs_to_done() {
    let env = Env::new();
    env.model("echo", "echo", &["--timeout", "10"]);
    let input = env.prompts("p.csv", 3);
    env.cmd(&["enqueue", "--model", "echo", &input]).assert().success();
    env.cmd(&["run"]).assert().code(0);
    assert_eq!(env.state_count("done"), 3);
}
