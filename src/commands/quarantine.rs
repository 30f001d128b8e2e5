//! `quarantine`: the messages that could not be tracked, kept with their raw bytes: list,
//! show, replay, drop.

use super::show;
use crate::config::Config;
use crate::protocol::UsageError;
use crate::store::{QuarantineEntry, Store};
use anyhow::Result;

/// `quarantine list [--json]`.
pub(crate) fn list(store: &Store, json: bool) -> Result<String> {
    let q = store.quarantine()?;
    if json {
        return Ok(serde_json::to_string_pretty(&q)? + "\n");
    }
    if q.is_empty() {
        return Ok("quarantine is empty\n".into());
    }
    let rows: Vec<Vec<String>> = q
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.at.clone(),
                format!(
                    "{}/{} uid {}",
                    e.source.mailbox, e.source.folder, e.source.uid
                ),
                e.size.to_string(),
                e.reason.clone(),
            ]
        })
        .collect();
    Ok(show::table(
        &["ID", "AT", "SOURCE", "BYTES", "REASON"],
        &rows,
    ))
}

/// A quarantined message and its raw bytes, or the usage error that names the list command.
fn entry(store: &Store, id: u64) -> Result<(QuarantineEntry, Vec<u8>)> {
    let e = store.quarantine_entry(id)?.ok_or_else(|| {
        UsageError(format!(
            "no quarantined message {id} (see `foldertrack quarantine list`)"
        ))
    })?;
    let raw = store.quarantine_raw(id)?.unwrap_or_default();
    Ok((e, raw))
}

/// `quarantine show ID`: why, from where, and the start of the raw message.
pub(crate) fn show(store: &Store, id: u64) -> Result<String> {
    let (e, raw) = entry(store, id)?;
    Ok(format!(
        "quarantined message {}\n  source: {}/{} (uidvalidity {}, uid {})\n  reason: {}\n  at:     {}\n  bytes:  {}\n\n{}",
        e.id,
        e.source.mailbox,
        e.source.folder,
        e.source.uidvalidity,
        e.source.uid,
        e.reason,
        e.at,
        e.size,
        String::from_utf8_lossy(&raw[..raw.len().min(64 * 1024)])
    ))
}

/// `quarantine replay ID`: tracks the message again with the current configuration; it
/// leaves the quarantine only when that worked.
pub(crate) fn replay(config: &Config, store: &Store, id: u64) -> Result<String> {
    let (e, raw) = entry(store, id)?;
    match crate::sync::replay(config, store, &e.source, raw) {
        Ok(out) => {
            store.quarantine_remove(id)?;
            Ok(format!(
                "replayed quarantined message {id} ({}/{} uid {}): {} tracked, {} merged with existing, {} already tracked\n",
                e.source.mailbox, e.source.folder, e.source.uid, out.created, out.merged, out.replayed
            ))
        }
        Err(why) => Err(anyhow::anyhow!(
            "quarantined message {id} was not replayed: {why}"
        )),
    }
}

/// `quarantine drop ID`: forgets the message.
pub(crate) fn drop_entry(store: &Store, id: u64) -> Result<String> {
    match store.quarantine_remove(id) {
        Ok(true) => Ok(format!("dropped quarantined message {id}\n")),
        Ok(false) => Err(UsageError(format!("no quarantined message {id}")).into()),
        Err(e) => Err(e.into()),
    }
}
