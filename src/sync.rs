//! One pass over a mailbox's tracked folders (DESIGN §3 steps 1–4): EXAMINE with the
//! UIDVALIDITY check, list new UIDs, fetch them in bounded batches, parse and track off the
//! I/O task, and commit each batch with its checkpoint in one transaction.
//!
//! Fetching and processing overlap: while batch *n* is parsed and committed on a blocking
//! worker, batch *n+1* is already being read from the server. At most two batches are in
//! memory at once, which bounds memory by `2 × batch_bytes` whatever the folder's size.

use crate::config::{Config, FetchLimits, MailboxConfig};
use crate::imap::fetch::{self, Batch, RawMessage};
use crate::imap::folders::{self, Folder};
use crate::imap::{connect, ImapError};
use crate::model::Source;
use crate::parse;
use crate::store::{BatchItem, BatchOutcome, FolderState, MailboxState, Store, StoreError};
use crate::track::{self, rules, FolderContext};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal worker failed: {0}")]
    Worker(String),
}

impl SyncError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SyncError::Imap(e) if e.is_permanent())
    }
}

/// What one folder's pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FolderReport {
    pub folder: String,
    pub uidvalidity: u32,
    pub uidvalidity_reset: bool,
    pub new_messages: usize,
    #[serde(flatten)]
    pub outcome: BatchOutcome,
}

/// What one mailbox's pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxReport {
    pub mailbox: String,
    pub folders: Vec<FolderReport>,
    pub error: Option<String>,
}

/// Syncs every mailbox (or only `only`), one after the other; a failing mailbox does not
/// stop the others. Each report says what happened.
pub async fn sync_all(
    config: &Config,
    store: &Arc<Store>,
    only: Option<&str>,
) -> Vec<MailboxReport> {
    let mut out = Vec::new();
    for mb in config
        .mailboxes
        .iter()
        .filter(|m| only.is_none_or(|o| o == m.name))
    {
        let report = match sync_mailbox(mb, &config.fetch, store).await {
            Ok(r) => r,
            Err(e) => MailboxReport {
                mailbox: mb.name.clone(),
                folders: Vec::new(),
                error: Some(e.to_string()),
            },
        };
        out.push(report);
    }
    out
}

/// Syncs one mailbox and records the attempt's result in its [`MailboxState`].
pub async fn sync_mailbox(
    mb: &MailboxConfig,
    limits: &FetchLimits,
    store: &Arc<Store>,
) -> Result<MailboxReport, SyncError> {
    let mut state = store.mailbox_state(&mb.name)?;
    state.last_attempt = Some(crate::store::humantime_now());
    let result = sync_mailbox_inner(mb, limits, store).await;
    record_result(store, &mut state, &result)?;
    result
}

fn record_result(
    store: &Store,
    state: &mut MailboxState,
    result: &Result<MailboxReport, SyncError>,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => {
            state.last_success = state.last_attempt.clone();
            state.last_error = None;
            state.consecutive_errors = 0;
        }
        Err(e) => {
            state.last_error = Some(e.to_string());
            state.consecutive_errors += 1;
            store.add_alert(
                &state.name,
                crate::model::Alert {
                    level: if e.is_permanent() { "error" } else { "warning" }.into(),
                    message: e.to_string(),
                },
            )?;
        }
    }
    store.put_mailbox_state(state)
}

async fn sync_mailbox_inner(
    mb: &MailboxConfig,
    limits: &FetchLimits,
    store: &Arc<Store>,
) -> Result<MailboxReport, SyncError> {
    let mut conn = connect(mb).await?;
    let addr = conn.addr.clone();
    let all = folders::list(&mut conn.session, &addr).await?;
    let sent = folders::find_sent(&all, mb.sent_folder.as_deref()).map(|f| f.name.clone());
    if let Some(name) = &mb.sent_folder {
        if sent.is_none() {
            store.add_alert(
                &mb.name,
                track::warning(format!("sent_folder `{name}` does not exist on {addr}")),
            )?;
        }
    }
    for rule in mb.rules.iter().filter(|r| !r.folder.contains('*')) {
        if !all
            .iter()
            .any(|f| rules::match_folder(std::slice::from_ref(rule), &f.name).is_some())
        {
            store.add_alert(
                &mb.name,
                track::warning(format!(
                    "rule folder `{}` does not exist on {addr}: nothing to track there yet",
                    rule.folder
                )),
            )?;
        }
    }
    let mb_arc = Arc::new(mb.clone());
    let mut report = MailboxReport {
        mailbox: mb.name.clone(),
        ..Default::default()
    };
    for folder in all
        .iter()
        .filter(|f| f.selectable && rules::match_folder(&mb.rules, &f.name).is_some())
    {
        let is_sent = sent
            .as_deref()
            .is_some_and(|s| folder.name == s || folder.name.starts_with(&format!("{s}/")));
        let span = tracing::info_span!("folder", mailbox = %mb.name, folder = %folder.name);
        let _e = span.enter();
        let r = sync_folder(
            &mut conn.session,
            &addr,
            &mb_arc,
            folder,
            is_sent,
            limits,
            store,
        )
        .await?;
        tracing::info!(
            created = r.outcome.created,
            merged = r.outcome.merged,
            quarantined = r.outcome.quarantined,
            "folder synced"
        );
        report.folders.push(r);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.session.logout()).await;
    Ok(report)
}

/// Syncs one folder from its checkpoint.
pub async fn sync_folder(
    session: &mut crate::imap::ImapSession,
    addr: &str,
    mb: &Arc<MailboxConfig>,
    folder: &Folder,
    is_sent: bool,
    limits: &FetchLimits,
    store: &Arc<Store>,
) -> Result<FolderReport, SyncError> {
    let sel = fetch::examine(session, addr, &folder.server_name, &folder.name).await?;
    let prev = store.folder_state(&mb.name, &folder.name)?;
    let mut report = FolderReport {
        folder: folder.name.clone(),
        uidvalidity: sel.uidvalidity,
        ..Default::default()
    };
    let start_after = match &prev {
        Some(p) if p.uidvalidity == sel.uidvalidity => p.last_uid,
        Some(p) => {
            // A reset: every UID may now name another message. Re-read the folder; dedup by
            // Message-ID (or content hash) matches what was tracked, so nothing is doubled.
            tracing::warn!(
                old = p.uidvalidity,
                new = sel.uidvalidity,
                "UIDVALIDITY changed: re-reading the folder, matching by Message-ID"
            );
            store.add_alert(
                &mb.name,
                track::warning(format!(
                    "folder `{}`: UIDVALIDITY changed from {} to {}; re-read it and matched tracked mail by Message-ID",
                    folder.name, p.uidvalidity, sel.uidvalidity
                )),
            )?;
            report.uidvalidity_reset = true;
            0
        }
        None => 0,
    };
    let rule = rules::match_folder(&mb.rules, &folder.name).map(|m| m.rule.folder.clone());
    let checkpoint = |last_uid: u32| FolderState {
        mailbox: mb.name.clone(),
        folder: folder.name.clone(),
        uidvalidity: sel.uidvalidity,
        last_uid,
        uid_next: sel.uid_next,
        messages: sel.exists,
        last_sync: Some(crate::store::humantime_now()),
        rule: rule.clone(),
    };
    let uids = fetch::new_uids(session, addr, start_after, sel.exists).await?;
    report.new_messages = uids.len();
    let batches = fetch::plan_batches(&uids, limits);
    if batches.is_empty() {
        store.put_folder_state(&checkpoint(start_after))?;
        store.flush()?;
        return Ok(report);
    }

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Batch, Vec<RawMessage>)>(1);
    let producer = async move {
        for b in batches {
            let msgs = fetch::fetch_batch(session, addr, &b).await?;
            if tx.send((b, msgs)).await.is_err() {
                break; // the consumer failed; its error is the one reported
            }
        }
        Ok::<_, SyncError>(())
    };
    let consumer = async {
        let mut total = BatchOutcome::default();
        while let Some((batch, msgs)) = rx.recv().await {
            let last = batch.last_uid().max(start_after);
            let cp = checkpoint(last);
            let (mb, folder_name, store2) = (mb.clone(), folder.name.clone(), store.clone());
            let uidvalidity = sel.uidvalidity;
            let out = tokio::task::spawn_blocking(move || {
                let items = process_batch(
                    &mb,
                    &folder_name,
                    is_sent,
                    uidvalidity,
                    &batch,
                    msgs,
                    &*store2,
                );
                store2.commit_batch(&items, &cp, &mb.name)
            })
            .await
            .map_err(|e| SyncError::Worker(e.to_string()))??;
            tracing::debug!(
                last_uid = last,
                created = out.created,
                merged = out.merged,
                quarantined = out.quarantined,
                "batch committed"
            );
            total += out;
        }
        Ok::<_, SyncError>(total)
    };
    let ((), total) = tokio::try_join!(producer, consumer)?;
    report.outcome = total;
    Ok(report)
}

/// Parses and tracks one message; a parser panic quarantines it instead of killing the sync.
fn track_one(
    m: &RawMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    records: &(dyn track::RecordLookup + Sync),
) -> BatchItem {
    let parsed = std::panic::catch_unwind(|| parse::parse_message(&m.raw));
    let item = match parsed {
        Ok(Ok(p)) => BatchItem::Tracked(Box::new(track::build_activity(
            p, ctx, source, m.size, records,
        ))),
        Ok(Err(e)) => BatchItem::Quarantined {
            source,
            reason: format!("cannot parse: {e}"),
            size: m.size,
            raw: m.raw.clone(),
        },
        Err(_) => BatchItem::Quarantined {
            source,
            reason:
                "the parser crashed on this message (a bug: please report it with the raw message)"
                    .into(),
            size: m.size,
            raw: m.raw.clone(),
        },
    };
    if let BatchItem::Quarantined { reason, source, .. } = &item {
        tracing::warn!(uid = source.uid, %reason, "message quarantined");
    }
    item
}

/// Parses and tracks one fetched batch: pure work, run on a blocking worker.
pub fn process_batch(
    mb: &MailboxConfig,
    folder: &str,
    is_sent: bool,
    uidvalidity: u32,
    batch: &Batch,
    msgs: Vec<RawMessage>,
    records: &(dyn track::RecordLookup + Sync),
) -> Vec<BatchItem> {
    let ctx = FolderContext {
        mailbox: mb,
        folder: folder.to_string(),
        is_sent,
        rule: rules::match_folder(&mb.rules, folder),
    };
    let source = |uid| Source {
        mailbox: mb.name.clone(),
        folder: folder.to_string(),
        uidvalidity,
        uid,
    };
    let mut items: Vec<BatchItem> = batch
        .oversize
        .iter()
        .map(|&(uid, size)| BatchItem::Quarantined {
            source: source(uid),
            reason: format!(
                "message is {size} bytes, over the hard limit max_message_size; not fetched"
            ),
            raw: Vec::new(),
            size,
        })
        .collect();
    // Parsing is most of the CPU time: spread the batch over the cores.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(msgs.len().max(1));
    let chunk = msgs.len().div_ceil(workers).max(1);
    let ctx = &ctx;
    let source = &source;
    let parsed: Vec<Vec<BatchItem>> = std::thread::scope(|scope| {
        let handles: Vec<_> = msgs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|m| track_one(m, ctx, source(m.uid), records))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    items.extend(parsed.into_iter().flatten());
    items
}
