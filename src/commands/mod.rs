//! What each CLI command does, as library functions that return text or JSON, so that
//! `main.rs` only parses arguments and maps errors to exit codes, and tests can call them.

pub mod check;
pub mod demo;
pub mod show;

use crate::config::Config;
use crate::model::{Record, RecordRef};
use crate::store::Store;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Opens the configured data dir's store.
pub fn open_store(config: &Config) -> Result<Arc<Store>> {
    Ok(Arc::new(Store::open(&config.data_dir, config.cache_bytes)?))
}

/// `sync [--mailbox M]`: one pass, then a line per folder. `Err` when any mailbox failed
/// (after the others were synced).
pub async fn sync(config: &Config, only: Option<&str>) -> Result<String> {
    if let Some(m) = only {
        anyhow::ensure!(
            config.mailbox(m).is_some(),
            UsageError(format!(
                "no mailbox named `{m}` in {}",
                config.path.display()
            ))
        );
    }
    let store = open_store(config)?;
    let reports = crate::sync::sync_all(config, &store, only).await;
    let mut out = String::new();
    let mut failed = Vec::new();
    for r in &reports {
        for f in &r.folders {
            out.push_str(&format!(
                "{}: {}: {} new, {} tracked, {} merged with existing, {} already tracked, {} quarantined{}\n",
                r.mailbox,
                f.folder,
                f.new_messages,
                f.outcome.created,
                f.outcome.merged,
                f.outcome.replayed,
                f.outcome.quarantined,
                if f.uidvalidity_reset { " (UIDVALIDITY changed: folder re-read)" } else { "" }
            ));
        }
        if r.folders.is_empty() && r.error.is_none() {
            out.push_str(&format!(
                "{}: no tracked folder found on the server (see `foldertrack check`)\n",
                r.mailbox
            ));
        }
        if let Some(e) = &r.error {
            failed.push(format!("{}: {e}", r.mailbox));
        }
    }
    if !failed.is_empty() {
        print!("{out}");
        anyhow::bail!(
            "sync failed for {} mailbox(es):\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(out)
}

/// A mistake in how the command was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `records import FILE`: all or nothing.
pub fn records_import(config: &Config, file: &Path) -> Result<String> {
    let recs = crate::records_io::read_records(file)?;
    let store = open_store(config)?;
    store.put_records(&recs).context("writing the records")?;
    Ok(format!(
        "imported {} record(s) from {}\n",
        recs.len(),
        file.display()
    ))
}

/// `records add TYPE:KEY --name N --email E… [--owner U]`.
pub fn records_add(
    config: &Config,
    r: &str,
    name: Option<String>,
    emails: Vec<String>,
    owner: Option<String>,
) -> Result<String> {
    let rref: RecordRef = r.parse().map_err(UsageError)?;
    let line = serde_json::json!({"type": rref.rtype, "key": rref.key, "name": name, "emails": emails, "owner": owner}).to_string();
    let recs = crate::records_io::parse_records("(command line)", &line, false)
        .map_err(|e| UsageError(e.message))?;
    let store = open_store(config)?;
    store.put_records(&recs)?;
    Ok(format!("saved {rref}\n"))
}

/// `records list [--type T] [--json]`.
pub fn records_list(config: &Config, rtype: Option<&str>, json: bool) -> Result<String> {
    let store = open_store(config)?;
    let recs = store.records(rtype.map(str::to_ascii_lowercase).as_deref())?;
    if json {
        return Ok(serde_json::to_string_pretty(&recs)? + "\n");
    }
    Ok(show::records_table(&recs))
}

/// `records show TYPE:KEY [--json]`.
pub fn records_show(config: &Config, r: &str, json: bool) -> Result<String> {
    let rref: RecordRef = r.parse().map_err(UsageError)?;
    let store = open_store(config)?;
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

/// `activities list [--regarding R] [--json]`.
pub fn activities_list(config: &Config, regarding: Option<&str>, json: bool) -> Result<String> {
    let r = regarding
        .map(|r| r.parse::<RecordRef>().map_err(UsageError))
        .transpose()?;
    let store = open_store(config)?;
    let acts = store.activities(r.as_ref())?;
    if json {
        let list: Vec<serde_json::Value> = acts.iter().map(show::activity_json_brief).collect();
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    Ok(show::activities_table(&acts))
}

/// `activities show ID [--json]`.
pub fn activities_show(config: &Config, id: u64, json: bool) -> Result<String> {
    let store = open_store(config)?;
    let a = store.activity(id)?.ok_or_else(|| {
        UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
    })?;
    if json {
        return Ok(serde_json::to_string_pretty(&a)? + "\n");
    }
    Ok(show::activity_text(&a))
}

/// `status [--json]`.
pub fn status(config: &Config, json: bool) -> Result<String> {
    let store = open_store(config)?;
    let st = show::Status::collect(config, &store)?;
    if json {
        return Ok(serde_json::to_string_pretty(&st)? + "\n");
    }
    Ok(st.to_text())
}
