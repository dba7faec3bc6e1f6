//! The leaderboard section: the verdict, then one row per model from the same entries as
//! `report models`, related values sharing a cell.

use std::fmt::Write as _;

use super::{escape, notes};
use crate::report::models::Entry;
use crate::report::page::PageData;
use crate::util::human_secs;

pub(super) fn leaderboard(d: &PageData) -> String {
    let none = d.leaderboard.entries.iter().all(|e| e.rank.is_none());
    let mut out = format!(
        "<p class=\"verdict{}\" id=\"verdict\">{}</p>",
        if none { " none" } else { "" },
        escape(&d.leaderboard.verdict)
    );
    let _ = write!(
        out,
        "<p class=\"lead\">Ranked by {}, then by p95 latency (lower first). Rates are of finished jobs; grades are averaged over graders.</p>",
        escape(d.leaderboard.basis.describe())
    );
    out.push_str(&leader_table(&d.leaderboard.entries));
    // The verdict already leads the section: the table's other notes.
    let mut t = d.models.clone();
    t.notes.retain(|n| *n != d.leaderboard.verdict);
    out.push_str(&notes(&t));
    out
}

/// A leaderboard cell: text, sort value, CSS class.
type LeaderCell = (String, Option<f64>, &'static str);

fn num_cell(v: Option<f64>, text: impl Fn(f64) -> String) -> LeaderCell {
    match v {
        Some(x) => (text(x), Some(x), "num"),
        None => ("—".to_string(), None, "na"),
    }
}

/// The leaderboard's columns on the page, from the same entries as `report models`; related
/// values share a cell so the table fits a laptop screen. A new column is one line here.
#[allow(clippy::type_complexity)]
const LEADER_COLUMNS: [(&str, fn(&Entry) -> LeaderCell); 11] = [
    ("#", |e| {
        num_cell(e.rank.map(|r| r as f64), |r| format!("{r}"))
    }),
    ("model", |e| (e.model.clone(), None, "model")),
    ("done / failed", |e| {
        (
            format!("{} / {}", e.done, e.failed),
            Some(e.done as f64),
            "num",
        )
    }),
    ("success", |e| {
        num_cell(e.success_rate, |r| format!("{:.1}%", r * 100.0))
    }),
    ("grades: pass · score", |e| {
        if e.graders == 0 {
            return ("—".to_string(), None, "na");
        }
        let pass = e
            .grade_pass_rate
            .map_or("—".to_string(), |r| format!("{:.1}%", r * 100.0));
        let score = e.mean_score.map_or("—".to_string(), |m| format!("{m:.2}"));
        let n = e.graders;
        (
            format!(
                "{pass} · {score} ({n} grader{})",
                if n == 1 { "" } else { "s" }
            ),
            e.grade_pass_rate.or(e.mean_score),
            "num",
        )
    }),
    ("p50 / p95", |e| match (e.p50_s, e.p95_s) {
        (Some(a), Some(b)) => (
            format!("{} / {}", human_secs(a), human_secs(b)),
            Some(b),
            "num",
        ),
        _ => ("—".to_string(), None, "na"),
    }),
    ("tokens/s", |e| {
        num_cell(e.tokens_per_s, |t| format!("{t:.1}"))
    }),
    ("cost", |e| num_cell(e.cost_usd, |c| format!("${c:.4}"))),
    ("top failure", |e| match &e.top_failure {
        Some((kind, n)) => (format!("{kind} ×{n}"), Some(*n as f64), ""),
        None => ("—".to_string(), None, "na"),
    }),
    ("advised timeout", |e| {
        num_cell(e.advised_timeout_s, human_secs)
    }),
    ("note", |e| (e.notes.join("; "), None, "note")),
];

fn leader_table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "<p class=\"empty\">(no model has jobs in scope)</p>".to_string();
    }
    let mut out = String::from(
        "<div class=\"wide\"><table class=\"sortable leader\" id=\"leaderboard\"><thead><tr>",
    );
    // Cost only where some model has prices: an empty column would crowd a laptop screen.
    let priced = entries.iter().any(|e| e.cost_usd.is_some());
    let columns: Vec<_> = LEADER_COLUMNS
        .iter()
        .filter(|(name, _)| priced || *name != "cost")
        .collect();
    for (name, _) in &columns {
        let _ = write!(out, "<th>{}</th>", escape(name));
    }
    out.push_str("</tr></thead><tbody>");
    for (i, e) in entries.iter().enumerate() {
        let best = i == 0 && e.rank.is_some();
        out.push_str(if best { "<tr class=\"best\">" } else { "<tr>" });
        for (_, make) in &columns {
            let (text, sort, class) = make(e);
            let sort = sort.map_or(String::new(), |v| format!(" data-v=\"{v}\""));
            let _ = write!(out, "<td class=\"{class}\"{sort}>{}</td>", escape(&text));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}
