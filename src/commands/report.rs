//! `report`: the sections asked for (status, latency, failures and the leaderboard by default),
//! each computed once; or, with `--format html`, one page of all of them.

use anyhow::Result;
use std::io::Write;

use crate::cli::{Format, ReportArgs, Section};
use crate::db::{ReportSource, Store};
use crate::report::data::Sections;
use crate::report::{
    breakdown, consistency, cost, models, page, render, sections, throughput, Query,
};
use crate::util::now_ms;

pub fn run(a: &ReportArgs, db: &dyn Store) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, db)?;
    let q = Query {
        filter,
        since_ms: a.since.map(|d| now_ms() - d.as_millis() as i64),
        by: a.by.iter().map(|&k| k.into()).collect(),
    };
    if a.format == Format::Html {
        let sections = Sections::new(db, &q);
        page::write(&sections, &mut std::io::stdout().lock())?;
        return Ok(0);
    }
    let wanted = if a.sections.is_empty() && a.format == Format::Ids {
        vec![Section::Jobs]
    } else if a.sections.is_empty() {
        let mut default = vec![
            Section::Status,
            Section::Latency,
            Section::Failures,
            Section::Models,
        ];
        if cost::any_priced(db)? {
            default.push(Section::Cost);
        }
        default
    } else {
        a.sections.clone()
    };
    if a.format == Format::Ids {
        return ids(a, db, &q, &wanted);
    }
    if matches!(a.format, Format::Csv | Format::Json) && wanted == [Section::Jobs] {
        // A listing of the whole queue is written as it is read, never held.
        let listing = sections::JobListing::new(db, a.state.as_deref(), a.outcome.map(|o| o.0))?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let mut rows = |push: &mut dyn FnMut(&[serde_json::Value]) -> Result<()>| {
            listing.each(db, &q, &mut |row| push(&row))
        };
        let header = sections::jobs_header();
        match a.format {
            Format::Csv => render::csv_rows(&header, &mut out, &mut rows)?,
            _ => render::json_rows(&header, &mut out, &mut rows)?,
        }
        out.flush()?;
        return Ok(0);
    }
    // Each section is computed once, however many others (the leaderboard) read it.
    let s = Sections::new(db, &q);
    let mut tables = Vec::new();
    for section in wanted {
        match section {
            Section::Status => tables.extend(s.status()?.iter().cloned()),
            Section::Latency => {
                tables.push(s.latency()?.clone());
                if a.breakdown {
                    tables.push(breakdown::breakdown(db, &q)?);
                }
            }
            Section::Failures => tables.push(s.failures()?.clone()),
            Section::Jobs => tables.push(sections::jobs(
                db,
                &q,
                a.state.as_deref(),
                a.outcome.map(|o| o.0),
            )?),
            Section::Runners => tables.push(sections::runners(db, &q)?),
            Section::Timeouts => tables.push(s.timeouts()?.clone()),
            Section::Throughput => tables.push(throughput::throughput(db, &q)?),
            Section::Grades => tables.extend(s.grades()?.iter().cloned()),
            Section::Models => tables.push(models::leaderboard(&s)?.table()),
            Section::Consistency => tables.push(consistency::consistency(db, &q)?),
            Section::Cost => tables.push(cost::cost(db, &q)?),
        }
    }
    render::render(&tables, a.format, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `--format ids`: the ids of the jobs behind a section, for `| llmbatch resume --ids-file -`.
/// `jobs` lists what its filters select; `failures` the failed jobs (of `--outcome`, if given).
/// Written as they are read: the listing may be the whole queue.
fn ids(a: &ReportArgs, src: &dyn ReportSource, q: &Query, wanted: &[Section]) -> Result<u8> {
    let mut listings = Vec::new();
    for section in wanted {
        let state = match section {
            Section::Jobs => a.state.as_deref(),
            Section::Failures => Some(a.state.as_deref().unwrap_or("failed")),
            other => crate::usage!(
                "--format ids lists jobs: use it with `report jobs` or `report failures`, not {other:?}"
            ),
        };
        listings.push(sections::JobListing::new(
            src,
            state,
            a.outcome.map(|o| o.0),
        )?);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for listing in listings {
        listing.each(src, q, &mut |row| {
            writeln!(out, "{}", render::cell_text(&row[0]))?;
            Ok(())
        })?;
    }
    out.flush()?;
    Ok(0)
}
