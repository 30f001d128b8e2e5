//! Importing CRM records from JSON lines or CSV.
//!
//! The whole file is checked before anything is written: one bad line means nothing is
//! imported, and the error names the file, the line and what to change.

use crate::model::{Record, RecordRef};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub(crate) struct ImportError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    #[serde(rename = "type")]
    rtype: String,
    key: String,
    name: Option<String>,
    #[serde(default)]
    emails: Vec<String>,
    owner: Option<String>,
    #[serde(default)]
    shared: bool,
    #[serde(default)]
    teams: Vec<String>,
}

/// Reads and checks every record of `path` (`.csv` is CSV with header `type,key,name,emails,owner`,
/// anything else JSON lines).
pub(crate) fn read_records(path: &Path) -> Result<Vec<Record>, ImportError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ImportError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    parse_records(&file, &text, is_csv)
}

/// Checks `text` as the content of `file`.
pub(crate) fn parse_records(
    file: &str,
    text: &str,
    is_csv: bool,
) -> Result<Vec<Record>, ImportError> {
    let err = |line: usize, message: String| ImportError {
        file: file.to_string(),
        line,
        message,
    };
    let mut out: Vec<(usize, Record)> = Vec::new();
    if is_csv {
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(text.as_bytes());
        let headers = rdr
            .headers()
            .map_err(|e| err(1, format!("bad CSV header: {e}")))?
            .clone();
        let want = ["type", "key", "name", "emails", "owner"];
        let long = ["type", "key", "name", "emails", "owner", "shared", "teams"];
        let got: Vec<&str> = headers.iter().map(str::trim).collect();
        if got != want && got != long {
            return Err(err(
                1,
                format!(
                    "the header must be `{}` (got `{}`)",
                    want.join(","),
                    got.join(",")
                ),
            ));
        }
        for row in rdr.records() {
            let row = row.map_err(|e| {
                err(
                    e.position().map_or(0, |p| p.line() as usize),
                    format!("bad CSV row: {e}"),
                )
            })?;
            let line = row.position().map_or(0, |p| p.line() as usize);
            // `records export` put a `'` before cells a spreadsheet would run: take it off.
            let f = |i: usize| {
                row.get(i)
                    .map(|c| crate::export::restore(c).trim())
                    .unwrap_or_default()
                    .to_string()
            };
            let emails = f(3)
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let owner = Some(f(4)).filter(|s| !s.is_empty());
            let name = Some(f(2)).filter(|s| !s.is_empty());
            let shared = match f(5).to_ascii_lowercase().as_str() {
                "" | "false" | "no" | "0" => false,
                "true" | "yes" | "1" => true,
                other => {
                    return Err(err(
                        line,
                        format!("shared must be true or false (got `{other}`)"),
                    ))
                }
            };
            let teams = f(6)
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let mut rec = check(line, f(0), f(1), name, emails, owner).map_err(|m| err(line, m))?;
            rec.shared = shared;
            rec.teams = teams;
            out.push((line, rec));
        }
    } else {
        for (i, l) in text.lines().enumerate() {
            let line = i + 1;
            if l.trim().is_empty() || l.trim_start().starts_with("//") {
                continue;
            }
            let j: JsonRecord = serde_json::from_str(l).map_err(|e| {
                err(line, format!("not a record: {e} (each line is one JSON object: {{\"type\",\"key\",\"name\",\"emails\":[..],\"owner\"}})"))
            })?;
            let mut rec =
                check(line, j.rtype, j.key, j.name, j.emails, j.owner).map_err(|m| err(line, m))?;
            rec.shared = j.shared;
            rec.teams = j
                .teams
                .into_iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect();
            out.push((line, rec));
        }
    }
    for (i, (line, r)) in out.iter().enumerate() {
        if let Some((first, _)) = out[..i]
            .iter()
            .find(|(_, o)| o.rtype == r.rtype && o.key == r.key)
        {
            return Err(err(
                *line,
                format!(
                    "{}:{} appears twice (first on line {first}); keep one",
                    r.rtype, r.key
                ),
            ));
        }
    }
    Ok(out.into_iter().map(|(_, r)| r).collect())
}

/// Checks a record that arrived whole (over the control socket) as `records add` and
/// `records import` check theirs: type and key, email addresses, owner; names and teams
/// trimmed. The control socket is the agent's way in, so it trusts no more than the CLI does.
///
/// # Errors
/// What is wrong with it, as `records import` would say.
pub(crate) fn check_record(r: Record) -> Result<Record, String> {
    let Record {
        rtype,
        key,
        name,
        emails,
        owner,
        shared,
        teams,
    } = r;
    let mut rec = check(0, rtype, key, Some(name), emails, owner)?;
    rec.shared = shared;
    rec.teams = teams
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    Ok(rec)
}

fn check(
    _line: usize,
    rtype: String,
    key: String,
    name: Option<String>,
    emails: Vec<String>,
    owner: Option<String>,
) -> Result<Record, String> {
    let rref: RecordRef = format!("{rtype}:{key}").parse()?;
    let mut clean = Vec::new();
    for e in emails {
        let e = e.trim().to_ascii_lowercase();
        let ok = e
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') || d == "localhost")
            && !e.contains(char::is_whitespace);
        if !ok {
            return Err(format!("`{e}` is not an email address (write user@domain; separate several with `;` in CSV)"));
        }
        if !clean.contains(&e) {
            clean.push(e);
        }
    }
    let owner = match owner {
        None => None,
        Some(o) if o.contains(':') => {
            let r: RecordRef = o.parse()?;
            if r.rtype != "systemuser" {
                return Err(format!("owner `{o}` must be a user (systemuser:KEY)"));
            }
            Some(r.to_string())
        }
        Some(o) => Some(format!("systemuser:{o}")),
    };
    Ok(Record {
        name: name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| rref.key.clone()),
        rtype: rref.rtype,
        key: rref.key,
        emails: clean,
        owner,
        shared: false,
        teams: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{neutralise, records, restore, Format};
    use crate::store::Store;

    #[test]
    fn csv_and_jsonl_import_and_errors_name_the_line() {
        let csv = "type,key,name,emails,owner\naccount,acme,Acme Corp,sales@acme.com;info@acme.com,alice\ncontact,bob,Bob,bob@acme.com,\n";
        let r = parse_records("r.csv", csv, true).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].emails, vec!["sales@acme.com", "info@acme.com"]);
        assert_eq!(r[0].owner.as_deref(), Some("systemuser:alice"));
        let bad = "{\"type\":\"contact\",\"key\":\"a\",\"emails\":[\"a@b.com\"]}\n{\"type\":\"contact\",\"key\":\"b\",\"emails\":[\"nope\"]}\n";
        let e = parse_records("r.jsonl", bad, false).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string()
                .starts_with("r.jsonl:2: `nope` is not an email"),
            "{e}"
        );
        let dup = "{\"type\":\"contact\",\"key\":\"a\"}\n{\"type\":\"contact\",\"key\":\"a\"}\n";
        assert_eq!(parse_records("d", dup, false).unwrap_err().line, 2);
        let e = parse_records("h.csv", "type,key\nx,y\n", true).unwrap_err();
        assert_eq!(e.line, 1);
    }

    /// A spreadsheet runs a cell that starts with `=`, `+`, `-` or `@` as a formula (OWASP "CSV
    /// injection"): such cells get a `'` in front, and `records import` takes exactly that `'`
    /// off again, so records round-trip.
    #[test]
    fn csv_cells_that_spreadsheets_would_run_are_neutralised_and_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let rec = |key: &str, name: &str| Record {
            rtype: "account".into(),
            key: key.into(),
            name: name.into(),
            emails: vec![],
            owner: None,
            shared: false,
            teams: vec![],
        };
        let names = [
            "=HYPERLINK(\"http://evil.example\",\"x\")",
            "+1 555 0100",
            "-5 %",
            "@SUM(A1)",
            "'=already quoted",
            "''+twice",
            "'plain quote",
            "Acme",
        ];
        let recs: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, n)| rec(&format!("k{i}"), n))
            .collect();
        store.put_records(&recs).unwrap();
        let mut out = Vec::new();
        records(&store, None, Format::Csv, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut rdr = csv::Reader::from_reader(text.as_bytes());
        let cells: Vec<String> = rdr.records().map(|r| r.unwrap()[2].to_string()).collect();
        assert_eq!(
            cells,
            [
                "'=HYPERLINK(\"http://evil.example\",\"x\")",
                "'+1 555 0100",
                "'-5 %",
                "'@SUM(A1)",
                "''=already quoted",
                "'''+twice",
                "'plain quote",
                "Acme",
            ]
        );
        let back = parse_records("r.csv", &text, true).unwrap();
        assert_eq!(back, recs, "records import reads back what was exported");
        for (cell, safe) in [("\tx", "'\tx"), ("\rx", "'\rx"), ("", ""), ("a=b", "a=b")] {
            assert_eq!(neutralise(cell), safe);
            assert_eq!(restore(&neutralise(cell)), cell);
        }
    }
}
