//! One pass over a mailbox's tracked folders (DESIGN §3 steps 1–4), used by `sync` once and by
//! `run` after every wake-up: list folders, bind rules to folders (a renamed folder stays
//! tracked), skip folders whose STATUS has not changed, EXAMINE with the UIDVALIDITY check,
//! fetch new UIDs in bounded batches, parse and track off the I/O task, and commit each batch
//! with its checkpoint in one transaction. Rule changes and regardings set by hand are
//! reconciled here too (DESIGN §4.4–4.6).
//!
//! Fetching and processing overlap: while batch *n* is parsed and committed on a blocking
//! worker, batch *n+1* is already being read from the server, so memory stays bounded by a
//! few batches whatever the folder's size.

use crate::config::{Config, FetchLimits, MailboxConfig, Rule};
use crate::imap::connect::Connected;
use crate::imap::fetch::{Batch, RawMessage};
use crate::imap::folders::{self, Folder};
use crate::imap::{connect, timed, ImapError};
use crate::model::{Alert, Source};
use crate::parse;
use crate::store::{BatchItem, BatchOutcome, MailboxState, RuleBinding, Store, StoreError};
use crate::track::{self, rules, rules::RuleMatch, FolderContext, RecordLookup};
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod flags;
mod folder;
pub use flags::FlagReport;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal worker failed: {0}")]
    Worker(String),
}

/// A blocking task of the sync (parsing, a commit) that panicked or was cancelled.
impl From<tokio::task::JoinError> for SyncError {
    fn from(e: tokio::task::JoinError) -> SyncError {
        SyncError::Worker(e.to_string())
    }
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
    /// Activities moved to the folder's (changed) regarding, or reset after a manual link.
    pub relinked_by_rule: u32,
    /// What the flag scan synced (DESIGN §4.15).
    #[serde(flatten)]
    pub flags: FlagReport,
    /// Ids of the new activities, for late correlation at the end of the pass (ids only: a
    /// 50,000-message pass kept every activity in memory, and peak RSS grew with the folder).
    #[serde(skip)]
    pub created: Vec<u64>,
}

/// What one mailbox's pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MailboxReport {
    pub mailbox: String,
    pub folders: Vec<FolderReport>,
    /// Folders whose STATUS showed nothing new: not opened.
    pub unchanged: usize,
    /// Activities correlated after the fact (their earlier message was tracked later in the pass).
    pub late_correlated: u32,
    pub error: Option<String>,
}

impl MailboxReport {
    /// New activities in this pass (for the adaptive poll schedule).
    pub fn created(&self) -> u32 {
        self.folders
            .iter()
            .map(|f| f.outcome.created + f.outcome.merged)
            .sum()
    }
}

/// A tracked folder and the rule that tracks it.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub folder: Folder,
    pub rule: Rule,
    pub capture: Option<String>,
    pub is_sent: bool,
    /// INBOX or Sent watched for `track_other_mail`: no folder rule, a filter instead.
    pub other: Option<crate::config::OtherMail>,
}

impl Tracked {
    fn rule_match(&self) -> RuleMatch<'_> {
        RuleMatch {
            rule: &self.rule,
            capture: self.capture.clone(),
        }
    }
}

/// Receives a pass's progress as it goes (the `sync` command's progress bars). Called from
/// the pass's task, between batches.
pub trait Progress: Send + Sync {
    /// A folder with `new_messages` to fetch is starting.
    fn folder_started(&self, mailbox: &str, folder: &str, new_messages: u64);
    /// `messages` more of it are committed.
    fn advanced(&self, mailbox: &str, folder: &str, messages: u64);
    /// The folder is done (or failed).
    fn folder_done(&self, mailbox: &str, folder: &str);
}

/// Syncs every mailbox (or only `only`), one after the other; a failing mailbox does not
/// stop the others. Each report says what happened.
pub async fn sync_all(
    config: &Config,
    store: &Arc<Store>,
    only: Option<&str>,
    progress: Option<&dyn Progress>,
) -> Vec<MailboxReport> {
    let mut out = Vec::new();
    for mb in config
        .mailboxes
        .iter()
        .filter(|m| only.is_none_or(|o| o == m.name))
    {
        let mb = Arc::new(mb.clone());
        let mut state = match store.mailbox_state(&mb.name) {
            Ok(s) => s,
            Err(e) => {
                out.push(MailboxReport {
                    mailbox: mb.name.clone(),
                    error: Some(e.to_string()),
                    ..Default::default()
                });
                continue;
            }
        };
        state.last_attempt = Some(crate::time::humantime_now());
        let span = tracing::info_span!("mailbox", mailbox = %mb.name);
        let result = tracing::Instrument::instrument(
            async {
                let mut conn = connect(&mb).await?;
                crate::metrics::metrics().connected(&mb.name, true);
                let r = pass(&mut conn, &mb, &config.fetch, store, None, progress).await;
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(5), conn.session.logout())
                        .await;
                crate::metrics::metrics().connected(&mb.name, false);
                r
            },
            span,
        )
        .await;
        let _ = record_result(store, &mut state, &result);
        out.push(result.unwrap_or_else(|e| MailboxReport {
            mailbox: mb.name.clone(),
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    out
}

/// What [`record_result`] needs to know of a successful outcome.
pub trait PassResult {
    /// Whether new activities were created (or copies merged).
    fn tracked_something(&self) -> bool;
}

impl PassResult for () {
    fn tracked_something(&self) -> bool {
        false
    }
}

impl PassResult for MailboxReport {
    fn tracked_something(&self) -> bool {
        self.created() > 0
    }
}

/// Records a pass's outcome in the mailbox's persisted health: last success, last error,
/// and the outage that an error opens and the next success closes.
pub fn record_result<T: PassResult>(
    store: &Store,
    state: &mut MailboxState,
    result: &Result<T, SyncError>,
) -> Result<(), StoreError> {
    match result {
        Ok(r) => {
            state.succeeded();
            if r.tracked_something() {
                state.tracked();
            }
        }
        Err(e) => {
            state.failed(&e.to_string());
            store.add_alert(
                &state.name,
                Alert {
                    level: if e.is_permanent() {
                        crate::model::AlertLevel::Error
                    } else {
                        crate::model::AlertLevel::Warning
                    },
                    message: e.to_string(),
                },
            )?;
        }
    }
    store.put_mailbox_state(state)
}

/// Lists the folders and decides which are tracked, by which rule. An exact rule whose folder
/// is gone follows its folder's identity (UIDVALIDITY) to a new name: a rename keeps tracking.
pub async fn plan(
    conn: &mut Connected,
    mb: &MailboxConfig,
    store: &Store,
) -> Result<Vec<Tracked>, SyncError> {
    let addr = conn.peer.clone();
    let all = folders::list(&mut conn.session, &addr).await?;
    for f in &all {
        if let Some(why) = &f.invalid {
            store.add_alert(
                &mb.name,
                track::warning(format!(
                    "folder `{}` on {addr} is not tracked: its name is {why}",
                    f.name
                )),
            )?;
        }
    }
    let sent = folders::find_sent(&all, mb.sent_folder.as_deref()).map(|f| f.name.clone());
    if let Some(name) = &mb.sent_folder {
        if sent.is_none() {
            store.add_alert(
                &mb.name,
                track::warning(format!("sent_folder `{name}` does not exist on {addr}")),
            )?;
        }
    }
    let is_sent = |name: &str| {
        sent.as_deref()
            .is_some_and(|s| name == s || name.starts_with(&format!("{s}/")))
    };
    let mut tracked: Vec<Tracked> = all
        .iter()
        .filter(|f| f.selectable)
        .filter_map(|f| {
            rules::match_folder(&mb.rules, &f.name).map(|m| Tracked {
                folder: f.clone(),
                rule: m.rule.clone(),
                capture: m.capture,
                is_sent: is_sent(&f.name),
                other: None,
            })
        })
        .collect();
    // Other mail (DESIGN §4.13): INBOX and Sent, filtered by track_other_mail.
    if mb.crm.track_other_mail != crate::config::OtherMail::None {
        for f in all.iter().filter(|f| {
            f.selectable && (f.name.eq_ignore_ascii_case("INBOX") || Some(&f.name) == sent.as_ref())
        }) {
            if !tracked.iter().any(|t| t.folder.name == f.name) {
                tracked.push(Tracked {
                    folder: f.clone(),
                    rule: Rule {
                        folder: f.name.clone(),
                        regarding: crate::config::Regarding::None,
                    },
                    capture: None,
                    is_sent: is_sent(&f.name),
                    other: Some(mb.crm.track_other_mail),
                });
            }
        }
    }
    for rule in mb.rules.iter().filter(|r| !r.folder.contains('*')) {
        if tracked.iter().any(|t| t.rule.folder == rule.folder) {
            continue;
        }
        let taken: Vec<&str> = tracked.iter().map(|t| t.folder.name.as_str()).collect();
        if let Some(f) = follow_rule(conn, mb, store, rule, &all, &taken).await? {
            tracked.push(Tracked {
                is_sent: is_sent(&f.name),
                folder: f,
                rule: rule.clone(),
                capture: None,
                other: None,
            });
        }
    }
    Ok(tracked)
}

/// An exact rule whose folder is not listed: the folder it was bound to may have been renamed
/// (same UIDVALIDITY under another name: it stays tracked, DESIGN §4.5) or deleted (an alert).
/// Returns the folder under its new name.
async fn follow_rule(
    conn: &mut Connected,
    mb: &MailboxConfig,
    store: &Store,
    rule: &Rule,
    all: &[Folder],
    taken: &[&str],
) -> Result<Option<Folder>, SyncError> {
    let addr = conn.peer.clone();
    let Some(binding) = store.rule_binding(&mb.name, &rule.folder)? else {
        store.add_alert(
            &mb.name,
            track::warning(format!(
                "rule folder `{}` does not exist on {addr}: nothing to track there yet",
                rule.folder
            )),
        )?;
        return Ok(None);
    };
    let mut found = None;
    for f in all
        .iter()
        .filter(|f| f.selectable && !taken.contains(&f.name.as_str()))
    {
        let st = timed(
            &addr,
            "STATUS",
            conn.session.status(&f.server_name, "(UIDVALIDITY)"),
        )
        .await?;
        if st.uid_validity == Some(binding.uidvalidity) {
            found = Some(f.clone());
            break;
        }
    }
    let Some(f) = found else {
        store.add_alert(
            &mb.name,
            Alert {
                level: crate::model::AlertLevel::Error,
                message: format!(
                    "tracked folder `{}` (rule `{}`) was deleted on {addr}",
                    binding.folder, rule.folder
                ),
            },
        )?;
        return Ok(None);
    };
    if f.name != binding.folder {
        tracing::info!(mailbox = %mb.name, from = %binding.folder, to = %f.name, "tracked folder renamed: still tracked");
        store.rename_folder_state(&mb.name, &binding.folder, &f.name)?;
        store.put_rule_binding(
            &mb.name,
            &rule.folder,
            &RuleBinding {
                folder: f.name.clone(),
                uidvalidity: binding.uidvalidity,
            },
        )?;
        store.add_alert(
            &mb.name,
            Alert {
                level: crate::model::AlertLevel::Info,
                message: format!(
                    "folder `{}` was renamed to `{}`; rule `{}` still tracks it",
                    binding.folder, f.name, rule.folder
                ),
            },
        )?;
    }
    Ok(Some(f))
}

/// One pass over all tracked folders of a logged-in session. With `cancel`, a cancelled pass
/// stops after the batch in hand is committed.
pub async fn pass(
    conn: &mut Connected,
    mb: &Arc<MailboxConfig>,
    limits: &FetchLimits,
    store: &Arc<Store>,
    cancel: Option<&CancellationToken>,
    progress: Option<&dyn Progress>,
) -> Result<MailboxReport, SyncError> {
    let tracked = plan(conn, mb, store).await?;
    pass_planned(conn, mb, &tracked, limits, store, cancel, progress).await
}

/// A pass over folders already [`plan`]ned.
pub async fn pass_planned(
    conn: &mut Connected,
    mb: &Arc<MailboxConfig>,
    tracked: &[Tracked],
    limits: &FetchLimits,
    store: &Arc<Store>,
    cancel: Option<&CancellationToken>,
    progress: Option<&dyn Progress>,
) -> Result<MailboxReport, SyncError> {
    // The pass began because new mail was (or may have been) detected: the latency metric
    // runs from here to each commit (see `metrics`).
    let detected = std::time::Instant::now();
    let addr = conn.peer.clone();
    // NOOP first: it syncs the selected folder, whose STATUS Dovecot would otherwise answer from
    // the session's stale view, and unlike async-imap's `noop()` it fails on a dead connection.
    timed(&addr, "NOOP", conn.session.run_command_and_check_ok("NOOP")).await?;
    let mut report = MailboxReport {
        mailbox: mb.name.clone(),
        ..Default::default()
    };
    for t in tracked {
        if cancel.is_some_and(|c| c.is_cancelled()) {
            break;
        }
        // Instrumented, not entered: a span entered across an `.await` labels whatever else
        // runs on that thread meanwhile (with 1,000 mailboxes, other mailboxes' lines).
        let span = tracing::info_span!("folder", mailbox = %mb.name, folder = %t.folder.name);
        let run = FolderRun { detected, progress };
        let synced = async {
            folder::FolderSync::new(mb, t, limits, store, cancel, &run)?
                .run(&mut conn.session, &addr)
                .await
        }
        .instrument(span.clone())
        .await;
        if let Some(p) = progress {
            p.folder_done(&mb.name, &t.folder.name);
        }
        let _e = span.enter();
        match synced? {
            Some(r) => {
                if r.new_messages > 0 || r.relinked_by_rule > 0 {
                    tracing::info!(
                        created = r.outcome.created,
                        merged = r.outcome.merged,
                        quarantined = r.outcome.quarantined,
                        relinked = r.relinked_by_rule,
                        "folder synced"
                    );
                }
                report.folders.push(r);
            }
            None => report.unchanged += 1,
        }
    }
    // Folders are read one after another: a reply may have been tracked before the message it
    // answers. Correlate what this pass created against everything now committed.
    let created: Vec<u64> = report
        .folders
        .iter_mut()
        .flat_map(|f| std::mem::take(&mut f.created))
        .collect();
    if !created.is_empty() {
        let store2 = store.clone();
        let writer = track::writer_of(mb, &**store);
        let smart = mb.crm.smart_matching.then(|| mb.crm.token.clone());
        let n = tokio::task::spawn_blocking(move || {
            store2.recorrelate_ids(&created, &writer, smart.as_ref())
        })
        .await??;
        report.late_correlated = n;
    }
    Ok(report)
}

/// The regarding a folder's rule gives now (`None` for no regarding or an unresolved one).
fn folder_regarding(t: &Tracked, store: &Store) -> Option<String> {
    rules::resolve_regarding(&t.rule_match(), store)
        .ok()
        .flatten()
        .map(|r| r.to_string())
}

/// What a folder's sync reports to, beyond the store.
pub struct FolderRun<'a> {
    /// When the pass began (the latency metric's start).
    pub detected: std::time::Instant,
    pub progress: Option<&'a dyn Progress>,
}

/// Parses and tracks one message; a parser panic quarantines it instead of killing the sync.
pub(crate) fn track_one(
    m: &RawMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    store: &Store,
    records: &dyn RecordLookup,
) -> BatchItem {
    match parse_one(m, ctx, source.clone(), store) {
        Ok(p) => build_one(p, m, ctx, source, store, records),
        Err(quarantined) => quarantined,
    }
}

/// Parses one message, or quarantines it with the reason. Attachments are stored as blobs
/// while the parsed message holds them, unless they are over `max_attachment_size` or have a
/// blocked extension (DESIGN §4.12): then they are listed with the reason.
fn parse_one(
    m: &RawMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    store: &Store,
) -> Result<parse::ParsedMessage, BatchItem> {
    #[cfg(feature = "failpoints")]
    if let Some(reason) = failpoint(&m.raw) {
        return Err(quarantined(m, source, reason));
    }
    let crm = &ctx.mailbox.crm;
    let mut blob_error = None;
    let mut sink = |a: &parse::ParsedAttachment, bytes: &[u8]| -> Option<String> {
        let ext = a
            .name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e.trim().to_ascii_lowercase());
        if let Some(ext) = ext.filter(|e| crm.blocked_extensions.contains(e)) {
            return Some(format!("blocked extension .{ext}"));
        }
        if a.size > crm.max_attachment_size {
            return Some(format!(
                "{} bytes, over max_attachment_size ({})",
                a.size, crm.max_attachment_size
            ));
        }
        match store.put_blob(&a.sha256, bytes) {
            Ok(()) => None,
            Err(e) => {
                blob_error = Some(e.to_string());
                Some("could not be stored".into())
            }
        }
    };
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse::parse_message_with(&m.raw, &mut sink)
    }));
    let reason = match (parsed, blob_error) {
        (Ok(Ok(p)), None) => return Ok(p),
        (Ok(Ok(_)), Some(e)) => format!("an attachment could not be stored: {e}"),
        (Ok(Err(e)), _) => format!("cannot parse: {e}"),
        (Err(_), _) => {
            "the parser crashed on this message (a bug: please report it with the raw message)"
                .into()
        }
    };
    Err(quarantined(m, source, reason))
}

/// Tracks a parsed message. Tracking is guarded like parsing: a bug there quarantines one
/// message, it does not take the worker (and its batch) down.
fn build_one(
    p: parse::ParsedMessage,
    m: &RawMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    store: &Store,
    records: &dyn RecordLookup,
) -> BatchItem {
    let src = source.clone();
    let high = p.high_importance;
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        track::build(p, ctx, src, m.size, records, store)
    }));
    match built {
        Ok(mut d) => {
            store.keep_body_out(&mut d.activity);
            d.seen = m.flags.as_deref().map(|flags| {
                let k = ctx.mailbox.crm.tracked_keyword.as_deref();
                let (seen, keyword) = track::fields::from_flags(flags, k);
                crate::model::CopySeen {
                    source: source.clone(),
                    seen,
                    keyword,
                }
            });
            d.high_importance = high;
            BatchItem::Tracked(Box::new(d))
        }
        Err(_) => quarantined(
            m,
            source,
            "tracking crashed on this message (a bug: please report it with the raw message)"
                .into(),
        ),
    }
}

/// A message kept in quarantine with its raw bytes and why (logged).
fn quarantined(m: &RawMessage, source: Source, reason: String) -> BatchItem {
    tracing::warn!(uid = source.uid, %reason, "message quarantined");
    BatchItem::Quarantined {
        source,
        reason,
        size: m.size,
        raw: m.raw.clone(),
    }
}

/// Parses and tracks one fetched batch: pure work, run on a blocking worker.
pub fn process_batch(
    mb: &MailboxConfig,
    t: &Tracked,
    uidvalidity: u32,
    batch: &Batch,
    msgs: Vec<RawMessage>,
    store: &Store,
) -> Vec<BatchItem> {
    let ctx = FolderContext {
        mailbox: mb,
        folder: t.folder.name.clone(),
        is_sent: t.is_sent,
        rule: (t.other.is_none()).then(|| t.rule_match()),
        other: t.other,
        writer: track::writer_of(mb, store),
    };
    let source = |uid| Source {
        mailbox: mb.name.clone(),
        folder: t.folder.name.clone(),
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
    // A batch names the same few addresses again and again: each is looked up once.
    let records = &track::MemoRecords::new(store);
    let parsed: Vec<Vec<BatchItem>> = std::thread::scope(|scope| {
        let handles: Vec<_> = msgs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    // Parsed first, so that the addresses of the whole part are looked up
                    // at once (one round trip on a database server), then tracked.
                    let parsed: Vec<_> = part
                        .iter()
                        .map(|m| (m, parse_one(m, ctx, source(m.uid), store)))
                        .collect();
                    records.prefetch(parsed.iter().filter_map(|(_, p)| p.as_ref().ok()));
                    parsed
                        .into_iter()
                        .map(|(m, p)| match p {
                            Ok(p) => build_one(p, m, ctx, source(m.uid), store, records),
                            Err(quarantined) => quarantined,
                        })
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

/// Test builds only (`--features failpoints`): `FOLDERTRACK_FAIL_TRACKING=text` makes tracking
/// fail for every message containing `text`, so the reliability tests can prove that a failed
/// message is quarantined, the folder goes on, and `quarantine replay` tracks it after the fix.
#[cfg(feature = "failpoints")]
fn failpoint(raw: &[u8]) -> Option<String> {
    let needle = std::env::var("FOLDERTRACK_FAIL_TRACKING")
        .ok()
        .filter(|n| !n.is_empty())?;
    raw.windows(needle.len())
        .any(|w| w == needle.as_bytes())
        .then(|| format!("tracking failed: injected failure (FOLDERTRACK_FAIL_TRACKING={needle})"))
}

/// Tracks a quarantined message again with the current configuration (`quarantine replay`).
/// The message is parsed and tracked exactly as a fetched one would be; it is committed with
/// its folder's checkpoint unchanged. `Err` names why it still cannot be tracked.
pub fn replay(
    config: &Config,
    store: &Store,
    source: &Source,
    raw: Vec<u8>,
) -> Result<BatchOutcome, String> {
    if raw.is_empty() {
        return Err("the message was not fetched (over max_message_size); raise max_message_size, then re-read the folder".into());
    }
    let mb = config.mailbox(&source.mailbox).ok_or_else(|| {
        format!(
            "mailbox `{}` is no longer in the configuration",
            source.mailbox
        )
    })?;
    let m = rules::match_folder(&mb.rules, &source.folder).or_else(|| {
        mb.rules
            .iter()
            .find(|r| {
                store
                    .rule_binding(&mb.name, &r.folder)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.folder == source.folder)
            })
            .map(|rule| RuleMatch {
                rule,
                capture: None,
            })
    });
    let is_sent = mb
        .sent_folder
        .as_deref()
        .map_or(source.folder.eq_ignore_ascii_case("Sent"), |s| {
            s == source.folder
        });
    let other = m
        .is_none()
        .then_some(mb.crm.track_other_mail)
        .filter(|o| *o != crate::config::OtherMail::None);
    if m.is_none() && other.is_none() {
        return Err(format!(
            "folder `{}` is no longer tracked by any rule",
            source.folder
        ));
    }
    let ctx = FolderContext {
        mailbox: mb,
        folder: source.folder.clone(),
        is_sent,
        rule: m,
        other,
        writer: track::writer_of(mb, store),
    };
    let size = raw.len() as u64;
    let item = track_one(
        &RawMessage {
            uid: source.uid,
            size,
            raw,
            flags: None,
        },
        &ctx,
        source.clone(),
        store,
        store,
    );
    if let BatchItem::Quarantined { reason, .. } = &item {
        return Err(format!("still fails: {reason}"));
    }
    let checkpoint = store
        .folder_state(&source.mailbox, &source.folder)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no checkpoint for {}/{}", source.mailbox, source.folder))?;
    let done = store
        .commit_batch(&[item], &checkpoint, &source.mailbox)
        .map_err(|e| e.to_string())?;
    Ok(done.outcome)
}
