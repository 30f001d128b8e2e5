//! `activities export` and `records export`: the store as JSON lines or CSV, so its data can go
//! to a real CRM (or a spreadsheet).
//!
//! Rows are read from sled one at a time and written as they are read, so exporting a store of
//! millions of activities needs no more memory than one activity. Records are written in
//! exactly the shape `records import` reads (same JSON keys, same CSV header), so an export can
//! be imported elsewhere as it is.

use crate::model::{Activity, Party, RecordRef};
use crate::store::Store;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    #[default]
    Jsonl,
    /// RFC 4180 CSV with a header row; lists are joined with `;`; cells a spreadsheet would run
    /// as a formula get a `'` in front (`neutralise`).
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" | "json" | "ndjson" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            o => Err(format!("unknown format `{o}`: use jsonl or csv")),
        }
    }
}

/// Which activities to export.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ActivityFilter {
    /// Only activities tracked at or after this time (`YYYY-MM-DD` or RFC 3339): an
    /// incremental export picks up where the last one stopped.
    pub since: Option<String>,
    /// Only activities regarding this record (`type:key`).
    pub regarding: Option<String>,
    /// Each activity with its audit trail (`history`, oldest first; in CSV a last column
    /// holding it as a JSON array).
    #[serde(default)]
    pub history: bool,
}

/// A filter the caller got wrong (a bad `--since` or `--regarding`): a usage mistake, exit
/// code 2, like the CLI's own (see `protocol::exit_code`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FilterError(pub String);

/// The CSV columns of `activities export --format csv`, in order.
pub const ACTIVITY_COLUMNS: [&str; 23] = [
    "id",
    "tracked_at",
    "date",
    "direction",
    "subject",
    "from",
    "to",
    "cc",
    "bcc",
    "regarding",
    "message_id",
    "in_reply_to",
    "mailbox",
    "folder",
    "uidvalidity",
    "uid",
    "attachments",
    "correlation",
    "body_text",
    "read",
    "follow_up",
    "importance",
    "categories",
];

/// The CSV header of `records export` (the long form `records import` reads).
pub(crate) const RECORD_COLUMNS: [&str; 7] =
    ["type", "key", "name", "emails", "owner", "shared", "teams"];

/// Checks `--since` (`YYYY-MM-DD`, or RFC 3339 with a time): seconds since the epoch.
pub(crate) fn check_since(s: &str) -> Result<i64, String> {
    crate::time::try_parse_date(s).map_err(|e| format!("--since: {e}"))
}

fn addresses(ps: &[Party]) -> String {
    ps.iter()
        .filter_map(|p| p.address.clone())
        .collect::<Vec<_>>()
        .join(";")
}

fn activity_row(a: &Activity, f: &crate::model::Fields) -> Vec<String> {
    vec![
        a.id.to_string(),
        a.tracked_at.clone(),
        a.date.clone().unwrap_or_default(),
        a.direction.as_str().to_string(),
        a.subject.clone().unwrap_or_default(),
        a.from
            .as_ref()
            .and_then(|p| p.address.clone())
            .unwrap_or_default(),
        addresses(&a.to),
        addresses(&a.cc),
        addresses(&a.bcc),
        a.regarding.clone().unwrap_or_default(),
        a.message_id.clone().unwrap_or_default(),
        a.in_reply_to.clone().unwrap_or_default(),
        a.source.mailbox.clone(),
        a.source.folder.clone(),
        a.source.uidvalidity.to_string(),
        a.source.uid.to_string(),
        a.attachments
            .iter()
            .map(|x| x.name.clone().unwrap_or_else(|| x.sha256.clone()))
            .collect::<Vec<_>>()
            .join(";"),
        a.correlation
            .as_ref()
            .map(|c| format!("{}:{}", c.method, c.activity))
            .unwrap_or_default(),
        a.body_text.clone(),
        f.read.to_string(),
        f.follow_up.to_string(),
        f.importance.to_string(),
        f.categories.join(";"),
    ]
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection"); tab
/// and CR because some spreadsheets drop them and read what follows.
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// A CSV cell made safe to open in a spreadsheet: a cell that starts with `=`, `+`, `-`, `@`,
/// tab or CR, possibly after some `'`, gets one more `'` in front. Mail subjects, names and
/// bodies come from anyone who can send mail; without this a subject `=HYPERLINK(...)` runs in
/// the CRM admin's spreadsheet. [`restore`] is its exact inverse.
pub(crate) fn neutralise(cell: &str) -> String {
    if cell.trim_start_matches('\'').starts_with(FORMULA_START) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

/// Undoes [`neutralise`] (what `records import` does to a CSV cell): a cell of one or more `'`
/// followed by `=`, `+`, `-`, `@`, tab or CR loses its first `'`. Any other cell is kept as it
/// is, a lone `'plain` included, so only what export added is taken off.
pub(crate) fn restore(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.trim_start_matches('\'').starts_with(FORMULA_START) => rest,
        _ => cell,
    }
}

/// Where rows go: a CSV writer (which quotes and buffers), or JSON lines straight to `out`.
enum Sink<'a> {
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
    Jsonl(&'a mut dyn Write, Vec<u8>),
}

impl<'a> Sink<'a> {
    fn new(format: Format, out: &'a mut dyn Write, header: &[&str]) -> Result<Sink<'a>> {
        Ok(match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(header)?;
                Sink::Csv(Box::new(w))
            }
            Format::Jsonl => Sink::Jsonl(out, Vec::new()),
        })
    }

    fn row<T: Serialize>(
        &mut self,
        value: &T,
        csv_row: impl FnOnce() -> Vec<String>,
    ) -> Result<()> {
        match self {
            Sink::Csv(w) => w.write_record(csv_row().iter().map(|c| neutralise(c)))?,
            Sink::Jsonl(out, buf) => {
                buf.clear();
                serde_json::to_writer(&mut *buf, value)?;
                buf.push(b'\n');
                out.write_all(buf).context("writing the export")?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Csv(mut w) => w.flush(),
            Sink::Jsonl(out, _) => out.flush(),
        }
        .context("writing the export")
    }
}

/// An exported activity: its synced fields (DESIGN §4.15) and, when asked for, its audit
/// trail.
#[derive(Serialize)]
struct Exported<'a> {
    #[serde(flatten)]
    activity: &'a Activity,
    #[serde(flatten)]
    fields: &'a crate::model::Fields,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<&'a [crate::model::AuditEntry]>,
}

/// Writes the activities that pass `filter` to `out`, one at a time; returns how many.
///
/// # Errors
/// A bad filter (a usage error), the store, or writing to `out` (e.g. a closed pipe).
pub(crate) fn activities(
    store: &Store,
    filter: &ActivityFilter,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64> {
    let since = filter
        .since
        .as_deref()
        .map(check_since)
        .transpose()
        .map_err(FilterError)?;
    let regarding = filter
        .regarding
        .as_deref()
        .map(|r| r.parse::<RecordRef>().map_err(FilterError))
        .transpose()?
        .map(|r| r.to_string());
    let mut header = ACTIVITY_COLUMNS.to_vec();
    if filter.history {
        header.push("history");
    }
    let mut sink = Sink::new(format, out, &header)?;
    let mut n = 0;
    for a in store.activities_iter() {
        let a = a?;
        if since.is_some_and(|s| crate::time::parse_date(&a.tracked_at) < s) {
            continue;
        }
        if regarding.is_some() && a.regarding != regarding {
            continue;
        }
        let fields = store.field_state(a.id)?.unwrap_or_default().crm;
        let history = match filter.history {
            true => Some(store.audit(a.id)?.into_iter().rev().collect::<Vec<_>>()),
            false => None,
        };
        let row = Exported {
            activity: &a,
            fields: &fields,
            history: history.as_deref(),
        };
        sink.row(&row, || {
            let mut r = activity_row(&a, &fields);
            if let Some(h) = &history {
                r.push(serde_json::to_string(h).unwrap_or_default());
            }
            r
        })?;
        n += 1;
    }
    sink.finish()?;
    Ok(n)
}

/// Writes the records (of `rtype`, if given) to `out` in the shape `records import` reads;
/// returns how many.
///
/// # Errors
/// The store, or writing to `out`.
pub(crate) fn records(
    store: &Store,
    rtype: Option<&str>,
    format: Format,
    out: &mut dyn Write,
) -> Result<u64> {
    let rtype = rtype.map(str::to_ascii_lowercase);
    let mut sink = Sink::new(format, out, &RECORD_COLUMNS)?;
    let mut n = 0;
    for r in store.records_iter(rtype.as_deref()) {
        let r = r?;
        sink.row(&r, || {
            vec![
                r.rtype.clone(),
                r.key.clone(),
                r.name.clone(),
                r.emails.join(";"),
                r.owner.clone().unwrap_or_default(),
                r.shared.to_string(),
                r.teams.join(";"),
            ]
        })?;
        n += 1;
    }
    sink.finish()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_dates_and_times_only() {
        // 2026-11-28T00:00:00Z is 1795824000 s after the epoch (`date -u -d 2026-11-28 +%s`).
        assert_eq!(check_since("2026-11-28"), Ok(1_795_824_000));
        assert_eq!(
            check_since("2026-11-28T09:30:00Z"),
            Ok(1_795_824_000 + 34_200)
        );
        // An offset is the same instant in UTC: 09:30 at +01:00 is 08:30Z, at -05:00 14:30Z.
        assert_eq!(
            check_since("2026-11-28T09:30:00+01:00"),
            Ok(1_795_824_000 + 30_600)
        );
        assert_eq!(
            check_since("2026-11-28T09:30:00-05:00"),
            Ok(1_795_824_000 + 52_200)
        );
        assert!(check_since("yesterday").is_err());
        assert!(check_since("2026-11-28T9:30").is_err());
        assert!(check_since("2026-11-28").unwrap() < check_since("2026-11-28T00:00:01Z").unwrap());
        assert!(check_since("2026-02-30").is_err(), "not a real date");
    }

    /// The hand-written parser dropped the offset of a time with fractional seconds.
    #[test]
    fn since_with_fractional_seconds_keeps_its_offset() {
        assert_eq!(
            check_since("2026-11-28T10:00:00.5+01:00").unwrap(),
            check_since("2026-11-28T09:00:00Z").unwrap()
        );
    }
}
