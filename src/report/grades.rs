//! `report grades`: verdicts per (model, grader), each grader's harshness, and how far graders
//! agree on the same outputs (percent agreement and Cohen's kappa on the verdict).
//!
//! Scope (`--batch`, `--model`, `--ids-file`) selects the graded (generated) jobs; `--since`
//! the grade attempts. Everything is aggregated in SQL; medians stream one ordered pass.

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::render::Table;
use super::Query;
use crate::db::ReportSource;

/// The three tables: `grades`, `graders`, `agreement`.
pub fn tables(src: &dyn ReportSource, q: &Query) -> Result<Vec<Table>> {
    Ok(vec![
        by_model(src, q)?,
        graders(src, q)?,
        agreement(src, q)?,
    ])
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
fn by_model(src: &dyn ReportSource, q: &Query) -> Result<Table> {
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
    for g in src.grade_groups(&q.scope())? {
        t.push(vec![
            json!(g.model),
            json!(g.grader),
            json!(g.rubric),
            json!(g.n),
            if g.with_verdict > 0 {
                json!(g.passed)
            } else {
                Value::Null
            },
            rate(g.passed, g.with_verdict),
            g.mean_score.map(round3).unwrap_or(Value::Null),
            g.median_score.map(round3).unwrap_or(Value::Null),
        ]);
    }
    Ok(t)
}

/// Per grader and rubric, over everything it graded: how harsh it is, and how often its
/// answers could not be read at all.
fn graders(src: &dyn ReportSource, q: &Query) -> Result<Table> {
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
    let rows_by: BTreeMap<(String, i64), Row> = src
        .grader_sums(&q.scope())?
        .into_iter()
        .map(|g| {
            let row = (g.rubric, g.n, g.passed, g.with_verdict, g.mean_score);
            ((g.grader, g.rubric_id), row)
        })
        .collect();
    // Grade jobs not (yet) graded, and unreadable answers, per grader.
    let extra: BTreeMap<(String, i64), (String, i64, i64, i64)> = src
        .grader_jobs(&q.filter)?
        .into_iter()
        .map(|g| {
            let row = (g.rubric, g.pending, g.failed, g.parse_failures);
            ((g.grader, g.rubric_id), row)
        })
        .collect();
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
fn agreement(src: &dyn ReportSource, q: &Query) -> Result<Table> {
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
    for p in src.grader_pairs(&q.scope())? {
        let (n, agree, yes_a, yes_b, diff) =
            (p.n, p.agree, p.yes_a, p.yes_b, p.mean_abs_score_diff);
        let kappa = cohens_kappa(n, agree, yes_a, yes_b);
        if let Some(k) = kappa.filter(|k| *k < 0.2 && n >= 5) {
            t.notes.push(format!(
                "{} and {} barely agree beyond chance (kappa {k:.2} on {n} outputs)",
                p.grader_a, p.grader_b
            ));
        }
        t.push(vec![
            json!(p.grader_a),
            json!(p.grader_b),
            json!(p.rubric),
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
