//! `records`: import and add (checked by the CLI into a request, written by whoever holds the
//! store), list and show.

use super::show;
use crate::model::{Record, RecordRef};
use crate::protocol::{Request, UsageError};
use crate::store::Store;
use anyhow::{Context, Result};
use std::path::Path;

/// Reads and checks a records file (JSON lines or CSV) into a request.
pub fn import_request(file: &Path) -> Result<Request> {
    let records = crate::records_io::read_records(file)?;
    Ok(Request::RecordsPut {
        records,
        from: file.display().to_string(),
    })
}

/// Checks one record given on the command line into a request.
pub fn add_request(
    r: &str,
    name: Option<String>,
    emails: Vec<String>,
    owner: Option<String>,
) -> Result<Request> {
    let rref: RecordRef = r.parse().map_err(UsageError)?;
    let line = serde_json::json!({"type": rref.rtype, "key": rref.key, "name": name, "emails": emails, "owner": owner}).to_string();
    let records = crate::records_io::parse_records("(command line)", &line, false)
        .map_err(|e| UsageError(e.message))?;
    Ok(Request::RecordsPut {
        records,
        from: "the command line".into(),
    })
}

/// `records import` and `records add`, once the CLI has read them: every record is checked
/// again (a request may come from any client of the socket), then all are written, or none.
pub(crate) fn put(store: &Store, records: Vec<Record>, from: &str) -> Result<String> {
    let mut checked = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let which = format!("{}:{}", r.rtype, r.key);
        match crate::records_io::check_record(r) {
            Ok(r) => checked.push(r),
            Err(m) => {
                return Err(UsageError(format!(
                    "{from}: record {} ({}): {m}; nothing imported",
                    i + 1,
                    crate::imap::utf7::escape_raw(&which)
                ))
                .into())
            }
        }
    }
    store
        .put_records(&checked)
        .map(|()| format!("imported {} record(s) from {from}\n", checked.len()))
        .context("writing the records")
}

/// `records list [--type T] [--json]`.
pub(crate) fn list(store: &Store, rtype: Option<&str>, json: bool) -> Result<String> {
    let recs = store.records(rtype.map(str::to_ascii_lowercase).as_deref())?;
    if json {
        return Ok(serde_json::to_string_pretty(&recs)? + "\n");
    }
    Ok(show::records_table(&recs))
}

/// `records show TYPE:KEY [--json]`: the record and the activities regarding it.
pub(crate) fn show(store: &Store, r: &str, json: bool) -> Result<String> {
    let rref: RecordRef = r.parse().map_err(UsageError)?;
    let rec: Record = store
        .record(&rref)?
        .ok_or_else(|| UsageError(format!("no record {rref}")))?;
    let acts = store.activities(Some(&rref))?;
    if json {
        let mut v = serde_json::to_value(&rec)?;
        v["activities"] = serde_json::json!(acts.iter().map(|a| a.id).collect::<Vec<_>>());
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    Ok(format!(
        "{}\n  name:   {}\n  emails: {}\n  owner:  {}\n  activities regarding it: {}\n{}",
        rref,
        rec.name,
        rec.emails.join(", "),
        rec.owner.as_deref().unwrap_or("-"),
        acts.len(),
        if acts.is_empty() {
            String::new()
        } else {
            show::activities_table(&acts)
        }
    ))
}
