//! Rows computed once, rendered as a table for people or CSV / JSON for pipes.

use anyhow::Result;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table as Grid};
use serde_json::{Map, Value};
use std::io::Write;

/// How a command writes its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    /// Only job ids, one per line (for job listings).
    Ids,
    /// One self-contained HTML page (`report` only).
    Html,
}

/// One section: named columns (snake_case, as in JSON) and rows of JSON values.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Lines printed under the table (warnings, advice); kept out of CSV and JSON rows.
    pub notes: Vec<String>,
    /// Warnings about the state of things (a stalled or drained pipeline): logged to stderr in
    /// every format, so stdout stays rows a pipe can parse.
    pub warnings: Vec<String>,
    /// What a table with no rows says.
    pub empty: String,
    /// Columns whose floats need more than 3 decimals as text (USD: fractions of a cent).
    pub decimals: Vec<(String, usize)>,
    /// Columns for pipes only (CSV, JSON), left out of the table people read: long hashes.
    pub pipe_only: Vec<String>,
}

impl Table {
    pub fn new(name: &str, title: &str, columns: &[&str]) -> Table {
        Table {
            name: name.to_string(),
            title: title.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            empty: "(nothing yet)".to_string(),
            decimals: Vec::new(),
            pipe_only: Vec::new(),
        }
    }

    /// Decimals of a float column as table or CSV text (default 3).
    fn places(&self, col: usize) -> usize {
        let name = &self.columns[col];
        self.decimals
            .iter()
            .find(|(c, _)| c == name)
            .map_or(3, |(_, n)| *n)
    }

    pub fn push(&mut self, row: Vec<Value>) {
        debug_assert_eq!(row.len(), self.columns.len());
        self.rows.push(row);
    }
}

pub fn render(tables: &[Table], format: Format, out: &mut dyn Write) -> Result<()> {
    for warning in tables.iter().flat_map(|t| &t.warnings) {
        log::warn!("warning: {warning}");
    }
    match format {
        Format::Table => render_tables(tables, out),
        Format::Csv => render_csv(tables, out),
        Format::Json => render_json(tables, out),
        Format::Ids => render_ids(tables, out),
        Format::Html => crate::usage!("--format html is for `llmbatch report` only"),
    }
}

fn render_tables(tables: &[Table], out: &mut dyn Write) -> Result<()> {
    for (i, t) in tables.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(out, "{}", t.title)?;
        if t.rows.is_empty() {
            writeln!(out, "  {}", t.empty)?;
        } else {
            let shown: Vec<bool> = t.columns.iter().map(|c| !t.pipe_only.contains(c)).collect();
            let mut grid = Grid::new();
            grid.load_preset(UTF8_FULL_CONDENSED);
            grid.set_header(
                t.columns
                    .iter()
                    .zip(&shown)
                    .filter(|(_, s)| **s)
                    .map(|(c, _)| Cell::new(c)),
            );
            for row in &t.rows {
                let cells = row.iter().enumerate().filter(|(i, _)| shown[*i]);
                grid.add_row(cells.map(|(i, v)| {
                    let cell = Cell::new(cell_text_to(v, t.places(i)));
                    if v.is_number() {
                        cell.set_alignment(CellAlignment::Right)
                    } else {
                        cell
                    }
                }));
            }
            writeln!(out, "{grid}")?;
        }
        for note in &t.notes {
            writeln!(out, "{note}")?;
        }
    }
    Ok(())
}

/// A value as table or CSV text: floats to 3 decimals, null as empty.
pub fn cell_text(v: &Value) -> String {
    cell_text_to(v, 3)
}

fn cell_text_to(v: &Value, places: usize) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            format!("{f:.places$}")
        }
        other => other.to_string(),
    }
}

/// One CSV block per section; with several, each block is preceded by `# section`.
fn render_csv(tables: &[Table], out: &mut dyn Write) -> Result<()> {
    for (i, t) in tables.iter().enumerate() {
        if tables.len() > 1 {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "# {}", t.name)?;
        }
        csv_rows(t, out, &mut |push| {
            t.rows.iter().try_for_each(|row| push(row))
        })?;
    }
    Ok(())
}

/// Rows handed to the caller's `push`, one at a time.
pub type Rows<'a> = dyn FnMut(&mut dyn FnMut(&[Value]) -> Result<()>) -> Result<()> + 'a;

/// One section as CSV, its header then each row `rows` pushes, written as it comes: a listing
/// too long to hold in memory streams through here.
pub fn csv_rows(t: &Table, out: &mut dyn Write, rows: &mut Rows) -> Result<()> {
    let mut w = csv::Writer::from_writer(&mut *out);
    w.write_record(&t.columns)?;
    rows(&mut |row| {
        let cells = row.iter().enumerate();
        w.write_record(cells.map(|(i, v)| cell_text_to(v, t.places(i))))?;
        Ok(())
    })?;
    w.flush()?;
    Ok(())
}

fn render_json(tables: &[Table], out: &mut dyn Write) -> Result<()> {
    let mut doc = Map::new();
    for t in tables {
        doc.insert(t.name.clone(), rows_json(t));
    }
    serde_json::to_writer_pretty(&mut *out, &Value::Object(doc))?;
    writeln!(out)?;
    Ok(())
}

/// One section as the JSON document `render` writes for it alone, each row `rows` pushes
/// written as it comes: a listing too long to hold in memory streams through here.
pub fn json_rows(t: &Table, out: &mut dyn Write, rows: &mut Rows) -> Result<()> {
    write!(out, "{{\n  {}: [", Value::String(t.name.clone()))?;
    let mut first = true;
    rows(&mut |row| {
        let object: Map<String, Value> =
            t.columns.iter().cloned().zip(row.iter().cloned()).collect();
        let text = serde_json::to_string_pretty(&Value::Object(object))?;
        write!(out, "{}", if first { "\n" } else { ",\n" })?;
        first = false;
        for (i, line) in text.lines().enumerate() {
            write!(out, "{}    {line}", if i > 0 { "\n" } else { "" })?;
        }
        Ok(())
    })?;
    writeln!(out, "{}]\n}}", if first { "" } else { "\n  " })?;
    Ok(())
}

/// A table's rows as JSON objects keyed by column name.
pub fn rows_json(t: &Table) -> Value {
    Value::Array(
        t.rows
            .iter()
            .map(|row| Value::Object(t.columns.iter().cloned().zip(row.iter().cloned()).collect()))
            .collect(),
    )
}

/// Sections whose `id` column is a job id.
const JOB_LISTINGS: [&str; 3] = ["jobs", "running", "reaped"];

/// Only the `id` column of sections that list jobs.
fn render_ids(tables: &[Table], out: &mut dyn Write) -> Result<()> {
    let mut any = false;
    for t in tables
        .iter()
        .filter(|t| JOB_LISTINGS.contains(&t.name.as_str()))
    {
        if let Some(col) = t.columns.iter().position(|c| c == "id") {
            any = true;
            for row in &t.rows {
                writeln!(out, "{}", cell_text(&row[col]))?;
            }
        }
    }
    if !any {
        crate::usage!("--format ids needs a listing of jobs (e.g. `report jobs`)");
    }
    Ok(())
}

/// Seconds with millisecond precision, as a JSON number.
pub fn secs(ms: Option<f64>) -> Value {
    match ms {
        Some(ms) => serde_json::json!(ms.round() / 1000.0),
        None => Value::Null,
    }
}
