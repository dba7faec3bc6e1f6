//! Grade rows from PostgreSQL, as the SQLite engine's (`src/db/sqlite/grades.rs`): graders
//! and models ordered byte by byte, medians picked from one ordered stream.

use anyhow::Result;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::collections::BTreeMap;

use super::queue::Params;
use super::report::scope_on;
use crate::db::report::{
    AttemptScope, GradeGroup, GraderJobs, GraderPair, GraderSums, RepeatGrade,
};
use crate::db::store::Filter;

/// Conditions on the graded job `p` and, with `since_ms`, on the grade attempts of `grades`
/// rows under the given aliases.
fn scope_sql(scope: &AttemptScope, grade_aliases: &[&str], p: &mut Params) -> String {
    let mut sql = scope_on(&scope.filter, "p", "id", p);
    if let Some(since) = scope.since_ms {
        let s = p.add(since);
        for g in grade_aliases {
            sql.push_str(&format!(
                " AND (SELECT started_at FROM attempts WHERE id = {g}.attempt_id) >= {s}"
            ));
        }
    }
    sql
}

pub fn grade_groups(c: &mut Client, scope: &AttemptScope) -> Result<Vec<GradeGroup>> {
    let mut p = Params::default();
    let cond = scope_sql(scope, &["g"], &mut p);
    let from = format!(
        "FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE true{cond}"
    );
    type Key = (String, String, i64);
    let mut groups: BTreeMap<Key, GradeGroup> = BTreeMap::new();
    let sql = format!(
        "SELECT p.model, g.grader, r.id, MIN(r.name), COUNT(*), COALESCE(SUM(g.pass), 0)::bigint,
                COUNT(g.pass), AVG(g.score), COUNT(g.score)
         {from} GROUP BY p.model, g.grader, r.id"
    );
    for r in c.query(&sql, &p.refs())? {
        let key: Key = (r.get(0), r.get(1), r.get(2));
        groups.insert(
            key.clone(),
            GradeGroup {
                model: key.0,
                grader: key.1,
                rubric: r.get(3),
                n: r.get(4),
                passed: r.get(5),
                with_verdict: r.get(6),
                mean_score: r.get(7),
                with_score: r.get(8),
                median_score: None,
            },
        );
    }
    // Medians: one ordered stream, keeping only the middle value(s) of each group, averaged
    // as the SQLite engine does ((lo + hi) / 2, not percentile_cont's interpolation).
    let sql = format!(
        "SELECT p.model, g.grader, r.id, g.score {from} AND g.score IS NOT NULL
         ORDER BY p.model COLLATE \"C\", g.grader COLLATE \"C\", r.id, g.score"
    );
    let mut rows = c.query_raw(&sql, p.refs())?;
    let mut current: Option<Key> = None;
    let mut i = 0i64;
    let mut sum = 0.0;
    while let Some(r) = rows.next()? {
        let key: Key = (r.get(0), r.get(1), r.get(2));
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
        let score: f64 = r.get(3);
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

pub fn grader_sums(c: &mut Client, scope: &AttemptScope) -> Result<Vec<GraderSums>> {
    let mut p = Params::default();
    let cond = scope_sql(scope, &["g"], &mut p);
    let sql = format!(
        "SELECT g.grader, r.id, MIN(r.name), COUNT(*), COALESCE(SUM(g.pass), 0)::bigint,
                COUNT(g.pass), AVG(g.score)
         FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE true{cond} GROUP BY g.grader, r.id ORDER BY g.grader COLLATE \"C\", r.id"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| GraderSums {
            grader: r.get(0),
            rubric_id: r.get(1),
            rubric: r.get(2),
            n: r.get(3),
            passed: r.get(4),
            with_verdict: r.get(5),
            mean_score: r.get(6),
        })
        .collect())
}

pub fn grader_jobs(c: &mut Client, filter: &Filter) -> Result<Vec<GraderJobs>> {
    let mut p = Params::default();
    let cond = scope_on(filter, "p", "id", &mut p);
    let sql = format!(
        "SELECT gj.model, r.id, MIN(r.name),
                COUNT(*) FILTER (WHERE gj.state IN ('pending', 'running')),
                COUNT(*) FILTER (WHERE gj.state = 'failed'),
                SUM((SELECT COUNT(*) FROM attempts a WHERE a.job_id = gj.id AND a.outcome = 'parse'))::bigint
         FROM jobs gj JOIN jobs p ON p.id = gj.parent_id JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.kind = 'grade'{cond} GROUP BY gj.model, r.id
         ORDER BY gj.model COLLATE \"C\", r.id"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| GraderJobs {
            grader: r.get(0),
            rubric_id: r.get(1),
            rubric: r.get(2),
            pending: r.get(3),
            failed: r.get(4),
            parse_failures: r.get(5),
        })
        .collect())
}

pub fn grader_pairs(c: &mut Client, scope: &AttemptScope) -> Result<Vec<GraderPair>> {
    let mut p = Params::default();
    let cond = scope_sql(scope, &["g1", "g2"], &mut p);
    // Each pair once, named in byte order (SQLite compares text as bytes).
    let sql = format!(
        "SELECT g1.grader, g2.grader, MIN(r.name),
                COUNT(*) FILTER (WHERE g1.pass IS NOT NULL AND g2.pass IS NOT NULL),
                COUNT(*) FILTER (WHERE g1.pass = g2.pass),
                SUM(CASE WHEN g2.pass IS NOT NULL THEN g1.pass END)::bigint,
                SUM(CASE WHEN g1.pass IS NOT NULL THEN g2.pass END)::bigint,
                AVG(ABS(g1.score - g2.score))
         FROM grades g1
              JOIN grades g2 ON g2.graded_job_id = g1.graded_job_id
                            AND g1.grader COLLATE \"C\" < g2.grader COLLATE \"C\"
              JOIN jobs j1 ON j1.id = g1.job_id
              JOIN jobs j2 ON j2.id = g2.job_id AND j2.rubric_id = j1.rubric_id
              JOIN rubrics r ON r.id = j1.rubric_id
              JOIN jobs p ON p.id = g1.graded_job_id
         WHERE true{cond}
         GROUP BY g1.grader, g2.grader, r.id
         ORDER BY g1.grader COLLATE \"C\", g2.grader COLLATE \"C\", r.id"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| GraderPair {
            grader_a: r.get(0),
            grader_b: r.get(1),
            rubric: r.get(2),
            n: r.get(3),
            agree: r.get(4),
            yes_a: r.get::<_, Option<i64>>(5).unwrap_or(0),
            yes_b: r.get::<_, Option<i64>>(6).unwrap_or(0),
            mean_abs_score_diff: r.get(7),
        })
        .collect())
}

/// The verdicts of done grade jobs, in the order the consistency section groups them.
pub fn repeat_grades_sql(filter: &Filter, p: &mut Params) -> String {
    let cond = scope_on(filter, "p", "id", p);
    format!(
        "SELECT p.model, g.grader, r.name, r.id, p.batch, p.item_id, g.pass, g.score
         FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.state = 'done'{cond}
         ORDER BY p.model COLLATE \"C\", g.grader COLLATE \"C\", r.id, p.batch COLLATE \"C\",
                  p.item_id COLLATE \"C\", p.id"
    )
}

pub fn repeat_grade(r: &postgres::Row) -> RepeatGrade {
    RepeatGrade {
        model: r.get(0),
        grader: r.get(1),
        rubric: r.get(2),
        rubric_id: r.get(3),
        batch: r.get(4),
        item_id: r.get(5),
        pass: r.get::<_, Option<i64>>(6).map(|p| p != 0),
        score: r.get(7),
    }
}
