//! `report`: the sections asked for (status, latency and failures by default), rendered once.

use anyhow::Result;
use rusqlite::Connection;

use crate::cli::{Format, ReportArgs, Section};
use crate::report::{breakdown, cost, grades, render, sections, throughput, timeouts, Query};
use crate::util::now_ms;

pub fn run(a: &ReportArgs, conn: &mut Connection) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, conn)?;
    let q = Query {
        filter,
        since_ms: a.since.map(|d| now_ms() - d.as_millis() as i64),
        by: a.by.clone(),
    };
    let wanted = if a.sections.is_empty() && a.format == Format::Ids {
        vec![Section::Jobs]
    } else if a.sections.is_empty() {
        let mut default = vec![Section::Status, Section::Latency, Section::Failures];
        if cost::any_priced(conn)? {
            default.push(Section::Cost);
        }
        default
    } else {
        a.sections.clone()
    };
    if a.format == Format::Ids {
        return ids(a, conn, &q, &wanted);
    }
    let mut tables = Vec::new();
    for section in wanted {
        match section {
            Section::Status => tables.extend(sections::status(conn, &q)?),
            Section::Latency => {
                tables.push(sections::latency(conn, &q)?);
                if a.breakdown {
                    tables.push(breakdown::breakdown(conn, &q)?);
                }
            }
            Section::Failures => tables.push(sections::failures(conn, &q)?),
            Section::Jobs => tables.push(sections::jobs(conn, &q, a.state.as_deref(), a.outcome)?),
            Section::Runners => tables.push(sections::runners(conn, &q)?),
            Section::Timeouts => tables.push(timeouts::timeouts(conn, &q)?),
            Section::Throughput => tables.push(throughput::throughput(conn, &q)?),
            Section::Grades => tables.extend(grades::tables(conn, &q)?),
            Section::Cost => tables.push(cost::cost(conn, &q)?),
        }
    }
    render::render(&tables, a.format, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `--format ids`: the ids of the jobs behind a section, for `| llmbatch resume --ids-file -`.
/// `jobs` lists what its filters select; `failures` the failed jobs (of `--outcome`, if given).
fn ids(a: &ReportArgs, conn: &Connection, q: &Query, wanted: &[Section]) -> Result<u8> {
    let mut tables = Vec::new();
    for section in wanted {
        match section {
            Section::Jobs => {
                tables.push(sections::jobs(conn, q, a.state.as_deref(), a.outcome)?)
            }
            Section::Failures => tables.push(sections::jobs(
                conn,
                q,
                Some(a.state.as_deref().unwrap_or("failed")),
                a.outcome,
            )?),
            other => crate::usage!(
                "--format ids lists jobs: use it with `report jobs` or `report failures`, not {other:?}"
            ),
        }
    }
    render::render(&tables, Format::Ids, &mut std::io::stdout().lock())?;
    Ok(0)
}
