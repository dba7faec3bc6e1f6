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
                                        created_at, updated_at)
             SELECT j.batch, j.item_id, ?, 'grade', j.id, ?, ?, ? FROM jobs j
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
    print(a, &rubric, rubric_id, &graders, outputs, new, waiting)
}

/// `grade` on PostgreSQL: the same checks and rows, in one transaction on the server.
pub fn run_pg(a: &GradeArgs, client: &mut postgres::Client) -> Result<u8> {
    use crate::db::postgres::{catalog, queue};
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
    let filter = super::scope_filter_pg(&a.scope, client)?;
    for var in rubric.item_variables() {
        let mut p = queue::Params::default();
        let name = p.add(var.clone());
        let cond = queue::scope(&filter, "j", "id", &mut p);
        let r = client.query_one(
            &format!(
                "SELECT COUNT(*), MIN(j.batch || chr(31) || j.item_id) FROM jobs j
                 JOIN items i ON i.batch = j.batch AND i.item_id = j.item_id
                 WHERE NOT (i.vars::jsonb ? {name}) AND j.kind = 'generate'{cond}"
            ),
            &p.refs(),
        )?;
        let (missing, example): (i64, Option<String>) = (r.get(0), r.get(1));
        if let Some((batch, item)) = example.as_deref().and_then(|e| e.split_once('\u{1f}')) {
            usage!(
                "rubric {}: {{{var}}} is neither {{prompt}}, {{output}} nor a variable of the items in scope: {missing} output(s) lack it (e.g. batch {batch:?} item {item:?}); nothing was queued",
                rubric.name
            );
        }
    }
    let mut tx = client.transaction()?;
    // New job ids in one range per command, as enqueue's.
    tx.batch_execute("SELECT pg_advisory_xact_lock(hashtext('llmbatch enqueue'))")?;
    let rubric_id = catalog::save_rubric(&mut tx, &rubric)?;
    let mut p = queue::Params::default();
    let cond = queue::scope(&filter, "j", "id", &mut p);
    let r = tx.query_one(
        &format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE j.state <> 'done') FROM jobs j
             WHERE j.kind = 'generate'{cond}"
        ),
        &p.refs(),
    )?;
    let (outputs, waiting): (i64, i64) = (r.get(0), r.get(1));
    if outputs == 0 {
        usage!("no generated jobs match{}: nothing to grade", scope_text(a));
    }
    let mut new = 0i64;
    for grader in &graders {
        let mut p = queue::Params::default();
        let g = p.add(grader.clone());
        let rid = p.add(rubric_id);
        let cond = queue::scope(&filter, "j", "id", &mut p);
        new += tx.execute(
            &format!(
                "INSERT INTO jobs (batch, item_id, model, kind, parent_id, rubric_id, created_at, updated_at)
                 SELECT j.batch, j.item_id, {g}, 'grade', j.id, {rid}, llmbatch_now_ms(), llmbatch_now_ms()
                 FROM jobs j WHERE j.kind = 'generate'{cond} ORDER BY j.id
                 ON CONFLICT DO NOTHING"
            ),
            &p.refs(),
        )? as i64;
    }
    tx.commit().context("cannot commit the grade jobs")?;
    print(a, &rubric, rubric_id, &graders, outputs, new, waiting)
}

fn print(
    a: &GradeArgs,
    rubric: &Rubric,
    rubric_id: i64,
    graders: &[String],
    outputs: i64,
    new: i64,
    waiting: i64,
) -> Result<u8> {
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
