//! The page's HTML: escaped text, tables from section rows, inline CSS (screen and print),
//! the charts inline, and one small optional script (sorting tables by a column). Nothing is
//! loaded from anywhere: no link, no font, no image, no external script.

use anyhow::Result;
use plotters::style::RGBColor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::charts::{self, css, outcome_colour, PALETTE};
use super::PageData;
use crate::report::models::{cell, Entry};
use crate::report::render::{cell_text, Table};
use crate::util::human_secs;

/// Text as HTML (element content and quoted attribute values alike).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON that can sit inside `<script type="application/json">`: no `<`, `>` or `&` at all,
/// so no text in it can close the element.
fn script_json(v: &Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#dfe3ea; --soft:#f5f7fa; --accent:#1f77b4; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color:var(--fg); background:#fff; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
nav { margin: 14px 0 0; font-size: 14px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
.verdict { font-size: 19px; line-height: 1.4; margin: 20px 0 14px; padding: 14px 18px; border-left: 5px solid #2ca02c; background: #f1f8f1; }
.verdict.none { border-color: #999; background: var(--soft); }
section { margin-top: 36px; }
h2 { font-size: 20px; margin: 0 0 6px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
p.lead { margin: 4px 0 10px; color: var(--muted); }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0; }
th, td { padding: 5px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.na { color: #9aa1ad; text-align: center; }
td.model { font-weight: 600; min-width: 11em; max-width: 22em; overflow-wrap: anywhere; }
td.note { min-width: 11em; max-width: 22em; color: var(--muted); font-size: 12.5px; }
table.leader { width: 100%; }
table.leader td, table.leader th { padding: 6px 7px; }
td.err { max-width: 46em; overflow-wrap: anywhere; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; }
tr.best td { background: #eef7ee; }
table.leader td.model { font-size: 14.5px; }
.notes { color: var(--muted); font-size: 13px; margin: 4px 0; padding-left: 18px; }
figure { margin: 8px 0; }
figure svg { width: 100%; max-width: 960px; height: auto; display: block; }
.key { list-style: none; padding: 0; margin: 6px 0; display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 13px; }
.key li { display: flex; align-items: center; gap: 6px; overflow-wrap: anywhere; }
.sw { display: inline-block; width: 14px; height: 14px; border-radius: 3px; flex: none; }
.sw.round { border-radius: 50%; }
.sw.tri { width: 0; height: 0; border-radius: 0; border-left: 7px solid transparent; border-right: 7px solid transparent; border-bottom: 13px solid; background: none !important; }
td.k { text-align: center; font-variant-numeric: tabular-nums; min-width: 5.5em; }
.empty { color: var(--muted); font-style: italic; }
details { margin: 6px 0; }
summary { cursor: pointer; color: var(--accent); font-size: 14px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12.5px; }
th[data-sort] { cursor: pointer; }
@page { size: landscape; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  .wide { overflow: visible; }
  table { font-size: 8.5pt; }
  th, td { padding: 3px 5px; }
  td.model { min-width: 7em; }
  td.note { min-width: 0; }
  td.err { font-size: 8pt; }
  main { max-width: none; padding: 0; }
  nav { display: none; }
  section { break-inside: avoid-page; margin-top: 18px; }
  figure, table { break-inside: avoid; }
  .verdict { border-left-width: 3px; }
  a { color: inherit; text-decoration: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"#;

/// Click a column header to sort by it; the page reads the same without it.
const SCRIPT: &str = r#"
(function () {
  document.querySelectorAll("table.sortable thead th").forEach(function (th, col) {
    th.setAttribute("data-sort", "");
    th.title = "sort by this column";
    th.addEventListener("click", function () {
      var body = th.closest("table").tBodies[0];
      var asc = th.getAttribute("data-dir") !== "asc";
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      var rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var c = r.cells[col]; return c ? (c.getAttribute("data-v") || c.textContent) : ""; };
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
        var d = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  document.documentElement.setAttribute("data-script", "ran");
})();
"#;

/// How a column's values read on the page.
fn format_cell(column: &str, v: &Value) -> (String, &'static str) {
    if v.is_null() {
        return ("—".to_string(), "na");
    }
    if let Some(x) = v.as_f64() {
        let text = if column.ends_with("_rate") || column == "share" {
            format!("{:.1}%", x * 100.0)
        } else if column.ends_with("_pct") {
            format!("{x:.1}%")
        } else if v.is_f64() {
            format!("{x:.3}")
        } else {
            cell_text(v)
        };
        return (text, "num");
    }
    let class = match column {
        "model" | "grader" | "grader_a" | "grader_b" => "model",
        "error" | "last_error" => "err",
        "note" => "note",
        _ => "",
    };
    (cell_text(v), class)
}

/// A section table as HTML; `columns` picks and orders the columns (all when empty).
fn table(t: &Table, columns: &[&str], class: &str) -> String {
    let mut out = String::new();
    if t.rows.is_empty() {
        let _ = write!(out, "<p class=\"empty\">{}</p>", escape(&t.empty));
        return out;
    }
    let cols: Vec<usize> = if columns.is_empty() {
        (0..t.columns.len()).collect()
    } else {
        columns
            .iter()
            .filter_map(|c| t.columns.iter().position(|x| x == c))
            .collect()
    };
    let _ = write!(
        out,
        "<div class=\"wide\"><table class=\"sortable {class}\" id=\"t-{}\"><thead><tr>",
        escape(&t.name)
    );
    for &i in &cols {
        let numeric = t.rows.iter().any(|r| r[i].is_number());
        let _ = write!(
            out,
            "<th{}>{}</th>",
            if numeric { " class=\"num\"" } else { "" },
            escape(&t.columns[i].replace('_', " "))
        );
    }
    out.push_str("</tr></thead><tbody>");
    for (n, row) in t.rows.iter().enumerate() {
        let best = class == "leader" && n == 0 && row[0].is_number();
        out.push_str(if best { "<tr class=\"best\">" } else { "<tr>" });
        for &i in &cols {
            let (text, cls) = format_cell(&t.columns[i], &row[i]);
            let sort = match &row[i] {
                Value::Number(x) => format!(" data-v=\"{x}\""),
                _ => String::new(),
            };
            let _ = write!(out, "<td class=\"{cls}\"{sort}>{}</td>", escape(&text));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out.push_str(&notes(t));
    out
}

fn notes(t: &Table) -> String {
    if t.notes.is_empty() {
        return String::new();
    }
    let mut out = String::from("<ul class=\"notes\">");
    for n in &t.notes {
        let _ = write!(out, "<li>{}</li>", escape(n));
    }
    out.push_str("</ul>");
    out
}

fn key(items: &[(String, RGBColor, &str)]) -> String {
    let mut out = String::from("<ul class=\"key\">");
    for (label, colour, shape) in items {
        let style = if *shape == "tri" {
            format!("color:{0};border-bottom-color:{0}", css(*colour))
        } else {
            format!("background:{}", css(*colour))
        };
        let _ = write!(
            out,
            "<li><span class=\"sw {shape}\" style=\"{style}\"></span>{}</li>",
            escape(label)
        );
    }
    out.push_str("</ul>");
    out
}

fn figure(svg: &str, label: &str) -> String {
    // plotters writes the <svg> element; give it a name for screen readers.
    let svg = svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{}\" ", escape(label)),
        1,
    );
    format!("<figure>{svg}</figure>")
}

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
            escape(&rubric)
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
    out.push_str(
        "<p class=\"lead\">Kappa: agreement beyond chance on the pass/fail verdict. Below 0.2 (red) the graders barely agree; above 0.8 (green) they agree almost perfectly.</p>",
    );
    out
}

pub fn page(d: &PageData) -> Result<String> {
    // Colours follow the leaderboard order, so a model keeps its colour on every chart.
    let mut order: Vec<String> = d
        .leaderboard
        .entries
        .iter()
        .map(|e| e.model.clone())
        .collect();
    for t in [&d.latency, &d.failures, &d.timeouts] {
        for r in &t.rows {
            if let Some(m) = cell(t, r, "model").as_str() {
                if !order.iter().any(|o| o == m) {
                    order.push(m.to_string());
                }
            }
        }
    }
    let colour: BTreeMap<String, RGBColor> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    let model_key = |names: &[String], shape: &'static str| {
        key(&names
            .iter()
            .filter_map(|m| Some((m.clone(), *colour.get(m)?, shape)))
            .collect::<Vec<_>>())
    };

    let mut body = String::new();
    let w = &mut body;
    let _ = write!(
        w,
        "<header><h1>llmbatch report</h1><p>{} · generated {}</p>\
         <nav><a href=\"#models\">Leaderboard</a><a href=\"#latency\">Latency</a><a href=\"#failures\">Failures</a>\
         <a href=\"#throughput\">Throughput</a><a href=\"#grades\">Grades</a><a href=\"#timeouts\">Timeouts</a>\
         <a href=\"#cost\">Cost</a><a href=\"#failed\">Failed jobs</a></nav></header>",
        escape(&d.scope),
        escape(&d.generated)
    );

    // Each section in page order; a new one is one more entry here.
    let sections: [(&str, &str, String); 8] = [
        ("models", "Leaderboard", leaderboard(d)),
        ("latency", "Latency", latency(d, &colour, &model_key)?),
        ("failures", "Failures", failures(d, &order)?),
        (
            "throughput",
            "Throughput",
            throughput(d, &colour, &model_key)?,
        ),
        ("grades", "Grades", grades(d, &order)?),
        ("timeouts", "Timeout advice", timeouts(d, &order)?),
        ("cost", "Cost", cost(d)),
        ("failed", "Failed jobs", failed(d)),
    ];
    for (id, title, html) in sections {
        let _ = write!(w, "<section id=\"{id}\"><h2>{title}</h2>{html}</section>");
    }
    let _ = write!(
        w,
        "<footer><p>Made by <code>llmbatch report --format html</code>. Every number here is in \
         <code>llmbatch report … --format json</code>; the page's data are also embedded below as JSON \
         (<code>script#report-data</code>).</p></footer>"
    );

    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>llmbatch report — {}</title><style>{STYLE}</style></head>\
         <body><main>{body}</main>\
         <script type=\"application/json\" id=\"report-data\">{}</script>\
         <script>{SCRIPT}</script></body></html>\n",
        escape(&d.scope),
        script_json(&d.json())
    );
    Ok(out)
}

fn leaderboard(d: &PageData) -> String {
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

type ModelKey<'a> = dyn Fn(&[String], &'static str) -> String + 'a;

fn latency(
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

fn failures(d: &PageData, order: &[String]) -> Result<String> {
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

fn throughput(
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

fn grades(d: &PageData, order: &[String]) -> Result<String> {
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

fn timeouts(d: &PageData, order: &[String]) -> Result<String> {
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

fn failed(d: &PageData) -> String {
    let mut out =
        String::from("<p class=\"lead\">The most recent failed jobs and their last error.</p>");
    out.push_str(&table(
        &d.failed_jobs,
        &["id", "model", "batch", "item", "outcome", "error"],
        "",
    ));
    out
}

fn cost(d: &PageData) -> String {
    let mut out = String::from(
        "<p class=\"lead\">Tokens of successful and failed attempts alike, at each model's prices \
         (<code>llmbatch models set NAME --price-in USD --price-out USD</code>, per million tokens). \
         A model without prices shows its tokens and no cost.</p>",
    );
    out.push_str(&table(&d.cost, &[], ""));
    out
}
