//! The chart sections of the page (latency, failures, throughput, grades with the graders'
//! agreement, timeouts) and the plain ones (failed jobs, cost): each a chart, its key and its
//! table.

use anyhow::Result;
use plotters::style::RGBColor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{escape, figure, key, notes, table};
use crate::report::models::cell;
use crate::report::page::charts::{self, outcome_colour, PALETTE};
use crate::report::page::PageData;
use crate::report::render::Table;

/// Cohen's kappa as a colour: red (chance or worse) through yellow to green (near perfect),
/// on Landis & Koch's bands.
fn kappa_colour(k: f64) -> &'static str {
    match k {
        k if k < 0.0 => "#f4a6a6",
        k if k < 0.2 => "#f8c9b4",
        k if k < 0.4 => "#fbe2a8",
        k if k < 0.6 => "#f2f0a6",
        k if k < 0.8 => "#cfe9b0",
        _ => "#a8dba8",
    }
}

/// One grader × grader matrix of kappa per rubric, from the `agreement` rows.
fn kappa_matrix(agreement: &Table) -> String {
    let mut by_rubric: BTreeMap<String, Vec<&Vec<Value>>> = BTreeMap::new();
    for r in &agreement.rows {
        by_rubric
            .entry(
                cell(agreement, r, "rubric")
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
            .or_default()
            .push(r);
    }
    if by_rubric.is_empty() {
        return "<p class=\"empty\">(no output was graded by two graders)</p>".to_string();
    }
    let mut out = String::new();
    for (rubric, rows) in by_rubric {
        rubric_matrix(agreement, &rubric, &rows, &mut out);
    }
    out.push_str(
        "<p class=\"lead\">Kappa: agreement beyond chance on the pass/fail verdict. Below 0.2 (red) the graders barely agree; above 0.8 (green) they agree almost perfectly.</p>",
    );
    out
}

/// The grader × grader matrix of one rubric, each cell the kappa of a pair.
fn rubric_matrix(agreement: &Table, rubric: &str, rows: &[&Vec<Value>], out: &mut String) {
    let mut graders: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            [
                cell(agreement, r, "grader_a").as_str().unwrap_or(""),
                cell(agreement, r, "grader_b").as_str().unwrap_or(""),
            ]
        })
        .map(str::to_string)
        .collect();
    graders.sort();
    graders.dedup();
    let find = |a: &str, b: &str| {
        rows.iter().find(|r| {
            let (x, y) = (
                cell(agreement, r, "grader_a").as_str().unwrap_or(""),
                cell(agreement, r, "grader_b").as_str().unwrap_or(""),
            );
            (x == a && y == b) || (x == b && y == a)
        })
    };
    let _ = write!(
        out,
        "<h3>Cohen's kappa, rubric {}</h3><div class=\"wide\"><table class=\"kappa\"><thead><tr><th></th>",
        escape(rubric)
    );
    for g in &graders {
        let _ = write!(out, "<th>{}</th>", escape(g));
    }
    out.push_str("</tr></thead><tbody>");
    for a in &graders {
        let _ = write!(out, "<tr><th>{}</th>", escape(a));
        for b in &graders {
            if a == b {
                out.push_str("<td class=\"k na\">—</td>");
                continue;
            }
            match find(a, b) {
                Some(r) => {
                    let n = cell(agreement, r, "n").as_i64().unwrap_or(0);
                    match cell(agreement, r, "kappa").as_f64() {
                        Some(k) => {
                            let _ = write!(
                                out,
                                "<td class=\"k\" style=\"background:{}\" title=\"{n} outputs graded by both\">{k:.2}<br><small>n={n}</small></td>",
                                kappa_colour(k)
                            );
                        }
                        None => {
                            let _ = write!(
                                out,
                                "<td class=\"k na\" title=\"undefined: both graders always gave the same one verdict\">n/a<br><small>n={n}</small></td>"
                            );
                        }
                    }
                }
                None => out.push_str("<td class=\"k na\">—</td>"),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

pub(super) type ModelKey<'a> = dyn Fn(&[String], &'static str) -> String + 'a;

pub(super) fn latency(
    d: &PageData,
    colour: &BTreeMap<String, RGBColor>,
    model_key: &ModelKey,
) -> Result<String> {
    let mut out = String::from(
        "<p class=\"lead\">How long successful attempts took: each line climbs to 100% at the slowest attempt. \
         Circle = p50 (median), triangle = p95. Further left is faster; a long flat tail means a few slow answers.</p>",
    );
    if d.latency_cdf.rows.is_empty() {
        out.push_str("<p class=\"empty\">(no successful attempts in scope)</p>");
    } else {
        let names: Vec<String> = d
            .latency
            .rows
            .iter()
            .filter_map(|r| cell(&d.latency, r, "model").as_str().map(str::to_string))
            .collect();
        out.push_str(&model_key(&names, ""));
        out.push_str(&figure(
            &charts::latency_cdf(&d.latency_cdf, &d.latency, colour)?,
            "latency distribution per model",
        ));
    }
    out.push_str(&table(&d.latency, &[], ""));
    Ok(out)
}

pub(super) fn failures(d: &PageData, order: &[String]) -> Result<String> {
    let mut out = String::from(
        "<p class=\"lead\">What each model's attempts ended as. Grey kinds (unavailable, throttled, interrupted, lost) were not the model's fault and are not charged; light green is an answer taken from the cache.</p>",
    );
    if d.failures.rows.is_empty() {
        out.push_str("<p class=\"empty\">(no attempts in scope)</p>");
        return Ok(out);
    }
    let (svg, shown) = charts::failure_mix(&d.failures, order)?;
    out.push_str(&key(&shown
        .iter()
        .map(|k| (k.clone(), outcome_colour(k), ""))
        .collect::<Vec<_>>()));
    out.push_str(&figure(&svg, "failure mix per model"));
    // Only the kinds that occurred, to keep the table narrow.
    let mut cols = vec!["model", "attempts", "failed_attempts", "fail_rate"];
    cols.extend(
        shown
            .iter()
            .filter(|k| k.as_str() != "ok")
            .map(String::as_str),
    );
    cols.push("truncated");
    out.push_str(&table(&d.failures, &cols, ""));
    Ok(out)
}

pub(super) fn throughput(
    d: &PageData,
    colour: &BTreeMap<String, RGBColor>,
    model_key: &ModelKey,
) -> Result<String> {
    let mut out = String::from("<p class=\"lead\">Jobs done per interval, per model.</p>");
    if d.timeline.rows.is_empty() {
        out.push_str("<p class=\"empty\">(nothing done in scope)</p>");
        return Ok(out);
    }
    let mut names: Vec<String> = d
        .timeline
        .rows
        .iter()
        .filter_map(|r| cell(&d.timeline, r, "model").as_str().map(str::to_string))
        .collect();
    names.dedup();
    out.push_str(&model_key(&names, "round"));
    out.push_str(&figure(
        &charts::timeline(&d.timeline, colour)?,
        "jobs done per interval per model",
    ));
    out.push_str(&notes(&d.timeline));
    out.push_str("<details><summary>the numbers</summary>");
    let mut t = d.timeline.clone();
    t.notes.clear();
    out.push_str(&table(&t, &["model", "interval_start", "done"], ""));
    out.push_str("</details>");
    Ok(out)
}

pub(super) fn grades(d: &PageData, order: &[String]) -> Result<String> {
    let (by_model, graders, agreement) = (&d.grades[0], &d.grades[1], &d.grades[2]);
    let mut out = String::new();
    if by_model.rows.is_empty() {
        out.push_str("<p class=\"empty\">(no grades in scope: <code>llmbatch grade --grader MODEL</code> adds them)</p>");
        return Ok(out);
    }
    let mut names: Vec<String> = by_model
        .rows
        .iter()
        .filter_map(|r| cell(by_model, r, "grader").as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    out.push_str("<p class=\"lead\">Pass rate of each model's outputs, per grader.</p>");
    out.push_str(&key(&names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.clone(), PALETTE[i % PALETTE.len()], ""))
        .collect::<Vec<_>>()));
    out.push_str(&figure(
        &charts::grades(by_model, order, &names)?,
        "pass rate per model and grader",
    ));
    out.push_str(&table(by_model, &[], ""));
    out.push_str("<h3>Graders: how harsh each is</h3><p class=\"lead\">Pass rate over everything a grader graded: a grader far below the others is harsh (or broken).</p>");
    out.push_str(&table(graders, &[], ""));
    out.push_str("<h3>Agreement between graders</h3>");
    out.push_str(&kappa_matrix(agreement));
    out.push_str(&table(agreement, &[], ""));
    Ok(out)
}

pub(super) fn timeouts(d: &PageData, order: &[String]) -> Result<String> {
    let mut out = String::from(
        "<p class=\"lead\">Configured timeout against the slowest successes (p99 over the last 7 days) and the advice \
         (2 × p99, within bounds) that <code>--timeout auto</code> follows. A timeout far above the advice lets a hung call \
         hold a slot; one below p99 kills answers that would have come.</p>",
    );
    if d.timeouts.rows.is_empty() {
        out.push_str("<p class=\"empty\">(no models in scope)</p>");
        return Ok(out);
    }
    out.push_str(&key(&[
        ("configured timeout".to_string(), RGBColor(60, 60, 60), ""),
        ("observed p99".to_string(), PALETTE[0], "round"),
        ("advised".to_string(), PALETTE[2], "tri"),
    ]));
    out.push_str(&figure(
        &charts::timeouts(&d.timeouts, order)?,
        "configured timeout, observed p99 and advice per model",
    ));
    out.push_str(&table(&d.timeouts, &[], ""));
    Ok(out)
}

pub(super) fn failed(d: &PageData) -> String {
    let mut out =
        String::from("<p class=\"lead\">The most recent failed jobs and their last error.</p>");
    out.push_str(&table(
        &d.failed_jobs,
        &["id", "model", "batch", "item", "outcome", "error"],
        "",
    ));
    out
}

pub(super) fn cost(d: &PageData) -> String {
    let mut out = String::from(
        "<p class=\"lead\">Tokens of successful and failed attempts alike, at each model's prices \
         (<code>llmbatch models set NAME --price-in USD --price-out USD</code>, per million tokens). \
         A model without prices shows its tokens and no cost.</p>",
    );
    out.push_str(&table(&d.cost, &[], ""));
    out
}
