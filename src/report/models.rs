//! `report models`: the leaderboard. One row per model that generated in scope, built from the
//! rows the other sections computed (status, latency, failures, grades, timeouts, speed), ranked
//! by quality — grades when there are any, else the success rate — then by p95 latency, with
//! ties and missing data said in a `note`, and one sentence naming the best model and why.
//!
//! A new column is one field on [`Entry`], one line in `Entry::cells` and one
//! name in [`COLUMNS`].

use anyhow::Result;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

use super::data::Sections;
use super::render::Table;
use crate::domain::Outcome;

/// The leaderboard's columns, in order (snake_case, as in JSON).
pub const COLUMNS: [&str; 17] = [
    "rank",
    "model",
    "done",
    "failed",
    "success_rate",
    "graders",
    "grade_pass_rate",
    "mean_score",
    "p50_s",
    "p95_s",
    "tokens_per_s",
    "cost_usd",
    "cost_per_1k_jobs_usd",
    "top_failure",
    "top_failure_n",
    "advised_timeout_s",
    "note",
];

/// What the ranking compares first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// Mean over graders of each grader's pass rate.
    PassRate,
    /// Mean over graders of each grader's mean score (graders gave scores, no verdicts).
    MeanScore,
    /// Done / (done + failed) jobs: no grades in scope.
    SuccessRate,
}

impl Basis {
    pub fn describe(self) -> &'static str {
        match self {
            Basis::PassRate => "grade pass rate (mean over graders)",
            Basis::MeanScore => "mean grade score (mean over graders)",
            Basis::SuccessRate => "success rate",
        }
    }
}

/// One model's row.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// Competition rank (1, 2, 2, 4); None when the model has nothing to rank on.
    pub rank: Option<usize>,
    pub model: String,
    pub done: i64,
    pub failed: i64,
    pub success_rate: Option<f64>,
    pub graders: i64,
    /// Outputs graded (summed over graders).
    pub graded: i64,
    pub grade_pass_rate: Option<f64>,
    pub mean_score: Option<f64>,
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
    pub tokens_per_s: Option<f64>,
    /// What its attempts cost at the model's prices; None where it has none.
    pub cost_usd: Option<f64>,
    pub cost_per_1k_jobs_usd: Option<f64>,
    /// The most frequent charged failure outcome and its count of attempts.
    pub top_failure: Option<(String, i64)>,
    pub advised_timeout_s: Option<f64>,
    pub notes: Vec<String>,
}

impl Entry {
    /// The value the ranking compares first, as shown (rounded to 3 places, so rows that
    /// look equal are equal).
    pub fn quality(&self, basis: Basis) -> Option<f64> {
        let v = match basis {
            Basis::PassRate => self.grade_pass_rate,
            Basis::MeanScore => self.mean_score,
            Basis::SuccessRate => self.success_rate,
        };
        v.map(round3)
    }

    fn cells(&self) -> Vec<Value> {
        let num = |v: Option<f64>| v.map_or(Value::Null, |v| json!(v));
        vec![
            self.rank.map_or(Value::Null, |r| json!(r)),
            json!(self.model),
            json!(self.done),
            json!(self.failed),
            num(self.success_rate),
            json!(self.graders),
            num(self.grade_pass_rate),
            num(self.mean_score),
            num(self.p50_s),
            num(self.p95_s),
            num(self.tokens_per_s),
            num(self.cost_usd),
            num(self.cost_per_1k_jobs_usd),
            self.top_failure
                .as_ref()
                .map_or(Value::Null, |(k, _)| json!(k)),
            self.top_failure
                .as_ref()
                .map_or(Value::Null, |(_, n)| json!(n)),
            num(self.advised_timeout_s),
            if self.notes.is_empty() {
                Value::Null
            } else {
                json!(self.notes.join("; "))
            },
        ]
    }
}

/// The ranked rows, what they were ranked on, and the verdict sentence.
#[derive(Debug, Clone)]
pub struct Leaderboard {
    pub entries: Vec<Entry>,
    pub basis: Basis,
    pub verdict: String,
    /// Models left out because they only graded others.
    pub graders_only: Vec<String>,
}

impl Leaderboard {
    pub fn table(&self) -> Table {
        let mut t = Table::new(
            "models",
            &format!(
                "Models, best first (by {}, then p95 latency)",
                self.basis.describe()
            ),
            &COLUMNS,
        );
        for e in &self.entries {
            t.push(e.cells());
        }
        t.notes.push(self.verdict.clone());
        if !self.graders_only.is_empty() {
            t.notes.push(format!(
                "Graders only (not ranked): {}; see `report grades`.",
                self.graders_only.join(", ")
            ));
        }
        t.empty = "(no model has jobs in scope)".to_string();
        t
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Column `name` of `row` in `t`.
pub fn cell<'t>(t: &Table, row: &'t [Value], name: &str) -> &'t Value {
    t.columns
        .iter()
        .position(|c| c == name)
        .map_or(&Value::Null, |i| &row[i])
}

/// Rows of `t` keyed by their `model` column.
fn by_model(t: &Table) -> BTreeMap<String, &[Value]> {
    t.rows
        .iter()
        .filter_map(|r| Some((cell(t, r, "model").as_str()?.to_string(), r.as_slice())))
        .collect()
}

pub fn leaderboard(s: &Sections) -> Result<Leaderboard> {
    let status = &s.status()?[0];
    let latency = s.model_latency()?;
    let failures = s.model_failures()?;
    let grades = &s.grades()?[0];
    let timeouts = s.timeouts()?;
    let tokens = s.tokens_per_s()?;
    let cost = s.model_cost()?;

    let status_rows = by_model(status);
    let latency_rows = by_model(latency);
    let failure_rows = by_model(failures);
    let timeout_rows = by_model(timeouts);
    let cost_rows = by_model(cost);

    let mut names: BTreeSet<String> = status_rows.keys().cloned().collect();
    names.extend(latency_rows.keys().cloned());
    names.extend(failure_rows.keys().cloned());
    let (mut generating, mut graders_only) = (Vec::new(), Vec::new());
    for m in names {
        if generates(s, &m)? {
            generating.push(m);
        } else {
            graders_only.push(m);
        }
    }

    let mut entries = Vec::new();
    for model in generating {
        let mut e = Entry {
            model: model.clone(),
            ..Entry::default()
        };
        if let Some(r) = status_rows.get(&model) {
            e.done = cell(status, r, "done").as_i64().unwrap_or(0);
            e.failed = cell(status, r, "failed").as_i64().unwrap_or(0);
        }
        let finished = e.done + e.failed;
        e.success_rate = (finished > 0).then(|| round3(e.done as f64 / finished as f64));
        if let Some(r) = latency_rows.get(&model) {
            e.p50_s = cell(latency, r, "p50_s").as_f64();
            e.p95_s = cell(latency, r, "p95_s").as_f64();
        }
        e.tokens_per_s = tokens.get(&model).copied();
        if let Some(r) = cost_rows.get(&model) {
            e.cost_usd = cell(cost, r, "cost_usd").as_f64();
            e.cost_per_1k_jobs_usd = cell(cost, r, "cost_per_1k_jobs_usd").as_f64();
        }
        if let Some(r) = failure_rows.get(&model) {
            e.top_failure = top_failure(failures, r);
        }
        if let Some(r) = timeout_rows.get(&model) {
            e.advised_timeout_s = cell(timeouts, r, "advice_s").as_f64();
        }
        add_grades(&mut e, grades);
        entries.push(e);
    }

    let basis = basis_of(&entries);
    rank(&mut entries, basis);
    let verdict = verdict(&entries, basis);
    Ok(Leaderboard {
        entries,
        basis,
        verdict,
        graders_only,
    })
}

/// A model's grades: one row per (grader, rubric); averaged over them, each grader counting
/// once however many outputs it graded, so one prolific grader does not outvote the rest.
fn add_grades(e: &mut Entry, grades: &Table) {
    let rows: Vec<&Vec<Value>> = grades
        .rows
        .iter()
        .filter(|r| cell(grades, r, "model").as_str() == Some(e.model.as_str()))
        .collect();
    let graders: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| cell(grades, r, "grader").as_str())
        .collect();
    e.graders = graders.len() as i64;
    e.graded = rows
        .iter()
        .filter_map(|r| cell(grades, r, "n").as_i64())
        .sum();
    e.grade_pass_rate = mean(
        rows.iter()
            .filter_map(|r| cell(grades, r, "pass_rate").as_f64()),
    );
    e.mean_score = mean(
        rows.iter()
            .filter_map(|r| cell(grades, r, "mean_score").as_f64()),
    );
}

/// What the ranking is by: the grade pass rate where any model has one, else the mean score,
/// else the success rate.
fn basis_of(entries: &[Entry]) -> Basis {
    if entries.iter().any(|e| e.grade_pass_rate.is_some()) {
        Basis::PassRate
    } else if entries.iter().any(|e| e.mean_score.is_some()) {
        Basis::MeanScore
    } else {
        Basis::SuccessRate
    }
}

/// Whether `model` has generate jobs in scope (a model that only grades is not ranked).
fn generates(s: &Sections, model: &str) -> Result<bool> {
    s.store.generates(&s.q.filter, model)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| round3(sum / n as f64))
}

/// The charged failure outcome with most attempts (the first in outcome order on a tie).
fn top_failure(t: &Table, row: &[Value]) -> Option<(String, i64)> {
    let mut best: Option<(String, i64)> = None;
    for o in Outcome::ALL
        .iter()
        .filter(|o| **o != Outcome::Ok && o.charged())
    {
        let n = cell(t, row, o.as_str()).as_i64().unwrap_or(0);
        if n > 0 && best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((o.as_str().to_string(), n));
        }
    }
    best
}

/// Sorts best first and numbers the ranks; says in each row's notes what is missing and
/// which rows tie.
fn rank(entries: &mut [Entry], basis: Basis) {
    let p95_key = |e: &Entry| e.p95_s.unwrap_or(f64::INFINITY);
    entries.sort_by(|a, b| {
        let (qa, qb) = (a.quality(basis), b.quality(basis));
        // Rows with nothing to rank on go last.
        qb.is_some()
            .cmp(&qa.is_some())
            .then(qb.unwrap_or(0.0).total_cmp(&qa.unwrap_or(0.0)))
            .then(p95_key(a).total_cmp(&p95_key(b)))
            .then(a.model.cmp(&b.model))
    });
    for i in 0..entries.len() {
        let q = entries[i].quality(basis);
        if q.is_none() {
            entries[i].notes.push(match basis {
                Basis::SuccessRate => "not ranked: no finished jobs".to_string(),
                _ => "not ranked: no grades".to_string(),
            });
            continue;
        }
        let same_as_prev = i > 0
            && entries[i - 1].quality(basis) == q
            && p95_key(&entries[i - 1]) == p95_key(&entries[i]);
        entries[i].rank = if same_as_prev {
            entries[i - 1].rank
        } else {
            Some(i + 1)
        };
        // Rows with the same quality: name them, and say what decided.
        let peers: Vec<(String, bool)> = entries
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != i && e.quality(basis) == q)
            .map(|(_, e)| (e.model.clone(), p95_key(e) == p95_key(&entries[i])))
            .collect();
        let tied: Vec<&str> = peers.iter().filter(|p| p.1).map(|p| p.0.as_str()).collect();
        let split: Vec<&str> = peers
            .iter()
            .filter(|p| !p.1)
            .map(|p| p.0.as_str())
            .collect();
        if !tied.is_empty() {
            entries[i]
                .notes
                .push(format!("tied with {}", tied.join(", ")));
        }
        if !split.is_empty() {
            let whom = if split.len() <= 2 {
                split.join(", ")
            } else {
                format!("{} others", split.len())
            };
            entries[i].notes.push(format!(
                "same {} as {whom}: ordered by p95",
                short_basis(basis)
            ));
        }
    }
    for e in entries.iter_mut() {
        if e.p95_s.is_none() {
            e.notes
                .push("no successful attempt: no latency".to_string());
        }
        if basis != Basis::SuccessRate && e.quality(basis).is_some() && e.graders == 1 {
            e.notes.push("one grader only".to_string());
        }
    }
}

fn short_basis(basis: Basis) -> &'static str {
    match basis {
        Basis::PassRate => "pass rate",
        Basis::MeanScore => "mean score",
        Basis::SuccessRate => "success rate",
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn p95_text(e: &Entry) -> String {
    e.p95_s.map_or("no latency yet".to_string(), |p| {
        format!("p95 latency {}", crate::util::human_secs(p))
    })
}

/// One sentence: the best model and the evidence, or why there is none.
fn verdict(entries: &[Entry], basis: Basis) -> String {
    let ranked: Vec<&Entry> = entries.iter().filter(|e| e.rank.is_some()).collect();
    let Some(best) = ranked.first() else {
        return match basis {
            Basis::SuccessRate => {
                "No best model yet: no model has finished a job in scope.".to_string()
            }
            _ => "No best model yet: no graded outputs in scope.".to_string(),
        };
    };
    let q = best.quality(basis).unwrap_or(0.0);
    let evidence = match basis {
        Basis::PassRate => format!(
            "grade pass rate {} averaged over {} grader(s) on {} graded output(s)",
            pct(q),
            best.graders,
            best.graded
        ),
        Basis::MeanScore => format!(
            "mean grade score {q:.2} averaged over {} grader(s) on {} graded output(s)",
            best.graders, best.graded
        ),
        Basis::SuccessRate => format!(
            "success rate {} ({} of {} finished jobs done)",
            pct(q),
            best.done,
            best.done + best.failed
        ),
    };
    let second = ranked.get(1);
    let against = match second {
        Some(s) if s.quality(basis) == Some(q) && s.rank == best.rank => format!(
            "; tied with {} on {} and p95 latency",
            s.model,
            short_basis(basis)
        ),
        Some(s) if s.quality(basis) == Some(q) => format!(
            "; {} has the same {} but is slower ({} against {})",
            s.model,
            short_basis(basis),
            p95_text(s),
            p95_text(best).trim_start_matches("p95 latency ")
        ),
        Some(s) => format!(
            "; next is {} at {}",
            s.model,
            match basis {
                Basis::MeanScore => format!("{:.2}", s.quality(basis).unwrap_or(0.0)),
                _ => pct(s.quality(basis).unwrap_or(0.0)),
            }
        ),
        None => "; it is the only model ranked".to_string(),
    };
    let tail = match basis {
        Basis::SuccessRate => {
            " No grades in scope, so this ranks reliability, not answer quality (`llmbatch grade` adds grades).".to_string()
        }
        _ => format!(
            " It finished {} of {} jobs; {}.",
            best.done,
            best.done + best.failed,
            p95_text(best)
        ),
    };
    format!("Best model: {}, on {evidence}{against}.{tail}", best.model)
}
