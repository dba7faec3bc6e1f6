//! `--ids-file FILE|-`: job ids one per line (blank lines and `#` comments allowed), or CSV
//! whose first column is the id, under an optional header naming it `id` or `job_id` — the
//! output of `report jobs --format csv` and `export --format csv`. CSV is read as CSV: a quoted
//! field may span lines (an exported output often does), and only the first field of each
//! record is an id.

use anyhow::{Context, Result};
use std::io::Read;

use crate::usage;

pub fn read(source: &str) -> Result<Vec<i64>> {
    let reader: Box<dyn Read> =
        if source == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(source).map_err(|e| {
                crate::error::UsageError(format!("cannot read ids file {source}: {e}"))
            })?)
        };
    let name = if source == "-" { "stdin" } else { source };
    parse(reader, name)
}

/// Header names accepted for the id column (case-insensitive).
const ID_HEADERS: [&str; 2] = ["id", "job_id"];

fn parse(reader: impl Read, name: &str) -> Result<Vec<i64>> {
    let mut records = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(reader);
    let mut ids = Vec::new();
    let mut first = true;
    let mut record = csv::StringRecord::new();
    loop {
        match records.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                return Err(e).with_context(|| format!("cannot read {name}"))
            }
            Err(e) => usage!("{name}: {e}"),
        }
        let line = record.position().map_or(0, |p| p.line());
        let field = record.get(0).unwrap_or("");
        if record.iter().all(str::is_empty) {
            continue; // a line of blanks
        }
        let header = first && ID_HEADERS.iter().any(|h| field.eq_ignore_ascii_case(h));
        first = false;
        if header {
            continue;
        }
        match field.parse::<i64>() {
            Ok(id) if id > 0 => ids.push(id),
            _ => usage!(
                "{name} line {line}: {field:?} is not a job id (expected one id per line, or CSV whose first column is the id, under an optional header `id` or `job_id`)"
            ),
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_lines_comments_and_csv() {
        let ids = parse("# failed\n\n3\n 5 \n".as_bytes(), "t").unwrap();
        assert_eq!(ids, vec![3, 5]);
        let ids = parse("id,batch,model\n7,b,m\n9,b,m\n".as_bytes(), "t").unwrap();
        assert_eq!(ids, vec![7, 9]);
        let ids = parse("JOB_ID,output\n4,x\n".as_bytes(), "t").unwrap();
        assert_eq!(ids, vec![4]);
        assert!(parse("3\nabc\n".as_bytes(), "t").is_err());
        assert!(parse("name,x\n3,y\n".as_bytes(), "t").is_err());
    }

    #[test]
    fn quoted_fields_span_lines() {
        // An output with an empty line and a line starting with a number inside its quotes.
        let text = "job_id,output\n2,\"first line\n\n12 is not an id\"\n5,plain\n";
        assert_eq!(parse(text.as_bytes(), "t").unwrap(), vec![2, 5]);
    }
}
