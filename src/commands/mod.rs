//! What each CLI command does, as library functions that return text or JSON, so that
//! `main.rs` only parses arguments and maps errors to exit codes, and tests can call them.

pub mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod outbox;
pub mod progress;
pub mod show;

use crate::config::Config;
use crate::model::{Record, RecordRef};
use crate::protocol::{PartialFailure, Reply, Request, UsageError};
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;

/// Opens the configured data dir's store.
pub fn open_store(config: &Config) -> Result<Arc<Store>> {
    Ok(Arc::new(Store::open(&config.data_dir, config.cache_bytes)?))
}

/// `sync [--mailbox M]`: one pass, then a line per folder and a one-line total. With
/// `progress`, a bar per folder is drawn on stderr while it runs. `Err` when any mailbox failed
/// (after the others were synced).
pub async fn sync(
    config: &Config,
    store: &Arc<Store>,
    only: Option<&str>,
    progress: bool,
) -> Result<String> {
    if let Some(m) = only {
        anyhow::ensure!(
            config.mailbox(m).is_some(),
            UsageError(format!(
                "no mailbox named `{m}` in {}",
                config.path.display()
            ))
        );
    }
    let store = store.clone();
    let bars = progress.then(progress::Bars::new);
    let reports = crate::sync::sync_all(
        config,
        &store,
        only,
        bars.as_ref().map(|b| b as &dyn crate::sync::Progress),
    )
    .await;
    drop(bars);
    let mut out = String::new();
    let mut failed = Vec::new();
    let mut total = crate::store::BatchOutcome::default();
    let mut new = 0;
    for r in &reports {
        for f in &r.folders {
            total += f.outcome;
            new += f.new_messages;
        }
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
        if r.unchanged > 0 {
            out.push_str(&format!(
                "{}: {} folder(s) unchanged since the last pass\n",
                r.mailbox, r.unchanged
            ));
        }
        if r.folders.is_empty() && r.unchanged == 0 && r.error.is_none() {
            out.push_str(&format!(
                "{}: no tracked folder found on the server (see `foldertrack check`)\n",
                r.mailbox
            ));
        }
        if let Some(e) = &r.error {
            failed.push(format!("{}: {e}", r.mailbox));
        }
    }
    out.push_str(&format!(
        "total: {} mailbox(es), {} failed; {new} new, {} tracked, {} merged with existing, {} already tracked, {} quarantined\n",
        reports.len(),
        failed.len(),
        total.created,
        total.merged,
        total.replayed,
        total.quarantined
    ));
    if !failed.is_empty() {
        return Err(PartialFailure {
            stdout: out,
            message: format!(
                "sync failed for {} mailbox(es):\n  {}",
                failed.len(),
                failed.join("\n  ")
            ),
        }
        .into());
    }
    Ok(out)
}

/// Runs `req`: against the store here when it is free, else through the running agent.
pub async fn dispatch(req: Request, config: &Config) -> Reply {
    match Store::open(&config.data_dir, config.cache_bytes) {
        Ok(store) => {
            let store = Arc::new(store);
            execute(req, config, &store, None).await
        }
        Err(StoreError::Locked { dir, pid }) => match crate::control::call(&config.data_dir, &req)
            .await
        {
            Ok(reply) => reply,
            Err(e) => Reply::from_result(Err(anyhow::Error::new(StoreError::Locked { dir, pid })
                .context(format!("and its control socket did not answer ({e})")))),
        },
        Err(e) => Reply::from_result(Err(e.into())),
    }
}

/// Runs an export request: streamed row by row to `out` when the store is free here, else
/// answered by the running agent (buffered there, then printed).
pub async fn export(req: Request, config: &Config, out: &mut dyn std::io::Write) -> Reply {
    match Store::open(&config.data_dir, config.cache_bytes) {
        Ok(store) => {
            let r = match &req {
                Request::ActivitiesExport { filter, format } => {
                    crate::export::activities(&store, filter, *format, out)
                }
                Request::RecordsExport { rtype, format } => {
                    crate::export::records(&store, rtype.as_deref(), *format, out)
                }
                _ => Err(anyhow::anyhow!("not an export request")),
            };
            Reply::from_result(r.map(|_| String::new()))
        }
        Err(StoreError::Locked { .. }) => dispatch(req, config).await,
        Err(e) => Reply::from_result(Err(e.into())),
    }
}

/// Runs `req` against an open store. `agent` is set when a running agent serves the request.
pub async fn execute(
    req: Request,
    config: &Config,
    store: &Arc<Store>,
    agent: Option<&crate::agent::AgentHandle>,
) -> Reply {
    let r = match req {
        Request::Sync { mailbox, progress } => match agent {
            Some(a) => Ok(a.wake(mailbox.as_deref())),
            None => sync(config, store, mailbox.as_deref(), progress).await,
        },
        Request::ActivitiesExport { filter, format } => {
            let mut buf = Vec::new();
            crate::export::activities(store, &filter, format, &mut buf)
                .map(|_| String::from_utf8_lossy(&buf).into_owned())
        }
        Request::RecordsExport { rtype, format } => {
            let mut buf = Vec::new();
            crate::export::records(store, rtype.as_deref(), format, &mut buf)
                .map(|_| String::from_utf8_lossy(&buf).into_owned())
        }
        Request::Check { mailbox } => match check::check(config, store, mailbox.as_deref()).await {
            Ok((text, true)) => Ok(text),
            Ok((text, false)) => Err(PartialFailure {
                stdout: text,
                message: "check found problems (marked FAIL above)".into(),
            }
            .into()),
            Err(e) => Err(e),
        },
        Request::RecordsPut { records, from } => {
            let mut checked = Vec::with_capacity(records.len());
            for (i, r) in records.into_iter().enumerate() {
                let which = format!("{}:{}", r.rtype, r.key);
                match crate::records_io::check_record(r) {
                    Ok(r) => checked.push(r),
                    Err(m) => {
                        return Reply::from_result(Err(UsageError(format!(
                            "{from}: record {} ({}): {m}; nothing imported",
                            i + 1,
                            crate::imap::utf7::escape_raw(&which)
                        ))
                        .into()))
                    }
                }
            }
            store
                .put_records(&checked)
                .map(|()| format!("imported {} record(s) from {from}\n", checked.len()))
                .context("writing the records")
        }
        Request::RecordsList { rtype, json } => records_list(store, rtype.as_deref(), json),
        Request::RecordsShow { record, json } => records_show(store, &record, json),
        Request::ActivitiesList { regarding, json } => {
            activities_list(store, regarding.as_deref(), json)
        }
        Request::ActivitiesShow { id, json } => activities_show(store, id, json),
        Request::ActivitiesLink { id, regarding } => activities_link(store, id, &regarding),
        Request::Status { json } => status(config, store, agent, json),
        Request::QuarantineList { json } => quarantine_list(store, json),
        Request::QuarantineShow { id } => quarantine_show(store, id),
        Request::ActivitiesAttachment { id, n } => {
            return match attachment(store, id, n) {
                Ok(bytes) => {
                    use base64::Engine;
                    Reply {
                        stdout: String::new(),
                        binary: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                        stderr: String::new(),
                        code: 0,
                    }
                }
                Err(e) => Reply::from_result(Err(e)),
            }
        }
        Request::QuarantineReplay { id } => quarantine_replay(config, store, id),
        Request::QuarantineDrop { id } => match store.quarantine_remove(id) {
            Ok(true) => Ok(format!("dropped quarantined message {id}\n")),
            Ok(false) => Err(UsageError(format!("no quarantined message {id}")).into()),
            Err(e) => Err(e.into()),
        },
        Request::RulesList => Ok(rules_list(config)),
        Request::ActivitiesSend { outgoing } => outbox::send(config, store, &outgoing, agent).await,
        Request::OutboxList { json } => outbox::list(store, json),
        Request::OutboxRetry { id } => outbox::retry(config, store, id, agent).await,
        Request::OutboxCancel { id } => outbox::cancel(store, id),
        Request::RulesCheck => match rules_check(config, store) {
            Ok((text, true)) => Ok(text),
            Ok((text, false)) => Err(PartialFailure {
                stdout: text,
                message: "rules check found problems (marked FAIL above)".into(),
            }
            .into()),
            Err(e) => Err(e),
        },
    };
    Reply::from_result(r)
}

/// Reads and checks a records file (JSON lines or CSV) into a request.
pub fn records_import_request(file: &Path) -> Result<Request> {
    let records = crate::records_io::read_records(file)?;
    Ok(Request::RecordsPut {
        records,
        from: file.display().to_string(),
    })
}

/// Checks one record given on the command line into a request.
pub fn records_add_request(
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

fn records_list(store: &Store, rtype: Option<&str>, json: bool) -> Result<String> {
    let recs = store.records(rtype.map(str::to_ascii_lowercase).as_deref())?;
    if json {
        return Ok(serde_json::to_string_pretty(&recs)? + "\n");
    }
    Ok(show::records_table(&recs))
}

fn records_show(store: &Store, r: &str, json: bool) -> Result<String> {
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

/// `activities list [--regarding R] [--json]`.
pub fn activities_list(store: &Store, regarding: Option<&str>, json: bool) -> Result<String> {
    let r = regarding
        .map(|r| r.parse::<RecordRef>().map_err(UsageError))
        .transpose()?;
    let acts = store.activities(r.as_ref())?;
    if json {
        let list: Vec<serde_json::Value> = acts.iter().map(show::activity_json_brief).collect();
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    Ok(show::activities_table(&acts))
}

fn activities_show(store: &Store, id: u64, json: bool) -> Result<String> {
    let a = store.activity(id)?.ok_or_else(|| {
        UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
    })?;
    // The sent copy and the received copy of one message are two activities (DESIGN §4.7),
    // linked by their Message-ID.
    let counterpart = store.counterpart(&a)?;
    if json {
        let mut v = serde_json::to_value(&a)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("body_blob");
        }
        v["counterpart"] = serde_json::json!(counterpart);
        if let Some(e) = store.outbox_entry(id)? {
            v["send"] = serde_json::to_value(&e)?;
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut text = show::activity_text(&a);
    if let Some(e) = store.outbox_entry(id)? {
        text.push_str(&outbox::show_lines(&e));
    }
    if let Some(c) = counterpart {
        text = text.replacen(
            "\n",
            &format!("\n  other direction: activity {c} (same Message-ID)\n"),
            1,
        );
    }
    Ok(text)
}

fn activities_link(store: &Store, id: u64, regarding: &str) -> Result<String> {
    let r: RecordRef = regarding.parse().map_err(UsageError)?;
    if store.record(&r)?.is_none() {
        return Err(UsageError(format!("no record {r} (import it first)")).into());
    }
    if !store.link_by_hand(id, &r)? {
        return Err(UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
        .into());
    }
    Ok(format!("activity {id} now regards {r}; a folder rule with a regarding resets it at the folder's next pass, as in Dynamics\n"))
}

/// `status [--json]`.
pub fn status(
    config: &Config,
    store: &Store,
    agent: Option<&crate::agent::AgentHandle>,
    json: bool,
) -> Result<String> {
    let st = show::Status::collect(config, store, agent)?;
    if json {
        return Ok(serde_json::to_string_pretty(&st)? + "\n");
    }
    Ok(st.to_text())
}

fn quarantine_list(store: &Store, json: bool) -> Result<String> {
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
fn quarantined(store: &Store, id: u64) -> Result<(crate::store::QuarantineEntry, Vec<u8>)> {
    let e = store.quarantine_entry(id)?.ok_or_else(|| {
        UsageError(format!(
            "no quarantined message {id} (see `foldertrack quarantine list`)"
        ))
    })?;
    let raw = store.quarantine_raw(id)?.unwrap_or_default();
    Ok((e, raw))
}

fn quarantine_show(store: &Store, id: u64) -> Result<String> {
    let (e, raw) = quarantined(store, id)?;
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

fn attachment(store: &Store, id: u64, n: usize) -> Result<Vec<u8>> {
    let a = store
        .activity(id)?
        .ok_or_else(|| UsageError(format!("no activity {id}")))?;
    let count = a.attachments.len();
    let att = n
        .checked_sub(1)
        .and_then(|i| a.attachments.get(i))
        .ok_or_else(|| {
            UsageError(format!(
                "activity {id} has {count} attachment(s); N counts from 1"
            ))
        })?;
    if let Some(why) = &att.skipped {
        return Err(UsageError(format!(
            "attachment {n} of activity {id} was not stored: {why}"
        ))
        .into());
    }
    store.blob(&att.sha256)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the blob {} of attachment {n} is missing from the data dir",
            att.sha256
        )
    })
}

fn rules_list(config: &Config) -> String {
    let mut rows = Vec::new();
    for mb in &config.mailboxes {
        for r in &mb.rules {
            let regarding = match &r.regarding {
                crate::config::Regarding::None => "(none: tracked unlinked)".to_string(),
                crate::config::Regarding::Fixed(x) => x.to_string(),
                crate::config::Regarding::Lookup { rtype, by } => format!(
                    "{rtype} by {} of `*`",
                    if *by == crate::config::LookupBy::Name {
                        "name"
                    } else {
                        "key"
                    }
                ),
            };
            rows.push(vec![mb.name.clone(), r.folder.clone(), regarding]);
        }
    }
    show::table(&["MAILBOX", "FOLDER", "REGARDING"], &rows)
}

/// Reports, before anything runs, the rules that would track unlinked: a missing record, or
/// one the mailbox owner may not write (DESIGN §4.11).
fn rules_check(config: &Config, store: &Store) -> Result<(String, bool)> {
    let mut out = String::new();
    let mut ok = true;
    for mb in &config.mailboxes {
        let writer = crate::track::writer_of(mb, store);
        if mb.rules.len() > 25 {
            out.push_str(&format!(
                "[warn] {}: {} rules; Dynamics stops at 25, foldertrack does not\n",
                mb.name,
                mb.rules.len()
            ));
        }
        for r in &mb.rules {
            let (good, text) = match &r.regarding {
                crate::config::Regarding::None => (true, "no regarding".to_string()),
                crate::config::Regarding::Fixed(x) => match store.record(x)? {
                    None => (false, format!("{x} is not in the records")),
                    Some(rec) if !writer.can_write(&rec) => (
                        false,
                        format!(
                            "{} may not write {x} (owner {}): mail would be tracked unlinked",
                            writer.user,
                            rec.owner.as_deref().unwrap_or("-")
                        ),
                    ),
                    Some(_) => (true, format!("{x} exists and {} may write it", writer.user)),
                },
                crate::config::Regarding::Lookup { rtype, .. } => {
                    let n = store.records(Some(rtype))?.len();
                    (
                        n > 0,
                        format!("looks up {rtype} records ({n} in the store)"),
                    )
                }
            };
            ok &= good;
            out.push_str(&format!(
                "[{}] {}: rule `{}`: {text}\n",
                if good { "ok" } else { "FAIL" },
                mb.name,
                r.folder
            ));
        }
    }
    Ok((out, ok))
}

fn quarantine_replay(config: &Config, store: &Store, id: u64) -> Result<String> {
    let (e, raw) = quarantined(store, id)?;
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
