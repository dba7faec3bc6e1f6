//! Latency rows from SQLite: by model (the default) each percentile is one OFFSET step on the
//! (model, outcome, duration_ms, …) index; other groupings count, then stream in order.

use anyhow::Result;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};
use std::collections::BTreeMap;

use crate::db::report::{rank, AttemptScope, GroupKey, LatencyGroup, StreamMetric};

/// The first `k` columns of a row: the group it belongs to.
fn group_key(r: &rusqlite::Row, k: usize) -> rusqlite::Result<Vec<String>> {
    (0..k).map(|i| r.get::<_, String>(i)).collect()
}

/// Per group: the number of `ok` attempts, their mean and their maximum (ms).
type Counts = BTreeMap<Vec<String>, (i64, f64, i64)>;
/// Per group: p50, p95 and p99 (ms).
type Picks = BTreeMap<Vec<String>, [i64; 3]>;

/// Per group, over `ok` attempts: n, nearest-rank p50/p95/p99, max and mean (ms).
/// Two passes (counts, then one ordered stream) keep memory flat in the number of attempts.
pub fn latency(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<Vec<LatencyGroup>> {
    let keys: Vec<&str> = by.iter().map(|k| k.expr()).collect();
    let key_list = keys.join(", ");
    let (cond, args) = scope.sql("a");
    let by_model = keys == ["model"];
    let groups = if by_model {
        counts_by_model(conn, &cond, &args)?
    } else {
        counts_grouped(conn, &cond, &args, &key_list, keys.len())?
    };
    let picks = if by_model {
        picks_by_model(conn, &cond, &args, &groups)?
    } else {
        picks_streamed(conn, &cond, args, &key_list, keys.len(), &groups)?
    };
    Ok(groups
        .into_iter()
        .map(|(key, (n, mean_ms, max_ms))| LatencyGroup {
            p50_95_99_ms: picks.get(&key).copied().unwrap_or([0; 3]),
            key,
            n,
            mean_ms,
            max_ms,
        })
        .collect())
}

/// One aggregate per model range of the index beats one GROUP BY over all of it.
fn counts_by_model(conn: &Connection, cond: &str, args: &[SqlValue]) -> Result<Counts> {
    let sql = format!(
        "SELECT COUNT(*), AVG(duration_ms), MAX(duration_ms) FROM attempts a
         WHERE a.model = ? AND a.outcome = 'ok'{cond}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut groups = Counts::new();
    for model in super::report::skip_scan(conn, "attempts", "")? {
        let mut all = vec![SqlValue::Text(model.clone())];
        all.extend(args.iter().cloned());
        let (n, mean, max): (i64, Option<f64>, Option<i64>) = stmt
            .query_row(params_from_iter(all), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        if n > 0 {
            groups.insert(vec![model], (n, mean.unwrap_or(0.0), max.unwrap_or(0)));
        }
    }
    Ok(groups)
}

/// The counts of any other grouping: one GROUP BY.
fn counts_grouped(
    conn: &Connection,
    cond: &str,
    args: &[SqlValue],
    key_list: &str,
    k: usize,
) -> Result<Counts> {
    let counts_sql = format!(
        "SELECT {key_list}, COUNT(*), AVG(duration_ms), MAX(duration_ms) FROM attempts a
         WHERE a.outcome = 'ok'{cond} GROUP BY {key_list} ORDER BY {key_list}"
    );
    let mut stmt = conn.prepare(&counts_sql)?;
    let mut rows = stmt.query(params_from_iter(args.iter().cloned()))?;
    let mut groups = Counts::new();
    while let Some(r) = rows.next()? {
        let key = group_key(r, k)?;
        groups.insert(key, (r.get(k)?, r.get(k + 1)?, r.get(k + 2)?));
    }
    Ok(groups)
}

/// By model (the default): the (model, outcome, duration_ms, …) index is in order, so each
/// percentile is one OFFSET step inside SQLite — p95/p99 counted from the top.
fn picks_by_model(
    conn: &Connection,
    cond: &str,
    args: &[SqlValue],
    groups: &Counts,
) -> Result<Picks> {
    let sql = format!(
        "SELECT duration_ms FROM attempts a WHERE a.model = ? AND a.outcome = 'ok'{cond}
         ORDER BY duration_ms LIMIT 1 OFFSET ?"
    );
    let sql_desc = sql.replace("ORDER BY duration_ms", "ORDER BY duration_ms DESC");
    let mut up = conn.prepare(&sql)?;
    let mut down = conn.prepare(&sql_desc)?;
    let mut picks = Picks::new();
    for (key, (n, _, _)) in groups {
        let mut entry = [0; 3];
        for (slot, p) in [0.50, 0.95, 0.99].iter().enumerate() {
            let r = rank(*p, *n);
            let (stmt, offset) = if r * 2 <= *n {
                (&mut up, r - 1)
            } else {
                (&mut down, n - r)
            };
            let mut all = vec![SqlValue::Text(key[0].clone())];
            all.extend(args.iter().cloned());
            all.push(SqlValue::Integer(offset));
            entry[slot] = stmt.query_row(params_from_iter(all), |r| r.get(0))?;
        }
        picks.insert(key.clone(), entry);
    }
    Ok(picks)
}

/// Any other grouping: one ordered stream, each percentile picked at its rank in its group.
fn picks_streamed(
    conn: &Connection,
    cond: &str,
    args: Vec<SqlValue>,
    key_list: &str,
    k: usize,
    groups: &Counts,
) -> Result<Picks> {
    let stream_sql = format!(
        "SELECT {key_list}, duration_ms FROM attempts a WHERE a.outcome = 'ok'{cond}
         ORDER BY {key_list}, duration_ms"
    );
    let mut stmt = conn.prepare(&stream_sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut picks = Picks::new();
    each_ranked(&mut rows, k, |key, i, r| {
        let d: i64 = r.get(k)?;
        let n = groups.get(&key).map(|g| g.0).unwrap_or(0);
        let entry = picks.entry(key).or_insert([0; 3]);
        for (slot, p) in [0.50, 0.95, 0.99].iter().enumerate() {
            if i == rank(*p, n) {
                entry[slot] = d;
            }
        }
        Ok(())
    })?;
    Ok(picks)
}

/// Walks rows ordered by their group key (the first `k` columns), giving each its key and its
/// 1-based rank within its group.
fn each_ranked(
    rows: &mut rusqlite::Rows,
    k: usize,
    mut each: impl FnMut(Vec<String>, i64, &rusqlite::Row) -> Result<()>,
) -> Result<()> {
    let mut current: Option<Vec<String>> = None;
    let mut i = 0i64;
    while let Some(r) = rows.next()? {
        let key = group_key(r, k)?;
        if current.as_ref() != Some(&key) {
            current = Some(key.clone());
            i = 0;
        }
        i += 1;
        each(key, i, r)?;
    }
    Ok(())
}

/// Nearest-rank percentiles `ps` of a streaming metric column (ms) per group, over `ok`
/// attempts that have it. One count, then one ordered pass (from the partial index by model):
/// memory stays flat in the number of attempts.
pub fn metric_percentiles(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
    metric: StreamMetric,
    ps: &[f64],
) -> Result<BTreeMap<Vec<String>, Vec<f64>>> {
    let col = match metric {
        StreamMetric::Ttft => "ttft_ms",
        StreamMetric::Tpot => "tpot_ms",
    };
    let k = by.len();
    let key_list = by.iter().map(|c| c.expr()).collect::<Vec<_>>().join(", ");
    let (cond, args) = scope.sql("a");
    let filter = format!("a.outcome = 'ok' AND a.{col} IS NOT NULL{cond}");
    let mut counts: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    let sql =
        format!("SELECT {key_list}, COUNT(*) FROM attempts a WHERE {filter} GROUP BY {key_list}");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args.clone()))?;
    while let Some(r) = rows.next()? {
        counts.insert(group_key(r, k)?, r.get(k)?);
    }
    let mut out: BTreeMap<Vec<String>, Vec<f64>> = BTreeMap::new();
    if counts.is_empty() {
        return Ok(out);
    }
    let sql = format!(
        "SELECT {key_list}, a.{col} FROM attempts a WHERE {filter} ORDER BY {key_list}, a.{col}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    each_ranked(&mut rows, k, |key, i, r| {
        let n = counts.get(&key).copied().unwrap_or(0);
        let v: f64 = r.get(k)?;
        let entry = out.entry(key).or_insert_with(|| vec![0.0; ps.len()]);
        for (slot, p) in ps.iter().enumerate() {
            if i == rank(*p, n) {
                entry[slot] = v;
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Per group: the mean of output tokens / e2e over streamed successful attempts.
pub fn stream_rates(
    conn: &Connection,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<BTreeMap<Vec<String>, f64>> {
    let k = by.len();
    let key_list = by.iter().map(|c| c.expr()).collect::<Vec<_>>().join(", ");
    let (cond, args) = scope.sql("a");
    let sql = format!(
        "SELECT {key_list}, AVG(a.output_tokens * 1000.0 / a.e2e_ms) FROM attempts a
         WHERE a.outcome = 'ok' AND a.ttft_ms IS NOT NULL AND a.output_tokens IS NOT NULL
           AND a.e2e_ms > 0{cond}
         GROUP BY {key_list}"
    );
    let mut out = BTreeMap::new();
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    while let Some(r) = rows.next()? {
        out.insert(group_key(r, k)?, r.get(k)?);
    }
    Ok(out)
}
