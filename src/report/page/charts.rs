//! The page's charts, drawn with plotters' SVG backend from the section tables. The SVG holds
//! `<text>` elements (no font files, no raster), which the page inlines; plotters escapes every
//! label. Colour keys are drawn as HTML beside each chart (see `html`), where long model names
//! can wrap; inside the SVG, axis labels of model names are shortened with an ellipsis.

use anyhow::Result;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::report::models::cell;
use crate::report::render::Table;

pub const WIDTH: u32 = 960;
const FONT: &str = "sans-serif";

/// Series colours (Tableau 10): distinguishable, and readable in grey when printed.
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The colour of each outcome in the failure mix: green for ok, warm for the model failing,
/// greys for what was not its fault (light green for answers taken from the cache).
pub fn outcome_colour(outcome: &str) -> RGBColor {
    match outcome {
        "ok" => RGBColor(60, 160, 90),
        "timeout" => RGBColor(245, 150, 30),
        "exit" => RGBColor(215, 50, 45),
        "crash" => RGBColor(140, 20, 30),
        "spawn" => RGBColor(150, 90, 190),
        "http" => RGBColor(140, 86, 75),
        "empty" => RGBColor(230, 120, 190),
        "parse" => RGBColor(188, 170, 34),
        "stall" => RGBColor(250, 200, 60),
        "cached" => RGBColor(150, 205, 165),
        "lost" => RGBColor(135, 140, 160),
        "throttled" => RGBColor(110, 110, 110),
        "unavailable" => RGBColor(170, 170, 170),
        "interrupted" => RGBColor(205, 205, 205),
        _ => RGBColor(90, 90, 90),
    }
}

/// A 0–100 % axis across, one band per model down (best first), with its mesh drawn: the
/// frame of the failure mix and of the grades chart.
fn percent_bands<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    names: &[String],
    x_desc: &str,
) -> Result<PercentChart<'a, 'b>> {
    let n = names.len();
    let mut chart = ChartBuilder::on(root)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(label_width(names))
        .build_cartesian_2d(0.0..100.0, (n as f64 - 0.5)..-0.5)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n.max(1))
        .y_label_formatter(&model_axis_formatter(names))
        .x_label_formatter(&|v| format!("{v:.0}%"))
        .x_desc(x_desc)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    Ok(chart)
}

type PercentChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A model name shortened for an axis label.
pub fn short(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let head: String = name.chars().take(max - 1).collect();
        format!("{head}…")
    }
}

/// Renders one chart into an SVG string.
fn svg(
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    // Inline in HTML the namespace is implied; the size scales with the page (CSS).
    Ok(buf.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

fn f(t: &Table, row: &[Value], col: &str) -> Option<f64> {
    cell(t, row, col).as_f64()
}

fn s<'r>(t: &Table, row: &'r [Value], col: &str) -> &'r str {
    cell(t, row, col).as_str().unwrap_or("")
}

/// Width of the label area for model names (the naive font: ~7 px per character at 13 px).
fn label_width(names: &[String]) -> u32 {
    let longest = names.iter().map(|n| n.chars().count()).max().unwrap_or(4);
    (longest.min(32) as u32 * 8 + 16).max(60)
}

/// A number without needless decimals: 2, 2.5, 0.25.
fn trim_num(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Seconds as an axis label: 250ms, 1.5s, 90s, 12m.
fn secs_label(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0}ms", v * 1000.0)
    } else if v < 10.0 {
        format!("{}s", trim_num(v))
    } else if v < 600.0 {
        format!("{v:.0}s")
    } else if v < 7200.0 {
        format!("{}m", trim_num(v / 60.0))
    } else {
        format!("{}h", trim_num(v / 3600.0))
    }
}

/// The x range of a seconds axis, log-scaled when the values span more than 20×.
fn seconds_range(values: impl Iterator<Item = f64>) -> (f64, f64, bool) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0, false);
    }
    if hi / lo > 20.0 {
        (lo / 1.5, hi * 1.5, true)
    } else {
        (0.0, hi * 1.1, false)
    }
}

/// Latency CDF per model on one seconds axis, p50 (circle) and p95 (triangle) marked.
pub fn latency_cdf(
    cdf: &Table,
    latency: &Table,
    colour: &BTreeMap<String, RGBColor>,
) -> Result<String> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &cdf.rows {
        if let (Some(share), Some(secs)) = (f(cdf, r, "share"), f(cdf, r, "seconds")) {
            series
                .entry(s(cdf, r, "model").to_string())
                .or_default()
                .push((secs, share));
        }
    }
    let (lo, hi, log) = seconds_range(series.values().flatten().map(|p| p.0));
    let marks: Vec<(String, f64, f64)> = latency
        .rows
        .iter()
        .filter_map(|r| {
            Some((
                s(latency, r, "model").to_string(),
                f(latency, r, "p50_s")?,
                f(latency, r, "p95_s")?,
            ))
        })
        .collect();
    svg(420, |root| {
        let mut b = ChartBuilder::on(root);
        b.margin(16).x_label_area_size(48).y_label_area_size(64);
        let style = |c: RGBColor| c.stroke_width(2);
        let mesh_desc = if log {
            "latency, seconds (log scale)"
        } else {
            "latency, seconds"
        };
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(mesh_desc)
                    .y_desc("share of successful attempts done")
                    .x_label_formatter(&|v| secs_label(*v))
                    .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
                    .label_style((FONT, 15))
                    .axis_desc_style((FONT, 16))
                    .light_line_style(RGBColor(238, 238, 238))
                    .draw()?;
                for (model, points) in &series {
                    let c = colour.get(model).copied().unwrap_or(BLACK);
                    // A step line: the share reaches k% at the k-th quantile's latency.
                    let mut steps = Vec::with_capacity(points.len() * 2);
                    let mut prev = 0.0;
                    for (x, y) in points {
                        steps.push((*x, prev));
                        steps.push((*x, *y));
                        prev = *y;
                    }
                    chart.draw_series(LineSeries::new(steps, style(c)))?;
                }
                for (model, p50, p95) in &marks {
                    let c = colour.get(model).copied().unwrap_or(BLACK);
                    chart.draw_series([Circle::new((*p50, 0.5), 5, c.filled())])?;
                    chart.draw_series([TriangleMarker::new((*p95, 0.95), 7, c.filled())])?;
                }
                Ok(())
            }};
        }
        if log {
            body!(b.build_cartesian_2d((lo..hi).log_scale(), 0.0..1.02)?)
        } else {
            body!(b.build_cartesian_2d(lo..hi, 0.0..1.02)?)
        }
    })
}

/// A horizontal axis of model names (top to bottom), bands centred on 0, 1, 2, ….
fn model_axis_formatter(names: &[String]) -> impl Fn(&f64) -> String + '_ {
    move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            short(&names[i as usize], 32)
        } else {
            String::new()
        }
    }
}

fn bands_height(n: usize, per: u32) -> u32 {
    (n as u32 * per + 110).max(200)
}

/// Stacked bars per model: each outcome's share of its attempts.
pub fn failure_mix(failures: &Table, order: &[String]) -> Result<(String, Vec<String>)> {
    let kinds: Vec<String> = failures
        .columns
        .iter()
        .filter(|c| {
            let c = c.as_str();
            crate::domain::Outcome::ALL.iter().any(|o| o.as_str() == c)
        })
        .cloned()
        .collect();
    let rows: Vec<&Vec<Value>> = order
        .iter()
        .filter_map(|m| failures.rows.iter().find(|r| s(failures, r, "model") == m))
        .collect();
    let names: Vec<String> = rows
        .iter()
        .map(|r| s(failures, r, "model").to_string())
        .collect();
    // Outcomes shown: ok plus the kinds that occurred.
    let mut shown = vec!["ok".to_string()];
    for k in &kinds {
        if rows
            .iter()
            .any(|r| cell(failures, r, k).as_i64().unwrap_or(0) > 0)
        {
            shown.push(k.clone());
        }
    }
    let n = names.len();
    let chart = svg(bands_height(n, 34), |root| {
        let mut chart = percent_bands(root, &names, "share of attempts, by outcome (%)")?;
        for (i, r) in rows.iter().enumerate() {
            let attempts = cell(failures, r, "attempts").as_i64().unwrap_or(0).max(1) as f64;
            let ok = attempts as i64
                - kinds
                    .iter()
                    .map(|k| cell(failures, r, k).as_i64().unwrap_or(0))
                    .sum::<i64>();
            let mut x = 0.0;
            for k in &shown {
                let count = if k == "ok" {
                    ok
                } else {
                    cell(failures, r, k).as_i64().unwrap_or(0)
                };
                if count <= 0 {
                    continue;
                }
                let w = count as f64 / attempts * 100.0;
                let y = i as f64;
                chart.draw_series([Rectangle::new(
                    [(x, y - 0.35), (x + w, y + 0.35)],
                    outcome_colour(k).filled(),
                )])?;
                x += w;
            }
        }
        Ok(())
    })?;
    Ok((chart, shown))
}

/// Jobs done per interval, one line per model, zeros drawn.
pub fn timeline(t: &Table, colour: &BTreeMap<String, RGBColor>) -> Result<String> {
    let step = t
        .rows
        .first()
        .and_then(|r| f(t, r, "interval_s"))
        .unwrap_or(60.0);
    let start_iso = t
        .rows
        .iter()
        .filter_map(|r| Some((f(t, r, "offset_s")?, s(t, r, "interval_start"))))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    let mut series: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    let mut last = 0i64;
    for r in &t.rows {
        let off = f(t, r, "offset_s").unwrap_or(0.0) as i64;
        last = last.max(off);
        series
            .entry(s(t, r, "model").to_string())
            .or_default()
            .insert(off, f(t, r, "done").unwrap_or(0.0));
    }
    let top = series
        .values()
        .flat_map(|m| m.values())
        .fold(1.0f64, |a, b| a.max(*b));
    // Labels as seconds / minutes / hours since the first interval (its UTC time is in the
    // axis title), whichever reads best over the span.
    let span = last as f64 + step;
    let (unit, unit_name, per) = if span <= 300.0 {
        ("s", "seconds", 1.0)
    } else if span <= 3.0 * 3600.0 {
        ("m", "minutes", 60.0)
    } else {
        ("h", "hours", 3600.0)
    };
    let first = start_iso.map(|(off, iso)| (off, iso.to_string()));
    svg(360, |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..(last as f64 + step).max(step), 0.0..top * 1.15)?;
        let x_desc = match &first {
            Some((_, iso)) => format!("{unit_name} since {iso}"),
            None => "time".to_string(),
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(format!("jobs done per {}", secs_label(step)))
            .x_label_formatter(&|v| format!("{}{unit}", trim_num(v / per)))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        let first_off = first.as_ref().map_or(0, |f| f.0 as i64);
        for (model, points) in &series {
            let c = colour.get(model).copied().unwrap_or(BLACK);
            let mut line = Vec::new();
            let mut at = first_off;
            while at <= last {
                // Each interval drawn at its middle.
                line.push((
                    at as f64 + step / 2.0,
                    points.get(&at).copied().unwrap_or(0.0),
                ));
                at += step as i64;
            }
            chart.draw_series(LineSeries::new(line.clone(), c.stroke_width(2)))?;
            chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
        }
        Ok(())
    })
}

/// Pass rate per model (rows) and grader (bars within a row).
pub fn grades(grades: &Table, order: &[String], graders: &[String]) -> Result<String> {
    let names: Vec<String> = order
        .iter()
        .filter(|m| {
            grades
                .rows
                .iter()
                .any(|r| s(grades, r, "model") == m.as_str())
        })
        .cloned()
        .collect();
    let n = names.len();
    let g = graders.len().max(1);
    svg(bands_height(n, (14 * g as u32 + 14).max(34)), |root| {
        let mut chart = percent_bands(root, &names, "pass rate (%), one bar per grader")?;
        let h = 0.8 / g as f64;
        for (i, model) in names.iter().enumerate() {
            for (j, grader) in graders.iter().enumerate() {
                let rate = grades
                    .rows
                    .iter()
                    .filter(|r| s(grades, r, "model") == model && s(grades, r, "grader") == grader)
                    .filter_map(|r| f(grades, r, "pass_rate"))
                    .next();
                let Some(rate) = rate else { continue };
                let y0 = i as f64 - 0.4 + j as f64 * h;
                chart.draw_series([Rectangle::new(
                    [(0.0, y0 + h * 0.1), (rate * 100.0, y0 + h * 0.9)],
                    PALETTE[j % PALETTE.len()].filled(),
                )])?;
                // The value at the bar's end, so a 0% bar still says something.
                chart.draw_series([Text::new(
                    format!("{:.0}%", rate * 100.0),
                    (rate * 100.0 + 0.8, y0 + h / 2.0),
                    (FONT, 12)
                        .into_font()
                        .color(&RGBColor(60, 60, 60))
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )])?;
            }
        }
        Ok(())
    })
}

/// Per model on one seconds axis: configured timeout (square), observed p99 (circle), advice
/// (triangle).
pub fn timeouts(t: &Table, order: &[String]) -> Result<String> {
    let mut names: Vec<String> = order
        .iter()
        .filter(|m| t.rows.iter().any(|r| s(t, r, "model") == m.as_str()))
        .cloned()
        .collect();
    for r in &t.rows {
        let m = s(t, r, "model").to_string();
        if !names.contains(&m) {
            names.push(m);
        }
    }
    let row = |m: &str| t.rows.iter().find(|r| s(t, r, "model") == m);
    let values = names.iter().filter_map(|m| row(m)).flat_map(|r| {
        [f(t, r, "timeout_s"), f(t, r, "p99_s"), f(t, r, "advice_s")]
            .into_iter()
            .flatten()
    });
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo / 1.6, hi * 1.6)
    } else {
        (0.1, 10.0)
    };
    let n = names.len();
    svg(bands_height(n, 34), |root| {
        let mut chart = ChartBuilder::on(root)
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(label_width(&names))
            .build_cartesian_2d((lo..hi).log_scale(), (n as f64 - 0.5)..-0.5)?;
        chart
            .configure_mesh()
            .y_labels(n.max(1))
            .y_label_formatter(&model_axis_formatter(&names))
            .x_label_formatter(&|v| secs_label(*v))
            .x_desc("seconds (log scale)")
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()?;
        for (i, m) in names.iter().enumerate() {
            let Some(r) = row(m) else { continue };
            let y = i as f64;
            let dark = RGBColor(60, 60, 60);
            if let Some(v) = f(t, r, "timeout_s") {
                let size = 6;
                chart.draw_series([EmptyElement::at((v, y))
                    + Rectangle::new([(-size, -size), (size, size)], dark.filled())])?;
            }
            if let Some(v) = f(t, r, "p99_s") {
                chart.draw_series([Circle::new((v, y), 6, PALETTE[0].filled())])?;
            }
            if let Some(v) = f(t, r, "advice_s") {
                chart.draw_series([TriangleMarker::new((v, y), 8, PALETTE[2].filled())])?;
            }
        }
        Ok(())
    })
}
