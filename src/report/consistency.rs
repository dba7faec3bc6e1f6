//! `report consistency`: how a model's answers to one prompt agree across the repeats of
//! `enqueue --repeat N`, under each grader. Only items graded at least twice count.
//!
//! Per (model, grader, rubric), over repeated items:
//! - `all_passed`: share of items whose graded repeats all passed;
//! - `agreed`: share of items whose verdicts were all the same (all pass or all fail);
//! - `score_mean`, `score_sd`: the mean over items of the scores' mean and of their sample
//!   standard deviation across repeats;
//! - `pass_at_1`, `pass_at_k`: the unbiased estimator of Chen et al. 2021 (HumanEval),
//!   1 − C(n−c, k) / C(n, k) per item with n graded repeats of which c passed, averaged over
//!   items; k is the fewest graded repeats of any item in the row.

use anyhow::Result;
use serde_json::{json, Value};

use super::render::Table;
use super::Query;
use crate::db::{RepeatGrade, ReportSource};

/// One item's graded repeats: verdicts (where the rubric has one) and scores.
#[derive(Default)]
struct Item {
    n: usize,
    verdicts: Vec<bool>,
    scores: Vec<f64>,
}

/// One row: a (model, grader, rubric) and its repeated items.
struct Group {
    model: String,
    grader: String,
    rubric: String,
    rubric_id: i64,
    items: Vec<Item>,
}

pub fn consistency(src: &dyn ReportSource, q: &Query) -> Result<Table> {
    let mut t = Table::new(
        "consistency",
        "Consistency across repeats (items graded at least twice)",
        &[
            "model",
            "grader",
            "rubric",
            "items",
            "k",
            "all_passed",
            "agreed",
            "pass_at_1",
            "pass_at_k",
            "score_mean",
            "score_sd",
        ],
    );
    t.empty = "(no item graded more than once: enqueue --repeat N, run, grade)".into();
    let mut group: Option<Group> = None;
    let mut last_item: Option<(i64, String, String)> = None;
    src.each_repeat_grade(&q.filter, &mut |r: RepeatGrade| {
        let item_key = (r.rubric_id, r.batch, r.item_id);
        let same_group = group.as_ref().is_some_and(|g| {
            g.model == r.model && g.grader == r.grader && g.rubric_id == item_key.0
        });
        if !same_group {
            if let Some(g) = group.take() {
                push_row(&mut t, g);
            }
            group = Some(Group {
                model: r.model,
                grader: r.grader,
                rubric: r.rubric,
                rubric_id: item_key.0,
                items: Vec::new(),
            });
            last_item = None;
        }
        let g = group.as_mut().expect("a group");
        if last_item.as_ref() != Some(&item_key) {
            g.items.push(Item::default());
            last_item = Some(item_key);
        }
        let item = g.items.last_mut().expect("an item");
        item.n += 1;
        if let Some(p) = r.pass {
            item.verdicts.push(p);
        }
        if let Some(s) = r.score {
            item.scores.push(s);
        }
        Ok(())
    })?;
    if let Some(g) = group.take() {
        push_row(&mut t, g);
    }
    Ok(t)
}

fn push_row(t: &mut Table, g: Group) {
    let items: Vec<&Item> = g.items.iter().filter(|i| i.n >= 2).collect();
    if items.is_empty() {
        return;
    }
    let judged: Vec<&Item> = items
        .iter()
        .copied()
        .filter(|i| i.verdicts.len() >= 2)
        .collect();
    let share = |f: &dyn Fn(&Item) -> bool| -> Value {
        if judged.is_empty() {
            return Value::Null;
        }
        round3(judged.iter().filter(|i| f(i)).count() as f64 / judged.len() as f64)
    };
    let k = judged.iter().map(|i| i.verdicts.len()).min();
    let pass_at = |k: usize| -> Value {
        if judged.is_empty() {
            return Value::Null;
        }
        let sum: f64 = judged
            .iter()
            .map(|i| {
                let c = i.verdicts.iter().filter(|v| **v).count();
                pass_at_k(i.verdicts.len(), c, k)
            })
            .sum();
        round3(sum / judged.len() as f64)
    };
    let scored: Vec<&Item> = items
        .iter()
        .copied()
        .filter(|i| i.scores.len() >= 2)
        .collect();
    let (mean, sd) = if scored.is_empty() {
        (Value::Null, Value::Null)
    } else {
        let n = scored.len() as f64;
        let means: f64 = scored.iter().map(|i| mean_sd(&i.scores).0).sum();
        let sds: f64 = scored.iter().map(|i| mean_sd(&i.scores).1).sum();
        (round3(means / n), round3(sds / n))
    };
    t.push(vec![
        json!(g.model),
        json!(g.grader),
        json!(g.rubric),
        json!(items.len()),
        json!(k),
        share(&|i| i.verdicts.iter().all(|v| *v)),
        share(&|i| i.verdicts.iter().all(|v| *v == i.verdicts[0])),
        pass_at(1),
        k.map_or(Value::Null, pass_at),
        mean,
        sd,
    ]);
}

/// Unbiased pass@k for one item: n samples, c correct (Chen et al. 2021):
/// 1 − C(n−c, k) / C(n, k), computed as a product to stay exact in floating point.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if k == 0 || n == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    let mut fail = 1.0;
    for i in (n - c + 1)..=n {
        fail *= 1.0 - k as f64 / i as f64;
    }
    1.0 - fail
}

/// Mean and sample standard deviation (n − 1) of at least two values.
fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn round3(x: f64) -> Value {
    json!((x * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_combinatorial_form() {
        // n = 5, c = 2: pass@1 = 0.4; pass@2 = 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 1) - 0.4).abs() < 1e-12);
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(3, 0, 3), 0.0);
        assert_eq!(pass_at_k(3, 1, 3), 1.0);
        assert_eq!(pass_at_k(4, 3, 2), 1.0);
    }

    #[test]
    fn sample_sd_of_repeats() {
        let (m, sd) = mean_sd(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(m, 5.0);
        assert!((sd - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }
}
