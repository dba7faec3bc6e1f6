//! Failure counts and job listings from SQLite.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeMap;

use crate::db::report::{AttemptScope, GroupKey, JobRow, OutcomeCounts};
use crate::domain::{JobState, Outcome};

/// The first `k` columns of a row: the group it belongs to.
fn group_key(r: &rusqlite::Row, k: usize) -> rusqlite::Result<Vec<String>> {
    (0..k).map(|i| r.get::<_, String>(i)).collect()
}

/// Per group: attempts per outcome, and answers cut at the length limit. By model: one
/// COUNT per (model, outcome) range of the latency index; truncated answers from their own
/// partial index: no attempt row (nor its timings JSON) is read.
pub fn outcome_counts(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<Vec<OutcomeCounts>> {
    let k = by.len();
    let key_list = by.iter().map(|c| c.expr()).collect::<Vec<_>>().join(", ");
    let (cond, args) = scope.sql("a");
    let by_model = by == [GroupKey::Model];
    // Per group: count per outcome (index of Outcome::ALL), truncated.
    let mut groups: BTreeMap<Vec<String>, ([i64; Outcome::ALL.len()], i64)> = BTreeMap::new();
    if by_model {
        // By model: one COUNT per (model, outcome) range of the latency index.
        let sql =
            format!("SELECT COUNT(*) FROM attempts a WHERE a.model = ? AND a.outcome = ?{cond}");
        let mut count = conn.prepare(&sql)?;
        for model in super::report::skip_scan(conn, "attempts", "")? {
            for (i, o) in Outcome::ALL.iter().enumerate() {
                let mut all = vec![
                    SqlValue::Text(model.clone()),
                    SqlValue::Text(o.as_str().to_string()),
                ];
                all.extend(args.iter().cloned());
                let n: i64 = count.query_row(params_from_iter(all), |r| r.get(0))?;
                if n > 0 {
                    groups.entry(vec![model.clone()]).or_default().0[i] += n;
                }
            }
        }
    }
    if !by_model {
        let sql = format!(
            "SELECT {key_list}, a.outcome, COUNT(*) FROM attempts a
             WHERE a.outcome IS NOT NULL{cond} GROUP BY {key_list}, a.outcome"
        );
        let mut stmt = conn.prepare(&sql)?;
        let mut rows = stmt.query(params_from_iter(args.clone()))?;
        while let Some(r) = rows.next()? {
            let key = group_key(r, k)?;
            let outcome: String = r.get(k)?;
            let n: i64 = r.get(k + 1)?;
            if let Some(i) = Outcome::ALL.iter().position(|o| o.as_str() == outcome) {
                groups.entry(key).or_default().0[i] += n;
            }
        }
    }
    let sql = format!(
        "SELECT {key_list}, COUNT(*) FROM attempts a
         WHERE json_extract(a.timings, '$.done_reason') = 'length'{cond} GROUP BY {key_list}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        let key = group_key(r, k)?;
        groups.entry(key).or_default().1 = r.get(k)?;
    }
    Ok(groups
        .into_iter()
        .map(|(key, (counts, truncated))| OutcomeCounts {
            key,
            counts,
            truncated,
        })
        .collect())
}

/// Jobs in scope (updated since `since_ms`), in a state, last ended so; by id.
pub fn each_job(
    conn: &Connection,
    scope: &AttemptScope,
    state: Option<JobState>,
    outcome: Option<Outcome>,
    each: &mut dyn FnMut(JobRow) -> Result<()>,
) -> Result<()> {
    let (mut cond, mut args) = scope.filter.sql("j");
    if let Some(s) = state {
        cond.push_str(" AND j.state = ?");
        args.push(SqlValue::Text(s.as_str().to_string()));
    }
    if let Some(o) = outcome {
        cond.push_str(" AND j.last_outcome = ?");
        args.push(SqlValue::Text(o.as_str().to_string()));
    }
    if let Some(since) = scope.since_ms {
        cond.push_str(" AND j.updated_at >= ?");
        args.push(SqlValue::Integer(since));
    }
    let sql = format!(
        "SELECT j.id, j.batch, j.item_id, j.model, j.kind, j.state, j.attempts, j.last_outcome,
                j.last_error, j.updated_at, j.repeat, a.cache_key, a.cached_from
         FROM jobs j LEFT JOIN attempts a ON a.id = j.attempt_id
         WHERE 1 = 1{cond} ORDER BY j.id"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args), |r| {
        Ok(JobRow {
            id: r.get(0)?,
            batch: r.get(1)?,
            item_id: r.get(2)?,
            model: r.get(3)?,
            kind: r.get(4)?,
            state: r.get(5)?,
            attempts: r.get(6)?,
            last_outcome: r.get(7)?,
            last_error: r.get(8)?,
            updated_at: r.get(9)?,
            repeat: r.get(10)?,
            cache_key: r.get(11)?,
            cached_from: r.get(12)?,
        })
    })?;
    for row in rows {
        each(row?)?;
    }
    Ok(())
}
