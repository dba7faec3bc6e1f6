//! `grade`: queue one grade job per (generated job, grader), in one transaction. Idempotent:
//! a pair already queued with the same rubric is counted, not added again.

use anyhow::{Context, Result};
use rusqlite::{params_from_iter, Connection, TransactionBehavior};
use serde_json::json;

use crate::cli::{Format, GradeArgs};
use crate::grading::Rubric;
use crate::usage;
use crate::util::now_ms;

pub fn run(a: &GradeArgs, conn: &mut Connection) -> Result<u8> {
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
    let filter = super::scope_filter(&a.scope, conn)?;
    for var in rubric.item_variables() {
        let (missing, example) = crate::db::jobs::items_missing_var(conn, &filter, &var)?;
        if let Some((batch, item)) = example {
            usage!(
                "rubric {}: {{{var}}} is neither {{prompt}}, {{output}} nor a variable of the items in scope: {missing} output(s) lack it (e.g. batch {batch:?} item {item:?}); nothing was queued",
                rubric.name
            );
        }
    }
    let (cond, args) = filter.sql("j");

    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rubric_id = rubric.save(&tx)?;
    let (outputs, waiting): (i64, i64) = tx.query_row(
        &format!(
            "SELECT COUNT(*), COALESCE(SUM(j.state <> 'done'), 0) FROM jobs j
             WHERE j.kind = 'generate'{cond}"
        ),
        params_from_iter(args.clone()),
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if outputs == 0 {
        usage!("no generated jobs match{}: nothing to grade", scope_text(a));
    }
    let now = now_ms();
    let mut new = 0i64;
    {
        // One statement per grader: the database walks the scope, memory stays flat.
        let mut insert = tx.prepare(&format!(
            "INSERT OR IGNORE INTO jobs (batch, item_id, model, kind, parent_id, rubric_id,
                                        created_at, updated_at, repeat)
             SELECT j.batch, j.item_id, ?, 'grade', j.id, ?, ?, ?, j.repeat FROM jobs j
             WHERE j.kind = 'generate'{cond} ORDER BY j.id"
        ))?;
        for grader in &graders {
            let mut all = vec![
                rusqlite::types::Value::Text(grader.clone()),
                rusqlite::types::Value::Integer(rubric_id),
                rusqlite::types::Value::Integer(now),
                rusqlite::types::Value::Integer(now),
            ];
            all.extend(args.iter().cloned());
            new += insert.execute(params_from_iter(all))? as i64;
        }
    }
    tx.commit().context("cannot commit the grade jobs")?;
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
