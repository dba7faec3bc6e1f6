//! The page's HTML: escaped text, tables from section rows, inline CSS (screen and print),
//! the charts inline, and one small optional script (sorting tables by a column). Nothing is
//! loaded from anywhere: no link, no font, no image, no external script.

use anyhow::Result;
use plotters::style::RGBColor;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::charts::{css, PALETTE};
use super::PageData;
use crate::report::models::cell;
use crate::report::render::{cell_text, Table};

mod leaderboard;
mod sections;
mod style;

use leaderboard::leaderboard;
use sections::{cost, failed, failures, grades, latency, throughput, timeouts};
use style::{SCRIPT, STYLE};

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

/// The models in leaderboard order, then any other the charts show, each with its colour:
/// a model keeps its colour on every chart.
fn model_colours(d: &PageData) -> (Vec<String>, BTreeMap<String, RGBColor>) {
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
    (order, colour)
}

pub fn page(d: &PageData) -> Result<String> {
    let (order, colour) = model_colours(d);
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
