//! Reads on PostgreSQL (`report`, `export`, `models list`): one consistent snapshot of the
//! queue (a read-only REPEATABLE READ transaction) streamed with COPY into an in-memory SQLite
//! database with the SQLite schema, on which the very same report code runs. So every section,
//! every format and the HTML page give the same numbers on both engines by construction, with
//! one percentile definition. The cost: memory in proportion to the rows read (about the size
//! of the data), and a copy before the first line is printed.

use anyhow::{Context, Result};
use postgres::Client;
use rusqlite::Connection;
use std::io::{BufRead, BufReader};

/// The tables copied, parents first.
const TABLES: &[&str] = &[
    "models", "items", "runners", "rubrics", "jobs", "attempts", "grades",
];

pub fn snapshot(client: &mut Client, shown: &str) -> Result<Connection> {
    let mut conn = crate::db::memory()?;
    let mut pg = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    // Ages are computed against this host's clock: carry the database's now along, so a host
    // whose clock is off still shows true ages (see `crate::util::set_clock_offset`).
    let db_now: i64 = pg.query_one("SELECT llmbatch_now_ms()", &[])?.get(0);
    crate::util::set_clock_offset(db_now - crate::util::now_ms());
    let tx = conn.transaction()?;
    for table in TABLES {
        let columns: Vec<String> = tx
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let list = columns.join(", ");
        let marks = vec!["?"; columns.len()].join(", ");
        let mut insert = tx.prepare(&format!("INSERT INTO {table} ({list}) VALUES ({marks})"))?;
        let reader = pg
            .copy_out(&format!("COPY (SELECT {list} FROM {table}) TO STDOUT"))
            .with_context(|| format!("cannot read {table} from {shown}"))?;
        for line in BufReader::new(reader).split(b'\n') {
            let line = line.with_context(|| format!("cannot read {table} from {shown}"))?;
            let fields = copy_fields(&line);
            insert.execute(rusqlite::params_from_iter(
                fields.iter().map(|f| f.as_deref()),
            ))?;
        }
    }
    tx.commit()?;
    pg.commit()?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}

/// The fields of one line of COPY's text format: tab-separated, `\N` for NULL, backslash
/// escapes for tab, newline, carriage return, backslash and the rest.
fn copy_fields(line: &[u8]) -> Vec<Option<String>> {
    line.split(|b| *b == b'\t')
        .map(|raw| {
            if raw == b"\\N" {
                return None;
            }
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                if raw[i] == b'\\' && i + 1 < raw.len() {
                    i += 1;
                    out.push(match raw[i] {
                        b't' => b'\t',
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b'b' => 8,
                        b'f' => 12,
                        b'v' => 11,
                        d @ b'0'..=b'7' => {
                            let mut v = (d - b'0') as u32;
                            let mut n = 1;
                            while n < 3 && i + 1 < raw.len() && (b'0'..=b'7').contains(&raw[i + 1])
                            {
                                i += 1;
                                v = v * 8 + (raw[i] - b'0') as u32;
                                n += 1;
                            }
                            v as u8
                        }
                        other => other,
                    });
                } else {
                    out.push(raw[i]);
                }
                i += 1;
            }
            Some(String::from_utf8_lossy(&out).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::copy_fields;

    #[test]
    fn copy_text_format_round_trips() {
        assert_eq!(
            copy_fields(b"1\t\\N\ta\\tb\\\\c\\nd\t\\101"),
            vec![
                Some("1".to_string()),
                None,
                Some("a\tb\\c\nd".to_string()),
                Some("A".to_string())
            ]
        );
    }
}
