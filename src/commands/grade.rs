//! `grade`: queue one grade job per (generated job, grader), in one transaction. Idempotent:
//! a pair already queued with the same rubric is counted, not added again.

use anyhow::Result;
use serde_json::json;

use crate::cli::{Format, GradeArgs};
use crate::db::{EnqueueGradesParams, GradesQueued, Store};
use crate::grading::Rubric;
use crate::usage;

pub fn run(a: &GradeArgs, store: &dyn Store) -> Result<u8> {
    if let Some(g) = a.graders.iter().find(|g| g.trim().is_empty()) {
        usage!("--grader {g:?}: a model name cannot be empty");
    }
    let mut graders: Vec<String> = Vec::new();
    for g in &a.graders {
        if !graders.contains(g) {
            graders.push(g.clone());
        }
    }
    let rubric = Rubric::resolve(&a.rubric)?;
    let filter = super::scope_filter(&a.scope, store)?;
    for var in rubric.item_variables() {
        let missing = store.items_missing_var(&filter, &var)?;
        if let Some((batch, item)) = missing.example {
            let missing = missing.count;
            usage!(
                "rubric {}: {{{var}}} is neither {{prompt}}, {{output}} nor a variable of the items in scope: {missing} output(s) lack it (e.g. batch {batch:?} item {item:?}); nothing was queued",
                rubric.name
            );
        }
    }
    let GradesQueued {
        rubric_id,
        outputs,
        waiting,
        new,
    } = store.enqueue_grades(&EnqueueGradesParams {
        filter: &filter,
        graders: &graders,
        rubric: &rubric,
    })?;
    if outputs == 0 {
        usage!("no generated jobs match{}: nothing to grade", scope_text(a));
    }
    let existing = outputs * graders.len() as i64 - new;

    match a.format.format {
        Format::Json => crate::outln!(
            "{}",
            json!({
                "rubric": rubric.name,
                "rubric_id": rubric_id,
                "graders": graders,
                "outputs": outputs,
                "new": new,
                "existing": existing,
                "waiting_for_output": waiting,
            })
        )?,
        _ => {
            crate::outln!(
                "rubric {}: {new} new grade job(s), {existing} already queued ({outputs} output(s) × {} grader(s))",
                rubric.name,
                graders.len()
            )?;
            if waiting > 0 && new > 0 {
                crate::outln!("{waiting} output(s) not done yet: their grades wait for them")?;
            }
            if new > 0 {
                crate::outln!("run them with: llmbatch run")?;
            }
        }
    }
    Ok(0)
}

fn scope_text(a: &GradeArgs) -> String {
    let mut parts = Vec::new();
    if let Some(b) = &a.scope.batch {
        parts.push(format!("batch {b:?}"));
    }
    if !a.scope.models.is_empty() {
        parts.push(format!("model {}", a.scope.models.join(", ")));
    }
    if let Some(f) = &a.scope.ids_file {
        parts.push(format!("the ids in {f}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" {}", parts.join(" and "))
    }
}
