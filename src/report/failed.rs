//! The failed jobs for the page: id, model, batch, item, outcome and an excerpt of the last
//! error, newest first, capped, with the count of the rest.

use anyhow::Result;
use serde_json::json;

use super::render::Table;
use super::Query;
use crate::db::ReportSource;

/// Characters of the last error shown.
pub const EXCERPT: usize = 160;

pub fn failed_jobs(src: &dyn ReportSource, q: &Query, cap: usize) -> Result<Table> {
    let mut t = Table::new(
        "failed_jobs",
        "Failed jobs",
        &["id", "model", "batch", "item", "outcome", "error"],
    );
    t.empty = "(no failed jobs)".to_string();
    let (total, jobs) = src.failed_jobs(&q.scope(), cap)?;
    for j in jobs {
        t.push(vec![
            json!(j.id),
            json!(j.model),
            json!(j.batch),
            json!(j.item_id),
            json!(j.outcome),
            json!(j.error.map(|e| excerpt(&e))),
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
