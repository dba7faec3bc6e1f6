//! The failed jobs for the page: id, model, batch, item, outcome and an excerpt of the last
//! error, newest first, capped, with the count of the rest.

use anyhow::Result;
use rusqlite::{params_from_iter, Connection};
use serde_json::json;

use super::render::Table;
use super::Query;

/// Characters of the last error shown.
pub const EXCERPT: usize = 160;

pub fn failed_jobs(conn: &Connection, q: &Query, cap: usize) -> Result<Table> {
    let (cond, args) = q.job_sql("j", "updated_at");
    let mut t = Table::new(
        "failed_jobs",
        "Failed jobs",
        &["id", "model", "batch", "item", "outcome", "error"],
    );
    t.empty = "(no failed jobs)".to_string();
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM jobs j WHERE j.state = 'failed'{cond}"),
        params_from_iter(args.clone()),
        |r| r.get(0),
    )?;
    let sql = format!(
        "SELECT j.id, j.model, j.batch, j.item_id, j.last_outcome, j.last_error FROM jobs j
         WHERE j.state = 'failed'{cond} ORDER BY j.updated_at DESC, j.id DESC LIMIT {cap}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let err: Option<String> = r.get(5)?;
        t.push(vec![
            json!(r.get::<_, i64>(0)?),
            json!(r.get::<_, String>(1)?),
            json!(r.get::<_, String>(2)?),
            json!(r.get::<_, String>(3)?),
            json!(r.get::<_, Option<String>>(4)?),
            json!(err.map(|e| excerpt(&e))),
        ]);
    }
    let rest = total - t.rows.len() as i64;
    if rest > 0 {
        t.notes.push(format!(
            "… and {rest} more failed job(s): `llmbatch report jobs --state failed` lists them all."
        ));
    }
    Ok(t)
}

/// The first line-ish of an error, at most [`EXCERPT`] characters.
fn excerpt(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > EXCERPT {
        let cut: String = flat.chars().take(EXCERPT - 1).collect();
        format!("{cut}…")
    } else {
        flat
    }
}
