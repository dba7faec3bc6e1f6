//! Latency rows from PostgreSQL. Percentiles are `percentile_disc`, which picks the value at
//! position `ceil(p × n)` (at least 1) of the ascending order, computed in double precision:
//! exactly [`crate::db::report::rank`], the nearest rank the SQLite engine picks. The sort happens in the server
//! (in `work_mem`, spilling to disk), so this process holds one row per group.

use anyhow::Result;
use postgres::Client;
use std::collections::BTreeMap;

use super::queue::Params;
use super::report::{attempts_in, group_key, keys};
use crate::db::report::{AttemptScope, GroupKey, LatencyGroup, StreamMetric};

pub fn latency(c: &mut Client, scope: &AttemptScope, by: &[GroupKey]) -> Result<Vec<LatencyGroup>> {
    let (list, order) = keys(by);
    let k = by.len();
    let mut p = Params::default();
    let cond = attempts_in(scope, "a", &mut p);
    // The mean is SUM / COUNT in double precision, the division SQLite's AVG does.
    let sql = format!(
        "SELECT {list}, COUNT(*), SUM(a.duration_ms)::float8 / COUNT(a.duration_ms),
                MAX(a.duration_ms),
                percentile_disc(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY a.duration_ms)
         FROM attempts a WHERE a.outcome = 'ok'{cond}
         GROUP BY {list} ORDER BY {order}"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| {
            let picks: Vec<Option<i64>> = r.get(k + 3);
            let mut p50_95_99_ms = [0; 3];
            for (slot, v) in p50_95_99_ms.iter_mut().zip(picks) {
                *slot = v.unwrap_or(0);
            }
            LatencyGroup {
                key: group_key(r, k),
                n: r.get(k),
                mean_ms: r.get::<_, Option<f64>>(k + 1).unwrap_or(0.0),
                max_ms: r.get::<_, Option<i64>>(k + 2).unwrap_or(0),
                p50_95_99_ms,
            }
        })
        .collect())
}

pub fn metric_percentiles(
    c: &mut Client,
    scope: &AttemptScope,
    by: &[GroupKey],
    metric: StreamMetric,
    ps: &[f64],
) -> Result<BTreeMap<Vec<String>, Vec<f64>>> {
    let col = match metric {
        StreamMetric::Ttft => "ttft_ms",
        StreamMetric::Tpot => "tpot_ms",
    };
    let (list, _) = keys(by);
    let k = by.len();
    let mut p = Params::default();
    let fractions = p.add(ps.to_vec());
    let cond = attempts_in(scope, "a", &mut p);
    let sql = format!(
        "SELECT {list}, percentile_disc({fractions}::float8[]) WITHIN GROUP (ORDER BY a.{col})
         FROM attempts a WHERE a.outcome = 'ok' AND a.{col} IS NOT NULL{cond}
         GROUP BY {list}"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| {
            let picks: Vec<Option<f64>> = r.get(k);
            (
                group_key(r, k),
                picks.into_iter().map(|v| v.unwrap_or(0.0)).collect(),
            )
        })
        .collect())
}

pub fn stream_rates(
    c: &mut Client,
    scope: &AttemptScope,
    by: &[GroupKey],
) -> Result<BTreeMap<Vec<String>, f64>> {
    let (list, _) = keys(by);
    let k = by.len();
    let mut p = Params::default();
    let cond = attempts_in(scope, "a", &mut p);
    let sql = format!(
        "SELECT {list}, AVG(a.output_tokens::float8 * 1000.0::float8 / a.e2e_ms) FROM attempts a
         WHERE a.outcome = 'ok' AND a.ttft_ms IS NOT NULL AND a.output_tokens IS NOT NULL
           AND a.e2e_ms > 0{cond}
         GROUP BY {list}"
    );
    Ok(c.query(&sql, &p.refs())?
        .iter()
        .map(|r| (group_key(r, k), r.get(k)))
        .collect())
}

/// Durations of the model's successful attempts at these 1-based positions of the ascending
/// order: `percentile_disc` at fractions that land on exactly those positions.
pub fn ok_durations_at(
    c: &mut Client,
    scope: &AttemptScope,
    model: &str,
    positions: &[i64],
) -> Result<Vec<i64>> {
    let mut p = Params::default();
    let m = p.add(model.to_string());
    let cond = attempts_in(scope, "a", &mut p);
    let n: i64 = c
        .query_one(
            &format!(
                "SELECT COUNT(*) FROM attempts a WHERE a.model = {m} AND a.outcome = 'ok'{cond}"
            ),
            &p.refs(),
        )?
        .get(0);
    let wanted: Vec<i64> = positions
        .iter()
        .copied()
        .filter(|&pos| pos >= 1 && pos <= n)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    // Row numbers, not fractions: a fraction would have to survive floating point.
    let at = p.add(wanted.clone());
    let sql = format!(
        "SELECT t.rn, t.d FROM (
             SELECT row_number() OVER (ORDER BY a.duration_ms) AS rn, a.duration_ms AS d
             FROM attempts a WHERE a.model = {m} AND a.outcome = 'ok'{cond}) t
         WHERE t.rn = ANY({at}::bigint[])"
    );
    let found: BTreeMap<i64, i64> = c
        .query(&sql, &p.refs())?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(wanted
        .iter()
        .filter_map(|w| found.get(w).copied())
        .collect())
}
