//! `--ids-file FILE|-`: job ids one per line (blank lines and `#` comments allowed), or CSV
//! whose first column is the id (a header row is skipped).

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read};

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
    parse(BufReader::new(reader), name)
}

fn parse(reader: impl BufRead, name: &str) -> Result<Vec<i64>> {
    let mut ids = Vec::new();
    let mut seen_data = false;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {name}"))?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        let first = text
            .split([',', '\t', ' '])
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        match first.parse::<i64>() {
            Ok(id) if id > 0 => {
                ids.push(id);
                seen_data = true;
            }
            // A header row: the first non-comment line, not a number.
            _ if !seen_data
                && ids.is_empty()
                && !first.is_empty()
                && first.chars().any(|c| c.is_alphabetic()) =>
            {
                seen_data = true;
            }
            _ => usage!("{name} line {}: {first:?} is not a job id", i + 1),
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
        assert!(parse("3\nabc\n".as_bytes(), "t").is_err());
    }
}
