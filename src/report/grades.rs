//! `report grades`: verdicts per (model, grader), each grader's harshness, and how far graders
//! agree on the same outputs (percent agreement and Cohen's kappa on the verdict).
//!
//! Scope (`--batch`, `--model`, `--ids-file`) selects the graded (generated) jobs; `--since`
//! the grade attempts. Everything is aggregated in SQL; medians stream one ordered pass.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::render::Table;
use super::Query;

/// The three tables: `grades`, `graders`, `agreement`.
pub fn tables(conn: &Connection, q: &Query) -> Result<Vec<Table>> {
    Ok(vec![
        by_model(conn, q)?,
        graders(conn, q)?,
        agreement(conn, q)?,
    ])
}

/// Conditions on the graded job `p` and, with `--since`, on the grade attempts of `grades`
/// rows under the given aliases.
fn scope(q: &Query, grade_aliases: &[&str]) -> (String, Vec<SqlValue>) {
    let (mut sql, mut args) = q.filter.sql("p");
    if let Some(since) = q.since_ms {
        for g in grade_aliases {
            sql.push_str(&format!(
                " AND (SELECT started_at FROM attempts WHERE id = {g}.attempt_id) >= ?"
            ));
            args.push(SqlValue::Integer(since));
        }
    }
    (sql, args)
}

fn round3(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}

fn rate(part: i64, whole: i64) -> Value {
    if whole > 0 {
        round3(part as f64 / whole as f64)
    } else {
        Value::Null
    }
}

/// Per (model, grader, rubric): n, passed, pass rate, mean and median score.
fn by_model(conn: &Connection, q: &Query) -> Result<Table> {
    let (cond, args) = scope(q, &["g"]);
    let from = format!(
        "FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
              JOIN rubrics r ON r.id = gj.rubric_id
         WHERE 1 = 1{cond}"
    );
    type Key = (String, String, i64);
    /// rubric name, n, passed, with a verdict, mean score, with a score
    type Sums = (String, i64, i64, i64, Option<f64>, i64);
    let mut groups: BTreeMap<Key, Sums> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT p.model, g.grader, r.id, r.name, COUNT(*), COALESCE(SUM(g.pass), 0),
                    COUNT(g.pass), AVG(g.score), COUNT(g.score)
             {from} GROUP BY p.model, g.grader, r.id"
        ))?;
        let mut rows = stmt.query(params_from_iter(args.clone()))?;
        while let Some(r) = rows.next()? {
            groups.insert(
                (r.get(0)?, r.get(1)?, r.get(2)?),
                (
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ),
            );
        }
    }
    // Medians: one ordered stream, keeping only the middle value(s) of each group.
    let mut medians: BTreeMap<Key, f64> = BTreeMap::new();
    {
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
            let n = groups.get(&key).map(|g| g.5).unwrap_or(0);
            let score: f64 = r.get(3)?;
            // 1-based middle positions: one for odd n, two (averaged) for even n.
            let (lo, hi) = ((n + 1) / 2, n / 2 + 1);
            if i == lo || i == hi {
                sum += score;
                if i == hi {
                    medians.insert(key, if lo == hi { sum } else { sum / 2.0 });
                }
            }
        }
    }
    let mut t = Table::new(
        "grades",
        "Grades per model and grader",
        &[
            "model",
            "grader",
            "rubric",
            "n",
            "passed",
            "pass_rate",
            "mean_score",
            "median_score",
        ],
    );
    for (key, (rubric, n, passed, with_verdict, mean, _)) in groups {
        let median = medians.get(&key).copied();
        t.push(vec![
            json!(key.0),
            json!(key.1),
            json!(rubric),
            json!(n),
            if with_verdict > 0 {
                json!(passed)
            } else {
                Value::Null
            },
            rate(passed, with_verdict),
            mean.map(round3).unwrap_or(Value::Null),
            median.map(round3).unwrap_or(Value::Null),
        ]);
    }
    Ok(t)
}

/// Per grader and rubric, over everything it graded: how harsh it is, and how often its
/// answers could not be read at all.
fn graders(conn: &Connection, q: &Query) -> Result<Table> {
    let (cond, args) = scope(q, &["g"]);
    let mut t = Table::new(
        "graders",
        "Graders (pass rate over all outputs they graded: how harsh each is)",
        &[
            "grader",
            "rubric",
            "n",
            "passed",
            "pass_rate",
            "mean_score",
            "pending",
            "failed",
            "parse_failures",
        ],
    );
    type Row = (String, i64, i64, i64, Option<f64>);
    let mut rows_by: BTreeMap<(String, i64), Row> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(&format!(
            "SELECT g.grader, r.id, r.name, COUNT(*), COALESCE(SUM(g.pass), 0), COUNT(g.pass),
                    AVG(g.score)
             FROM grades g JOIN jobs gj ON gj.id = g.job_id JOIN jobs p ON p.id = g.graded_job_id
                  JOIN rubrics r ON r.id = gj.rubric_id
             WHERE 1 = 1{cond} GROUP BY g.grader, r.id"
        ))?;
        let mut rows = stmt.query(params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            rows_by.insert(
                (r.get(0)?, r.get(1)?),
                (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
            );
        }
    }
    // Grade jobs not (yet) graded, and unreadable answers, per grader.
    let (jcond, jargs) = q.filter.sql("p");
    let mut stmt = conn.prepare(&format!(
        "SELECT gj.model, r.id, r.name, SUM(gj.state IN ('pending', 'running')),
                SUM(gj.state = 'failed'),
                SUM((SELECT COUNT(*) FROM attempts a WHERE a.job_id = gj.id AND a.outcome = 'parse'))
         FROM jobs gj JOIN jobs p ON p.id = gj.parent_id JOIN rubrics r ON r.id = gj.rubric_id
         WHERE gj.kind = 'grade'{jcond} GROUP BY gj.model, r.id"
    ))?;
    let mut extra: BTreeMap<(String, i64), (String, i64, i64, i64)> = BTreeMap::new();
    let mut rows = stmt.query(params_from_iter(jargs))?;
    while let Some(r) = rows.next()? {
        extra.insert(
            (r.get(0)?, r.get(1)?),
            (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
        );
    }
    let mut keys: Vec<&(String, i64)> = rows_by.keys().chain(extra.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (name, n, passed, with_verdict, mean) = rows_by
            .get(key)
            .cloned()
            .unwrap_or_else(|| (extra[key].0.clone(), 0, 0, 0, None));
        let (pending, failed, parse) = extra.get(key).map(|e| (e.1, e.2, e.3)).unwrap_or((0, 0, 0));
        if with_verdict >= 5 && (passed == 0 || passed == with_verdict) {
            t.notes.push(format!(
                "grader {} passed {} of {with_verdict} outputs ({name}): check the grader and the rubric before trusting it",
                key.0,
                if passed == 0 { "none" } else { "all" }
            ));
        }
        if failed > 0 {
            t.notes.push(format!(
                "grader {}: {failed} grade job(s) failed (see `report failures --model {}`)",
                key.0, key.0
            ));
        }
        t.push(vec![
            json!(key.0),
            json!(name),
            json!(n),
            if with_verdict > 0 {
                json!(passed)
            } else {
                Value::Null
            },
            rate(passed, with_verdict),
            mean.map(round3).unwrap_or(Value::Null),
            json!(pending),
            json!(failed),
            json!(parse),
        ]);
    }
    Ok(t)
}

/// Cohen's kappa for two raters' yes/no verdicts on the same `n` outputs: observed agreement
/// against the agreement their own yes rates would give by chance. None when chance
/// agreement is certain (both always said the same one thing).
pub fn cohens_kappa(n: i64, agree: i64, yes_a: i64, yes_b: i64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    let n = n as f64;
    let po = agree as f64 / n;
    let (pa, pb) = (yes_a as f64 / n, yes_b as f64 / n);
    let pe = pa * pb + (1.0 - pa) * (1.0 - pb);
    if (1.0 - pe).abs() < 1e-12 {
        return None;
    }
    Some((po - pe) / (1.0 - pe))
}

/// Per pair of graders on the same outputs (same rubric): n, agreement, kappa, and the mean
/// absolute difference of their scores.
fn agreement(conn: &Connection, q: &Query) -> Result<Table> {
    let (cond, args) = scope(q, &["g1", "g2"]);
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
    let mut t = Table::new(
        "agreement",
        "Agreement between graders on the same outputs (verdicts)",
        &[
            "grader_a",
            "grader_b",
            "rubric",
            "n",
            "agree",
            "agreement_pct",
            "kappa",
            "mean_abs_score_diff",
        ],
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let n: i64 = r.get::<_, Option<i64>>(3)?.unwrap_or(0);
        let agree: i64 = r.get::<_, Option<i64>>(4)?.unwrap_or(0);
        let yes_a: i64 = r.get::<_, Option<i64>>(5)?.unwrap_or(0);
        let yes_b: i64 = r.get::<_, Option<i64>>(6)?.unwrap_or(0);
        let diff: Option<f64> = r.get(7)?;
        let kappa = cohens_kappa(n, agree, yes_a, yes_b);
        if let Some(k) = kappa.filter(|k| *k < 0.2 && n >= 5) {
            t.notes.push(format!(
                "{} and {} barely agree beyond chance (kappa {k:.2} on {n} outputs)",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?
            ));
        }
        t.push(vec![
            json!(r.get::<_, String>(0)?),
            json!(r.get::<_, String>(1)?),
            json!(r.get::<_, String>(2)?),
            json!(n),
            json!(agree),
            if n > 0 {
                json!((agree as f64 / n as f64 * 1000.0).round() / 10.0)
            } else {
                Value::Null
            },
            kappa.map(round3).unwrap_or(Value::Null),
            diff.map(round3).unwrap_or(Value::Null),
        ]);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::cohens_kappa;

    #[test]
    fn kappa_by_hand() {
        // 10 outputs: A says yes to 6, B to 4, they agree on 8 (4 yes-yes, 4 no-no).
        // po = 0.8, pe = 0.6·0.4 + 0.4·0.6 = 0.48, kappa = 0.32 / 0.52.
        let k = cohens_kappa(10, 8, 6, 4).unwrap();
        assert!((k - 0.32 / 0.52).abs() < 1e-9);
        // Perfect agreement with both answers used: 1. Constant identical raters: undefined.
        assert_eq!(cohens_kappa(4, 4, 2, 2), Some(1.0));
        assert_eq!(cohens_kappa(4, 4, 4, 4), None);
        // A harsh grader (never yes) against a fair one: no agreement beyond chance.
        assert_eq!(cohens_kappa(4, 2, 0, 2), Some(0.0));
        assert_eq!(cohens_kappa(0, 0, 0, 0), None);
    }
}
