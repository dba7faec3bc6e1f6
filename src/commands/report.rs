//! `report`: the sections asked for (status, latency and failures by default), rendered once.

use anyhow::Result;
use rusqlite::Connection;

use crate::cli::{ReportArgs, Section};
use crate::report::{breakdown, render, sections, throughput, timeouts, Query};
use crate::util::now_ms;

pub fn run(a: &ReportArgs, conn: &mut Connection) -> Result<u8> {
    let filter = super::scope_filter(&a.scope, conn)?;
    let q = Query {
        filter,
        since_ms: a.since.map(|d| now_ms() - d.as_millis() as i64),
        by: a.by.clone(),
    };
    let wanted = if a.sections.is_empty() {
        vec![Section::Status, Section::Latency, Section::Failures]
    } else {
        a.sections.clone()
    };
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
            Section::Grades => {
                crate::usage!("report {section:?} is not available yet")
            }
        }
    }
    render::render(&tables, a.format, &mut std::io::stdout().lock())?;
    Ok(0)
}
