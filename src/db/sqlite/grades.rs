//! Grade rows from SQLite: aggregated in SQL; medians stream one ordered pass.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeMap;

use crate::db::report::{AttemptScope, GradeGroup, GraderJobs, GraderPair, GraderSums};
use crate::db::store::Filter;

/// Conditions on the graded job `p` and, with `since_ms`, on the grade attempts of `grades`
/// rows under the given aliases.
fn scope_sql(scope: &AttemptScope, grade_aliases: &[&str]) -> (String, Vec<SqlValue>) {
    let (mut sql, mut args) = scope.filter.sql("p");
    if let Some(since) = scope.since_ms {
        for g in grade_aliases {
            sql.push_str(&format!(
                " AND (SELECT started_at FROM attempts WHERE id = {g}.attempt_id) >= ?"
            ));
            args.push(SqlValue::Integer(since));
        }
    }
    (sql, args)
}

/// Per (model, grader, rubric id): counts, mean and median score.
pub fn grade_groups(conn: &Connection, scope: &AttemptScope) -> Result<Vec<GradeGroup>> {
    let (cond, args) = scope_sql(scope, &["g"]);
    let from = format!(
        "FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE 1 = 1{cond}"
    );
    type Key = (String, String, i64);
    let mut groups: BTreeMap<Key, GradeGroup> = BTreeMap::new();
    let mut stmt = conn.prepare(&format!(
        "SELECT p.model, g.grader, r.id, r.name, COUNT(*), COALESCE(SUM(g.pass), 0),
                COUNT(g.pass), AVG(g.score), COUNT(g.score)
         {from} GROUP BY p.model, g.grader, r.id"
    ))?;
    let mut rows = stmt.query(params_from_iter(args.clone()))?;
    while let Some(r) = rows.next()? {
        let key: Key = (r.get(0)?, r.get(1)?, r.get(2)?);
        groups.insert(
            key.clone(),
            GradeGroup {
                model: key.0,
                grader: key.1,
                rubric: r.get(3)?,
                n: r.get(4)?,
                passed: r.get(5)?,
                with_verdict: r.get(6)?,
                mean_score: r.get(7)?,
                with_score: r.get(8)?,
                median_score: None,
            },
        );
    }
    // Medians: one ordered stream, keeping only the middle value(s) of each group.
    let mut stmt = conn.prepare(&format!(
        "SELECT p.model, g.grader, r.id, g.score {from} AND g.score IS NOT NULL
         ORDER BY p.model, g.grader, r.id, g.score"
    ))?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut current: Option<Key> = None;
    let mut i = 0i64;
    let mut sum = 0.0;
    while let Some(r) = rows.next()? {
        let key: Key = (r.get(0)?, r.get(1)?, r.get(2)?);
        if current.as_ref() != Some(&key) {
            current = Some(key.clone());
            i = 0;
            sum = 0.0;
        }
        i += 1;
        let Some(g) = groups.get_mut(&key) else {
            continue;
        };
        let n = g.with_score;
        let score: f64 = r.get(3)?;
        // 1-based middle positions: one for odd n, two (averaged) for even n.
        let (lo, hi) = ((n + 1) / 2, n / 2 + 1);
        if i == lo || i == hi {
            sum += score;
            if i == hi {
                g.median_score = Some(if lo == hi { sum } else { sum / 2.0 });
            }
        }
    }
    Ok(groups.into_values().collect())
}

/// Per (grader, rubric id), over everything it graded.
pub fn grader_sums(conn: &Connection, scope: &AttemptScope) -> Result<Vec<GraderSums>> {
    let (cond, args) = scope_sql(scope, &["g"]);
    let mut stmt = conn.prepare(&format!(
        "SELECT g.grader, r.id, r.name, COUNT(*), COALESCE(SUM(g.pass), 0), COUNT(g.pass),
                AVG(g.score)
         FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE 1 = 1{cond} GROUP BY g.grader, r.id ORDER BY g.grader, r.id"
    ))?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        Ok(GraderSums {
            grader: r.get(0)?,
            rubric_id: r.get(1)?,
            rubric: r.get(2)?,
            n: r.get(3)?,
            passed: r.get(4)?,
            with_verdict: r.get(5)?,
            mean_score: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Per (grader, rubric id): grade jobs not (yet) graded, failed, and unreadable answers.
pub fn grader_jobs(conn: &Connection, filter: &Filter) -> Result<Vec<GraderJobs>> {
    let (jcond, jargs) = filter.sql("p");
    let mut stmt = conn.prepare(&format!(
        "SELECT gj.model, r.id, r.name, SUM(gj.state IN ('pending', 'running')),
                SUM(gj.state = 'failed'),
                SUM((SELECT COUNT(*) FROM attempts a WHERE a.job_id = gj.id AND a.outcome = 'parse'))
         FROM jobs gj JOIN jobs p ON p.id = gj.parent_id JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.kind = 'grade'{jcond} GROUP BY gj.model, r.id ORDER BY gj.model, r.id"
    ))?;
    let rows = stmt.query_map(params_from_iter(jargs), |r| {
        Ok(GraderJobs {
            grader: r.get(0)?,
            rubric_id: r.get(1)?,
            rubric: r.get(2)?,
            pending: r.get(3)?,
            failed: r.get(4)?,
            parse_failures: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Per pair of graders on the same outputs (same rubric).
pub fn grader_pairs(conn: &Connection, scope: &AttemptScope) -> Result<Vec<GraderPair>> {
    let (cond, args) = scope_sql(scope, &["g1", "g2"]);
    let sql = format!(
        "SELECT g1.grader, g2.grader, r.name,
                SUM(g1.pass IS NOT NULL AND g2.pass IS NOT NULL),
                SUM(g1.pass = g2.pass),
                SUM(CASE WHEN g2.pass IS NOT NULL THEN g1.pass END),
                SUM(CASE WHEN g1.pass IS NOT NULL THEN g2.pass END),
                AVG(ABS(g1.score - g2.score))
         FROM grades g1
              JOIN grades g2 ON g2.graded_job_id = g1.graded_job_id AND g1.grader < g2.grader
              JOIN jobs j1 ON j1.id = g1.job_id
              JOIN jobs j2 ON j2.id = g2.job_id AND j2.rubric_id = j1.rubric_id
              JOIN rubrics r ON r.id = j1.rubric_id
              JOIN jobs p ON p.id = g1.graded_job_id
         WHERE 1 = 1{cond}
         GROUP BY g1.grader, g2.grader, r.id ORDER BY g1.grader, g2.grader, r.id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        Ok(GraderPair {
            grader_a: r.get(0)?,
            grader_b: r.get(1)?,
            rubric: r.get(2)?,
            n: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
            agree: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            yes_a: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
            yes_b: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
            mean_abs_score_diff: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
