//! The embedded CRM store (DESIGN §5) on sled 0.34: records, activities and their indexes,
//! folder checkpoints, quarantine and alerts.
//!
//! This is the one module that knows sled. A batch of tracked messages, its quarantined
//! messages and the folder checkpoint are written in **one transaction**, then flushed, so a
//! crash replays at most the unflushed batch, and the replay is idempotent: a message whose
//! source (mailbox, folder, UIDVALIDITY, UID) is already recorded is skipped, and a copy of an
//! already tracked message (same dedup key and direction) only adds its source.

mod keys;
pub(crate) mod outbox;

pub(crate) use outbox::{OutboxEntry, OutboxSummary, SendState, OUTBOX_FOLDER};

use crate::model::{
    Activity, Alert, AlertLevel, Correlation, CorrelationMethod, Direction, Draft, Record,
    RecordRef, Source,
};
use crate::track::{ActivityLookup, RecordLookup};
use fs2::FileExt;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Schema version written in `meta`; bumped with a migration when the layout changes.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// Why the store could not be opened, read or written. `Locked` is the one callers act on:
/// another process holds the data dir, and the CLI then asks the agent over its control socket.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data dir (sled lets only one open it).
    #[error("data dir {dir} is in use by another foldertrack process{}; stop it first (only one process can hold the store)", pid.as_ref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data dir.
        dir: PathBuf,
        /// The holder's pid, from the lock file, when it could be read.
        pid: Option<String>,
    },
    /// The data dir cannot be created, locked or read.
    #[error("cannot use data dir {dir}: {source}")]
    Io {
        /// The data dir.
        dir: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// sled failed.
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    /// A value that does not decode: the data dir was damaged or changed by hand.
    #[error("store holds unreadable data in {tree}: {message}")]
    Corrupt {
        /// The sled tree it is in.
        tree: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A newer foldertrack wrote the data dir; this one must not change it.
    #[error("data dir was written by a newer foldertrack (schema {found}, this one knows {SCHEMA_VERSION}); upgrade foldertrack")]
    NewerSchema {
        /// The data dir's schema version.
        found: u32,
    },
    /// Something a command names is not in the store.
    #[error("{0}")]
    NotFound(String),
    /// The data dir's filesystem is below the free space the store keeps.
    #[error("data dir {dir} has only {available_mb} MB free; foldertrack keeps at least {needed_mb} MB free so that the store never runs out of space mid-write. Free some space: tracking resumes from the last checkpoint, nothing is lost")]
    DiskFull {
        /// The data dir.
        dir: PathBuf,
        /// Free space now.
        available_mb: u64,
        /// Free space the store keeps.
        needed_mb: u64,
    },
}

/// Space kept free on the data dir's filesystem. sled 0.34 does not recover from a write
/// that fails for lack of space (its flusher waits forever: found by the full-disk test), so
/// foldertrack refuses to start a write that could get near that point.
pub(crate) const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

type Result<T> = std::result::Result<T, StoreError>;

/// Checkpoint of one folder of one mailbox (DESIGN §3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FolderState {
    pub mailbox: String,
    pub folder: String,
    pub uidvalidity: u32,
    /// Highest UID fully processed (tracked or quarantined).
    pub last_uid: u32,
    /// Server's UIDNEXT at the last sync, for the lag figure in `status`.
    pub uid_next: u32,
    pub messages: u32,
    pub last_sync: Option<String>,
    /// The rule that tracks it (its folder pattern), for `status`.
    pub rule: Option<String>,
    /// The regarding the rule gave at the last pass: when the rule's changes, the messages
    /// still in the folder are re-linked (DESIGN §4.6).
    #[serde(default)]
    pub regarding: Option<String>,
    /// UIDNEXT when a pass over the folder last *completed*: a later STATUS with the same
    /// UIDNEXT and UIDVALIDITY means nothing arrived, and the folder need not be opened.
    #[serde(default)]
    pub synced_uid_next: u32,
}

impl FolderState {
    /// Whether a server's UIDVALIDITY and UIDNEXT for the folder say that nothing arrived
    /// since a pass over it last completed (so it need not be opened).
    pub(crate) fn synced_at(&self, uidvalidity: Option<u32>, uid_next: Option<u32>) -> bool {
        self.synced_uid_next > 0
            && uidvalidity == Some(self.uidvalidity)
            && uid_next == Some(self.synced_uid_next)
    }
}

/// Which folder an exact rule is bound to, so that a renamed folder stays tracked: the folder's
/// identity is its UIDVALIDITY, which a rename keeps and a delete + create changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuleBinding {
    pub folder: String,
    pub uidvalidity: u32,
}

/// Health of one mailbox's incoming side, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MailboxState {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_errors: u32,
    /// When a pass last tracked something new (for the "nothing tracked for N hours" alert).
    #[serde(default)]
    pub last_tracked: Option<String>,
    /// The first successful pass (the quiet-mailbox alert counts from here when nothing was
    /// ever tracked).
    #[serde(default)]
    pub first_success: Option<String>,
    /// The latest outages (newest last, at most [`MAX_OUTAGES`]): when a failure began, when the
    /// next success ended it, and the first error. `status` shows them.
    #[serde(default)]
    pub outages: Vec<Outage>,
}

/// How many alerts a mailbox keeps (the most recently raised).
pub(crate) const MAX_ALERTS: usize = 100;

/// An alert not raised again for this many days is dropped.
pub(crate) const ALERT_MAX_AGE_DAYS: i64 = 30;

/// How many past outages a mailbox keeps.
pub(crate) const MAX_OUTAGES: usize = 10;

/// A stretch of time in which a mailbox's passes failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Outage {
    pub from: String,
    pub to: Option<String>,
    pub error: String,
}

impl MailboxState {
    /// A pass (or login) worked: closes an open outage.
    pub(crate) fn succeeded(&mut self) {
        let t = now();
        self.last_attempt.get_or_insert_with(|| t.clone());
        self.last_success = Some(t.clone());
        self.first_success.get_or_insert_with(|| t.clone());
        self.last_error = None;
        self.consecutive_errors = 0;
        if let Some(o) = self.outages.last_mut().filter(|o| o.to.is_none()) {
            o.to = Some(t);
        }
    }

    /// A pass tracked new mail.
    pub(crate) fn tracked(&mut self) {
        self.last_tracked = Some(now());
    }

    /// A pass failed: opens an outage unless one is open.
    pub(crate) fn failed(&mut self, error: &str) {
        self.last_error = Some(error.to_string());
        self.consecutive_errors += 1;
        if self.outages.last().is_none_or(|o| o.to.is_some()) {
            self.outages.push(Outage {
                from: now(),
                to: None,
                error: error.to_string(),
            });
            if self.outages.len() > MAX_OUTAGES {
                self.outages.remove(0);
            }
        }
    }
}

/// A message that could not be tracked, kept with its raw bytes so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuarantineEntry {
    pub id: u64,
    pub source: Source,
    pub reason: String,
    pub size: u64,
    pub at: String,
}

/// An alert with its mailbox, when it was first and last raised, and how often. The same
/// alert raised again (every sync, say) updates this one entry instead of flooding `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredAlert {
    pub at: String,
    pub first_at: String,
    pub count: u64,
    pub mailbox: String,
    #[serde(flatten)]
    pub alert: Alert,
}

impl StoredAlert {
    /// Raises `alert` again: the updated entry for `previous` (if any).
    fn raise(previous: Option<&[u8]>, mailbox: &str, alert: &Alert, at: &str) -> StoredAlert {
        match previous.and_then(|p| serde_json::from_slice::<StoredAlert>(p).ok()) {
            Some(mut p) => {
                p.at = at.to_string();
                p.count += 1;
                p.alert.level = alert.level;
                p
            }
            None => StoredAlert {
                at: at.into(),
                first_at: at.into(),
                count: 1,
                mailbox: mailbox.into(),
                alert: alert.clone(),
            },
        }
    }
}

/// One message's outcome, ready to be written.
#[derive(Debug, Clone)]
pub(crate) enum BatchItem {
    Tracked(Box<Draft>),
    Quarantined {
        source: Source,
        reason: String,
        raw: Vec<u8>,
        size: u64,
    },
}

/// A committed batch: what it did, the UIDs now tracked (for write-back) and the new
/// activities (for late correlation).
#[derive(Debug, Clone, Default)]
pub(crate) struct Committed {
    pub outcome: BatchOutcome,
    pub tracked_uids: Vec<u32>,
    /// The new activities, without body and attachments (late correlation needs the headers).
    pub created: Vec<Activity>,
}

/// What a committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct BatchOutcome {
    /// New activities.
    pub created: u32,
    /// Copies of an existing activity (same Message-ID and direction): source added.
    pub merged: u32,
    /// Already recorded from this very source (a replay after a crash).
    pub replayed: u32,
    pub quarantined: u32,
    /// Merged copies that moved the activity to their folder's regarding.
    pub relinked: u32,
    /// Other mail (INBOX, Sent) that the mailbox's `track_other_mail` filter left out.
    pub skipped: u32,
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, o: Self) {
        self.created += o.created;
        self.merged += o.merged;
        self.replayed += o.replayed;
        self.quarantined += o.quarantined;
        self.relinked += o.relinked;
        self.skipped += o.skipped;
    }
}

/// The store of one data dir. Holding it holds the data dir's lock.
pub struct Store {
    db: sled::Db,
    t: Trees,
    dir: PathBuf,
    pack: std::sync::Mutex<Pack>,
    _lock: File,
}

/// A pack file is closed for appends past this size and a new one started.
const PACK_LIMIT: u64 = 1 << 30;

/// The pack file blobs are appended to.
#[derive(Default)]
struct Pack {
    file: Option<File>,
    number: u64,
    len: u64,
    dirty: bool,
}

struct Trees {
    meta: sled::Tree,
    records: sled::Tree,
    record_by_email: sled::Tree,
    record_by_name: sled::Tree,
    activities: sled::Tree,
    activity_by_msgid: sled::Tree,
    activity_by_source: sled::Tree,
    activity_by_regarding: sled::Tree,
    folders: sled::Tree,
    mailboxes: sled::Tree,
    quarantine: sled::Tree,
    quarantine_raw: sled::Tree,
    quarantine_by_source: sled::Tree,
    alerts: sled::Tree,
    manual_links: sled::Tree,
    rule_bindings: sled::Tree,
    activity_by_token: sled::Tree,
    activity_by_thread: sled::Tree,
    activity_by_subject: sled::Tree,
    activity_by_parent: sled::Tree,
    blobs: sled::Tree,
    outbox: sled::Tree,
}

fn now() -> String {
    crate::time::humantime_now()
}

/// The "mailbox" of alerts about the store itself (the data dir's permissions): `status`
/// shows them apart from any mailbox's.
pub(crate) const STORE_ALERTS: &str = "";

/// Creates `dir` (and missing parents) mode 0700 whatever the umask: the store holds every
/// tracked mail, its attachments and the CRM records. An existing directory is left as the
/// admin made it; its mode is returned when its group or others may read or enter it.
fn private_dir(dir: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::metadata(dir) {
        Ok(md) => {
            let mode = md.permissions().mode() & 0o777;
            Ok((mode & 0o077 != 0).then_some(mode))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // DirBuilder's mode passes through the umask too; 0700 only loses bits to it, but a
            // umask of 0077 and more must not leave the owner without access either.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Options for a store file: created 0600 whatever the umask.
fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(0o600);
    o
}

/// Takes group and other access away from every file and directory below `dir` (not `dir`
/// itself: see [`private_dir`]), without following symlinks. A few dozen entries: sled's files,
/// the blob packs, the lock and the control socket.
fn close_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let md = entry.metadata()?; // of the entry itself: a symlink is not followed
            if md.file_type().is_symlink() {
                continue;
            }
            if md.is_dir() {
                todo.push(entry.path());
            }
            let mode = md.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                let fixed = if md.is_dir() { 0o700 } else { mode & 0o700 };
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(fixed))?;
            }
        }
    }
    Ok(())
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

/// An activity as stored: without its body text when that is in the blob packs.
fn enc_activity(a: &mut Activity) -> Vec<u8> {
    if a.body_blob.is_none() || a.body_text.is_empty() {
        return enc(a);
    }
    let body = std::mem::take(&mut a.body_text);
    let v = enc(a);
    a.body_text = body;
    v
}

fn dec<T: DeserializeOwned>(tree: &'static str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

fn abort<E: std::fmt::Display>(e: E) -> ConflictableTransactionError<String> {
    ConflictableTransactionError::Abort(e.to_string())
}

fn tx_err(e: TransactionError<String>) -> StoreError {
    match e {
        TransactionError::Abort(m) => StoreError::Corrupt {
            tree: "transaction",
            message: m,
        },
        TransactionError::Storage(s) => StoreError::Sled(s),
    }
}

impl Store {
    /// Opens (creating) the store in `dir`, taking its lock.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it; I/O errors name the dir.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let io = |source| StoreError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let open_mode = private_dir(dir).map_err(io)?;
        let lock_path = dir.join("foldertrack.lock");
        let mut lock = private_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io)?;
        if lock.try_lock_exclusive().is_err() {
            let pid = std::fs::read_to_string(&lock_path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        lock.set_len(0).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(source) if source.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked {
                        dir: dir.to_path_buf(),
                        pid: None,
                    }
                }
                e => StoreError::Sled(e),
            })?;
        let tree = |n: &str| db.open_tree(n);
        let t = Trees {
            meta: tree("meta")?,
            records: tree("records")?,
            record_by_email: tree("record_by_email")?,
            record_by_name: tree("record_by_name")?,
            activities: tree("activities")?,
            activity_by_msgid: tree("activity_by_msgid")?,
            activity_by_source: tree("activity_by_source")?,
            activity_by_regarding: tree("activity_by_regarding")?,
            folders: tree("folders")?,
            mailboxes: tree("mailboxes")?,
            quarantine: tree("quarantine")?,
            quarantine_raw: tree("quarantine_raw")?,
            quarantine_by_source: tree("quarantine_by_source")?,
            alerts: tree("alerts")?,
            manual_links: tree("manual_links")?,
            rule_bindings: tree("rule_bindings")?,
            activity_by_token: tree("activity_by_token")?,
            activity_by_thread: tree("activity_by_thread")?,
            activity_by_subject: tree("activity_by_subject")?,
            activity_by_parent: tree("activity_by_parent")?,
            blobs: tree("blobs")?,
            outbox: tree("outbox")?,
        };
        let store = Store {
            db,
            t,
            dir: dir.to_path_buf(),
            pack: Default::default(),
            _lock: lock,
        };
        store.migrate()?;
        // sled creates its files with the process umask: a library caller (or a store left by
        // an older foldertrack) may have them open to others.
        close_files(dir).map_err(io)?;
        if let Some(mode) = open_mode {
            let message = format!(
                "data dir {} is readable by its group or others (mode {mode:o}): it holds every tracked mail; chmod 700 {}",
                dir.display(),
                dir.display()
            );
            tracing::warn!("{message}");
            store.add_alert(
                STORE_ALERTS,
                Alert {
                    level: AlertLevel::Warning,
                    message,
                },
            )?;
        }
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        match self.t.meta.get("schema_version")? {
            None => {
                self.t
                    .meta
                    .insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) => {
                let found: u32 = String::from_utf8_lossy(&v).parse().unwrap_or(0);
                if found > SCHEMA_VERSION {
                    Err(StoreError::NewerSchema { found })
                } else {
                    Ok(())
                }
            }
        }
    }

    pub(crate) fn schema_version(&self) -> Result<u32> {
        Ok(self
            .t
            .meta
            .get("schema_version")?
            .map(|v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
            .unwrap_or(0))
    }

    /// Makes everything written so far durable.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    // ---- records -------------------------------------------------------------------------

    /// Inserts or replaces records, all or none, and flushes.
    pub(crate) fn put_records(&self, recs: &[Record]) -> Result<()> {
        let trees = [
            &self.t.records,
            &self.t.record_by_email,
            &self.t.record_by_name,
        ];
        trees
            .transaction(|tx| {
                let (records, by_email, by_name) = (&tx[0], &tx[1], &tx[2]);
                for r in recs {
                    let rref = r.reference().to_string();
                    if let Some(old) = records.get(rref.as_bytes())? {
                        let old: Record = serde_json::from_slice(&old).map_err(abort)?;
                        for e in &old.emails {
                            by_email.remove(keys::record_email(e, &rref))?;
                        }
                        by_name.remove(keys::record_name(&old.rtype, &old.name, &rref))?;
                    }
                    records.insert(rref.as_bytes(), enc(r))?;
                    for e in &r.emails {
                        by_email.insert(keys::record_email(e, &rref), &[])?;
                    }
                    by_name.insert(keys::record_name(&r.rtype, &r.name, &rref), &[])?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    pub(crate) fn record(&self, r: &RecordRef) -> Result<Option<Record>> {
        self.t
            .records
            .get(r.to_string().as_bytes())?
            .map(|v| dec("records", &v))
            .transpose()
    }

    /// All records, optionally of one type, in key order.
    pub(crate) fn records(&self, rtype: Option<&str>) -> Result<Vec<Record>> {
        let prefix = rtype.map(|t| format!("{t}:")).unwrap_or_default();
        self.t
            .records
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (_, v) = kv?;
                dec("records", &v)
            })
            .collect()
    }

    /// Index keys end with the record's `type:key` after `prefix`.
    fn records_from_index(&self, tree: &sled::Tree, prefix: Vec<u8>) -> Vec<Record> {
        tree.scan_prefix(&prefix)
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, _)| String::from_utf8(k[prefix.len()..].to_vec()).ok())
            .filter_map(|r| r.parse::<RecordRef>().ok())
            .filter_map(|r| self.record(&r).ok().flatten())
            .collect()
    }

    // ---- activities ----------------------------------------------------------------------

    pub(crate) fn activity(&self, id: u64) -> Result<Option<Activity>> {
        self.t
            .activities
            .get(id.to_be_bytes())?
            .map(|v| self.dec_activity(&v))
            .transpose()
    }

    /// Decodes a stored activity, its body text read back from the packs.
    fn dec_activity(&self, v: &[u8]) -> Result<Activity> {
        let mut a: Activity = dec("activities", v)?;
        if let (Some(sha), true) = (&a.body_blob, a.body_text.is_empty()) {
            let body = self.blob(sha)?.ok_or_else(|| StoreError::Corrupt {
                tree: "activities",
                message: format!("activity {}: body {sha} missing from the blob packs", a.id),
            })?;
            a.body_text = String::from_utf8_lossy(&body).into_owned();
        }
        Ok(a)
    }

    /// Keeps a new activity's body text in the blob packs (sha256-addressed, so two copies of
    /// one mail share it), unless it is short. On failure (a full disk) it stays inline.
    pub(crate) fn keep_body_out(&self, a: &mut Activity) {
        if a.body_text.len() < 512 || a.body_blob.is_some() {
            return;
        }
        use sha2::Digest as _;
        let sha = hex::encode(sha2::Sha256::digest(a.body_text.as_bytes()));
        if self.put_blob(&sha, a.body_text.as_bytes()).is_ok() {
            a.body_blob = Some(sha);
        }
    }

    /// Activities in id (= tracking time) order; `regarding` filters by the linked record.
    pub(crate) fn activities(&self, regarding: Option<&RecordRef>) -> Result<Vec<Activity>> {
        match regarding {
            None => self
                .t
                .activities
                .iter()
                .map(|kv| {
                    let (_, v) = kv?;
                    self.dec_activity(&v)
                })
                .collect(),
            Some(r) => {
                let prefix = keys::regarding_prefix(&r.to_string());
                let mut out = Vec::new();
                for kv in self.t.activity_by_regarding.scan_prefix(&prefix) {
                    let (k, _) = kv?;
                    let id = keys::u64_suffix(&k);
                    if let Some(a) = self.activity(id)? {
                        out.push(a);
                    }
                }
                Ok(out)
            }
        }
    }

    /// The activity of the same message in the other direction (sent copy ↔ received copy).
    pub(crate) fn counterpart(&self, a: &Activity) -> Result<Option<u64>> {
        let other = match a.direction {
            Direction::Incoming => Direction::Outgoing,
            Direction::Outgoing => Direction::Incoming,
        };
        Ok(self
            .t
            .activity_by_msgid
            .get(keys::msgid(&a.dedup_key, other))?
            .map(|v| keys::u64_of(&v)))
    }

    /// Bytes on disk of the sled store plus the attachment pack files (for metrics).
    pub(crate) fn disk_usage(&self) -> u64 {
        let packs: u64 = std::fs::read_dir(self.dir.join("blobs"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        self.db.size_on_disk().unwrap_or(0) + packs
    }

    /// Every activity in id (= tracking time) order, read one at a time: exports stream
    /// through this without holding the store in memory.
    pub(crate) fn activities_iter(&self) -> impl Iterator<Item = Result<Activity>> + '_ {
        self.t.activities.iter().map(|kv| {
            kv.map_err(StoreError::from)
                .and_then(|(_, v)| dec("activities", &v))
        })
    }

    /// Every record (of `rtype`, if given) in `type:key` order, read one at a time (see
    /// [`Store::activities_iter`]).
    pub(crate) fn records_iter(
        &self,
        rtype: Option<&str>,
    ) -> impl Iterator<Item = Result<Record>> + '_ {
        let prefix = rtype.map(|t| format!("{t}:")).unwrap_or_default();
        self.t.records.scan_prefix(prefix.as_bytes()).map(|kv| {
            kv.map_err(StoreError::from)
                .and_then(|(_, v)| dec("records", &v))
        })
    }

    pub(crate) fn activity_count(&self) -> usize {
        self.t.activities.len()
    }

    /// The activity tracked from this exact source, if any.
    pub(crate) fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        Ok(self
            .t
            .activity_by_source
            .get(keys::source(s))?
            .map(|v| keys::u64_of(&v)))
    }

    // ---- folders, mailboxes, alerts, quarantine ----------------------------------------------

    pub(crate) fn folder_state(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>> {
        self.t
            .folders
            .get(keys::folder(mailbox, folder))?
            .map(|v| dec("folders", &v))
            .transpose()
    }

    pub(crate) fn folder_states(&self) -> Result<Vec<FolderState>> {
        self.t
            .folders
            .iter()
            .map(|kv| dec("folders", &kv?.1))
            .collect()
    }

    /// Writes a folder checkpoint on its own (e.g. a folder seen for the first time, or empty).
    pub(crate) fn put_folder_state(&self, st: &FolderState) -> Result<()> {
        self.t
            .folders
            .insert(keys::folder(&st.mailbox, &st.folder), enc(st))?;
        Ok(())
    }

    pub(crate) fn mailbox_state(&self, name: &str) -> Result<MailboxState> {
        Ok(self
            .t
            .mailboxes
            .get(name.as_bytes())?
            .map(|v| dec::<MailboxState>("mailboxes", &v))
            .transpose()?
            .map(|s| MailboxState {
                name: name.into(),
                ..s
            })
            .unwrap_or_else(|| MailboxState {
                name: name.into(),
                ..Default::default()
            }))
    }

    pub(crate) fn put_mailbox_state(&self, st: &MailboxState) -> Result<()> {
        self.t.mailboxes.insert(st.name.as_bytes(), enc(st))?;
        self.flush()
    }

    pub(crate) fn add_alert(&self, mailbox: &str, alert: Alert) -> Result<()> {
        let key = keys::alert(mailbox, &alert.message);
        let at = now();
        self.t.alerts.fetch_and_update(&key, |prev| {
            Some(enc(&StoredAlert::raise(prev, mailbox, &alert, &at)))
        })?;
        self.prune_alerts(mailbox)
    }

    /// Alerts are keyed by their text, and much of that text comes from servers and senders
    /// (an error message, a folder name): without a bound, a server that words each failure a
    /// little differently grows the store for ever. A mailbox keeps its [`MAX_ALERTS`] most
    /// recently raised alerts, none older than [`ALERT_MAX_AGE_DAYS`].
    fn prune_alerts(&self, mailbox: &str) -> Result<()> {
        let mut prefix = mailbox.as_bytes().to_vec();
        prefix.push(0);
        let oldest = crate::time::unix_now() - ALERT_MAX_AGE_DAYS * 86_400;
        let mut kept = Vec::new();
        for kv in self.t.alerts.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let at = serde_json::from_slice::<StoredAlert>(&v)
                .map(|a| crate::time::parse_date(&a.at))
                .unwrap_or(0);
            if at < oldest {
                self.t.alerts.remove(&k)?;
            } else {
                kept.push((at, k));
            }
        }
        if kept.len() > MAX_ALERTS {
            kept.sort();
            for (_, k) in &kept[..kept.len() - MAX_ALERTS] {
                self.t.alerts.remove(k)?;
            }
        }
        Ok(())
    }

    /// The `n` most recently raised alerts, newest first.
    pub(crate) fn alerts(&self, n: usize) -> Result<Vec<StoredAlert>> {
        let mut all: Vec<StoredAlert> = self
            .t
            .alerts
            .iter()
            .map(|kv| dec("alerts", &kv?.1))
            .collect::<Result<_>>()?;
        all.sort_by(|a, b| b.at.cmp(&a.at));
        all.truncate(n);
        Ok(all)
    }

    pub(crate) fn quarantine(&self) -> Result<Vec<QuarantineEntry>> {
        self.t
            .quarantine
            .iter()
            .map(|kv| dec("quarantine", &kv?.1))
            .collect()
    }

    /// One quarantined message, by id (a point read, not a scan of the quarantine).
    pub(crate) fn quarantine_entry(&self, id: u64) -> Result<Option<QuarantineEntry>> {
        self.t
            .quarantine
            .get(id.to_be_bytes())?
            .map(|v| dec("quarantine", &v))
            .transpose()
    }

    /// Removes a quarantined message (after a successful replay, or `quarantine drop`).
    pub(crate) fn quarantine_remove(&self, id: u64) -> Result<bool> {
        let Some(v) = self.t.quarantine.remove(id.to_be_bytes())? else {
            return Ok(false);
        };
        let e: QuarantineEntry = dec("quarantine", &v)?;
        self.t.quarantine_raw.remove(id.to_be_bytes())?;
        self.t
            .quarantine_by_source
            .remove(keys::source(&e.source))?;
        self.flush()?;
        Ok(true)
    }

    pub(crate) fn quarantine_raw(&self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .t
            .quarantine_raw
            .get(id.to_be_bytes())?
            .map(|v| v.to_vec()))
    }

    pub(crate) fn quarantine_count(&self) -> usize {
        self.t.quarantine.len()
    }

    // ---- links, bindings ----------------------------------------------------------------------

    /// Sets an activity's regarding by hand and remembers that it was by hand. `false` when
    /// there is no such activity.
    pub(crate) fn link_by_hand(&self, id: u64, r: &RecordRef) -> Result<bool> {
        let found = self.relink(id, Some(&r.to_string()))?;
        if found {
            self.t.manual_links.insert(id.to_be_bytes(), &[])?;
            self.flush()?;
        }
        Ok(found)
    }

    /// Points an activity at `regarding` (or at nothing), index included. `false` when the
    /// activity does not exist.
    pub(crate) fn relink(&self, id: u64, regarding: Option<&str>) -> Result<bool> {
        let trees = [&self.t.activities, &self.t.activity_by_regarding];
        let found = trees
            .transaction(|tx| {
                let (acts, by_reg) = (&tx[0], &tx[1]);
                let Some(v) = acts.get(id.to_be_bytes())? else {
                    return Ok(false);
                };
                let mut a: Activity = serde_json::from_slice(&v).map_err(abort)?;
                if a.regarding.as_deref() == regarding {
                    return Ok(true);
                }
                set_regarding(by_reg, &mut a, id, regarding.map(str::to_string))?;
                acts.insert(&id.to_be_bytes(), enc_activity(&mut a))?;
                Ok(true)
            })
            .map_err(tx_err)?;
        Ok(found)
    }

    /// Activities linked by hand whose first or other source is in `mailbox`/`folder`, with
    /// the UID they have there.
    pub(crate) fn manual_links_in(&self, mailbox: &str, folder: &str) -> Result<Vec<(u64, u32)>> {
        let mut out = Vec::new();
        for kv in self.t.manual_links.iter() {
            let id = keys::u64_of(&kv?.0);
            if let Some(a) = self.activity(id)? {
                if let Some(s) = std::iter::once(&a.source)
                    .chain(&a.other_sources)
                    .find(|s| s.mailbox == mailbox && s.folder == folder)
                {
                    out.push((id, s.uid));
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn clear_manual_link(&self, id: u64) -> Result<()> {
        self.t.manual_links.remove(id.to_be_bytes())?;
        Ok(())
    }

    pub(crate) fn rule_binding(&self, mailbox: &str, rule: &str) -> Result<Option<RuleBinding>> {
        self.t
            .rule_bindings
            .get(keys::folder(mailbox, rule))?
            .map(|v| dec("rule_bindings", &v))
            .transpose()
    }

    pub(crate) fn put_rule_binding(
        &self,
        mailbox: &str,
        rule: &str,
        b: &RuleBinding,
    ) -> Result<()> {
        self.t
            .rule_bindings
            .insert(keys::folder(mailbox, rule), enc(b))?;
        Ok(())
    }

    /// Moves a folder's checkpoint to its new name after a rename, so nothing is read again.
    pub(crate) fn rename_folder_state(&self, mailbox: &str, from: &str, to: &str) -> Result<()> {
        if let Some(mut st) = self.folder_state(mailbox, from)? {
            st.folder = to.to_string();
            self.t.folders.insert(keys::folder(mailbox, to), enc(&st))?;
            self.t.folders.remove(keys::folder(mailbox, from))?;
            self.flush()?;
        }
        Ok(())
    }

    /// Fails with [`StoreError::DiskFull`] unless `extra` bytes and [`MIN_FREE_BYTES`] fit.
    pub(crate) fn ensure_space(&self, extra: u64) -> Result<()> {
        let available = fs2::available_space(&self.dir).map_err(|source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        })?;
        let needed = MIN_FREE_BYTES + 2 * extra;
        if available < needed {
            return Err(StoreError::DiskFull {
                dir: self.dir.clone(),
                available_mb: available >> 20,
                needed_mb: needed.div_ceil(1 << 20),
            });
        }
        Ok(())
    }

    // ---- late correlation -------------------------------------------------------------------

    /// Correlates what the batch transactions could not: folders are read one after another,
    /// so a reply can be tracked before the message it answers. For each activity created in a
    /// pass, this tries again against everything committed, and links the activities tracked
    /// earlier that turn out to answer it (by In-Reply-To/References, token, Thread-Index).
    /// A late-correlated activity inherits the regarding like an early one, if `writer` may
    /// write it. Returns how many activities were correlated.
    /// With `smart` (the mailbox's token format), smart matching runs too.
    /// [`Store::recorrelate`] for activities given by id, read back a few hundred at a time
    /// (without their bodies), so memory does not grow with the pass.
    pub(crate) fn recorrelate_ids(
        &self,
        ids: &[u64],
        writer: &crate::model::Writer,
        smart: Option<&crate::token::TokenFormat>,
    ) -> Result<u32> {
        let mut n = 0;
        for chunk in ids.chunks(256) {
            let mut acts = Vec::with_capacity(chunk.len());
            for id in chunk {
                if let Some(a) = self.activity_meta(*id)? {
                    acts.push(a);
                }
            }
            n += self.recorrelate(&acts, writer, smart)?;
        }
        Ok(n)
    }

    /// An activity without its body text (when that is in the packs) and attachments list:
    /// what correlation looks at.
    fn activity_meta(&self, id: u64) -> Result<Option<Activity>> {
        self.t
            .activities
            .get(id.to_be_bytes())?
            .map(|v| dec("activities", &v))
            .transpose()
    }

    pub(crate) fn recorrelate(
        &self,
        created: &[Activity],
        writer: &crate::model::Writer,
        smart: Option<&crate::token::TokenFormat>,
    ) -> Result<u32> {
        let mut n = 0;
        for x in created {
            let id = x.id;
            if x.correlation.is_none() {
                let c = correlate(self, x).or_else(|| smart.and_then(|t| self.smart_match(x, t)));
                if let Some(c) = c {
                    n += u32::from(self.correlate_late(id, c, writer)?);
                }
            }
            let mut children: Vec<(u64, CorrelationMethod)> = Vec::new();
            if let Some(m) = &x.message_id {
                for kv in self
                    .t
                    .activity_by_parent
                    .scan_prefix(keys::regarding_prefix(m))
                {
                    children.push((keys::u64_suffix(&kv?.0), CorrelationMethod::References));
                }
            }
            if let Some(ti) = x.thread_index.as_deref().and_then(thread_bytes) {
                for kv in self.t.activity_by_thread.scan_prefix(&ti) {
                    let (k, v) = kv?;
                    if k.len() > ti.len() {
                        children.push((keys::u64_of(&v), CorrelationMethod::ThreadIndex));
                    }
                }
            }
            if let Some(t) = &x.token {
                if let Some(other) = self.get_token(t).filter(|o| *o != id) {
                    children.push((other, CorrelationMethod::Token));
                }
            }
            for (child, method) in children {
                let Some(c) = self.activity_meta(child)? else {
                    continue;
                };
                if c.correlation.is_some() || child == id || !not_after(x, &c) {
                    continue;
                }
                let method =
                    if method == CorrelationMethod::References && c.in_reply_to == x.message_id {
                        CorrelationMethod::InReplyTo
                    } else {
                        method
                    };
                n += u32::from(self.correlate_late(
                    child,
                    Correlation {
                        method,
                        activity: id,
                    },
                    writer,
                )?);
            }
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// Smart matching (DESIGN §4.10): an earlier activity with the same subject words and at
    /// least two addresses in common.
    fn smart_match(&self, x: &Activity, token: &crate::token::TokenFormat) -> Option<Correlation> {
        let norm = crate::track::normalise_subject(x.subject.as_deref()?, token);
        if norm.split_whitespace().count() < 2 {
            return None;
        }
        let mine: Vec<&str> = x
            .from
            .iter()
            .chain(&x.to)
            .chain(&x.cc)
            .filter_map(|p| p.address.as_deref())
            .collect();
        crate::track::ActivityLookup::by_subject(self, &norm)
            .into_iter()
            .filter(|(id, addrs)| {
                *id != x.id && addrs.iter().filter(|a| mine.contains(&a.as_str())).count() >= 2
            })
            .filter(|(id, _)| {
                self.activity(*id)
                    .ok()
                    .flatten()
                    .is_some_and(|e| not_after(&e, x))
            })
            .map(|(id, _)| Correlation {
                method: CorrelationMethod::Smart,
                activity: id,
            })
            .min_by_key(|c| c.activity)
    }

    fn correlate_late(
        &self,
        id: u64,
        c: Correlation,
        writer: &crate::model::Writer,
    ) -> Result<bool> {
        let Some(mut a) = self.activity(id)? else {
            return Ok(false);
        };
        let parent_regarding = self.activity(c.activity)?.and_then(|p| p.regarding);
        a.correlation = Some(c);
        let mut relink = None;
        if a.inherits && a.regarding.is_none() {
            if let Some(r) = parent_regarding {
                let allowed = r
                    .parse::<RecordRef>()
                    .ok()
                    .and_then(|rr| self.record(&rr).ok().flatten())
                    .is_none_or(|rec| writer.can_write(&rec));
                if allowed {
                    relink = Some(r);
                }
            }
        }
        self.t
            .activities
            .insert(id.to_be_bytes(), enc_activity(&mut a))?;
        if let Some(r) = relink {
            self.relink(id, Some(&r))?;
        }
        Ok(true)
    }

    // ---- attachment blobs --------------------------------------------------------------------

    /// Stores an attachment under its sha256, once: an identical file tracked again costs
    /// nothing. Blobs are appended to pack files (`data_dir/blobs/pack-N`), indexed by hash in
    /// sled: attachments are most of the bytes, and a file per attachment made the kernel's
    /// inode allocation the bottleneck of a large sync (measured: +2 s for 1,000 files on
    /// this VM's ext4). The pack is synced to disk before the batch that refers to it commits.
    pub(crate) fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        self.ensure_space(bytes.len() as u64)?;
        let io = |source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        };
        let mut pack = self.pack.lock().map_err(|_| StoreError::Corrupt {
            tree: "blobs",
            message: "pack writer poisoned".into(),
        })?;
        if self.t.blobs.contains_key(sha256.as_bytes())? {
            return Ok(());
        }
        if pack.file.is_none() || pack.len > PACK_LIMIT {
            let dir = self.dir.join("blobs");
            private_dir(&dir).map_err(io)?;
            let n = self
                .t
                .meta
                .get("next_pack")?
                .map(|v| keys::u64_of(&v))
                .unwrap_or(0);
            let f = private_file()
                .create(true)
                .append(true)
                .read(true)
                .open(dir.join(format!("pack-{n}")))
                .map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            self.t.meta.insert("next_pack", &(n + 1).to_be_bytes())?;
            *pack = Pack {
                file: Some(f),
                number: n,
                len,
                dirty: false,
            };
        }
        let Pack {
            file: Some(f),
            number,
            len,
            ..
        } = &mut *pack
        else {
            unreachable!("opened above")
        };
        if let Err(e) = f.write_all(bytes) {
            // A partial write (a full disk) leaves bytes past `len`: reopen next time, so the
            // next blob's offset is read from the file, not assumed.
            *pack = Pack::default();
            return Err(io(e));
        }
        let mut loc = Vec::with_capacity(24);
        loc.extend_from_slice(&number.to_be_bytes());
        loc.extend_from_slice(&len.to_be_bytes());
        loc.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        *len += bytes.len() as u64;
        pack.dirty = true;
        self.t.blobs.insert(sha256.as_bytes(), loc)?;
        Ok(())
    }

    /// Makes appended blobs durable before a batch that refers to them commits.
    fn sync_pack(&self) -> Result<()> {
        if let Ok(mut pack) = self.pack.lock() {
            if pack.dirty {
                if let Some(f) = &pack.file {
                    f.sync_data().map_err(|source| StoreError::Io {
                        dir: self.dir.clone(),
                        source,
                    })?;
                }
                pack.dirty = false;
            }
        }
        Ok(())
    }

    pub(crate) fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let Some(loc) = self.t.blobs.get(sha256.as_bytes())? else {
            return Ok(None);
        };
        if loc.len() != 24 {
            return Err(StoreError::Corrupt {
                tree: "blobs",
                message: format!("bad location for {sha256}"),
            });
        }
        let (n, off, len) = (
            keys::u64_of(&loc[..8]),
            keys::u64_of(&loc[8..16]),
            keys::u64_of(&loc[16..]),
        );
        let io = |source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        };
        let f = File::open(self.dir.join("blobs").join(format!("pack-{n}"))).map_err(io)?;
        let mut buf = vec![0; len as usize];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut buf, off).map_err(io)?;
        Ok(Some(buf))
    }

    // ---- the batch transaction -------------------------------------------------------------

    /// Writes one batch and the folder checkpoint atomically, then flushes.
    ///
    /// Idempotent: replaying a batch whose sources are recorded changes nothing but the
    /// checkpoint. Activities get their `id`, `tracked_at`, correlation and inherited
    /// regarding here, where earlier messages of the same batch are visible.
    /// Returns what it did, and the UIDs whose messages are now tracked (for write-back).
    pub(crate) fn commit_batch(
        &self,
        items: &[BatchItem],
        checkpoint: &FolderState,
        alerts_mailbox: &str,
    ) -> Result<Committed> {
        let trees = self.tx_trees();
        let bytes: u64 = items
            .iter()
            .map(|i| match i {
                BatchItem::Tracked(d) => d.activity.body_text.len() as u64 + 4096,
                BatchItem::Quarantined { raw, .. } => raw.len() as u64 + 1024,
            })
            .sum();
        self.ensure_space(bytes)?;
        self.sync_pack()?;
        let at = now();
        let outcome = trees
            .transaction(|tx| {
                let tx = Tx::new(tx);
                let mut out = BatchOutcome::default();
                let mut tracked = Vec::new();
                let mut created = Vec::new();
                for item in items {
                    match item {
                        BatchItem::Tracked(d) => {
                            if apply_activity(&tx, d, &at, alerts_mailbox, &mut out, &mut created)?
                            {
                                tracked.push(d.activity.source.uid);
                            }
                        }
                        BatchItem::Quarantined {
                            source,
                            reason,
                            raw,
                            size,
                        } => {
                            let skey = keys::source(source);
                            if tx.quarantine_by_source.get(&skey)?.is_some()
                                || tx.by_source.get(&skey)?.is_some()
                            {
                                out.replayed += 1;
                                continue;
                            }
                            let id = next_id(tx.meta, "next_quarantine_id")?;
                            let e = QuarantineEntry {
                                id,
                                source: source.clone(),
                                reason: reason.clone(),
                                size: *size,
                                at: at.clone(),
                            };
                            tx.quarantine.insert(&id.to_be_bytes(), enc(&e))?;
                            tx.quarantine_raw
                                .insert(&id.to_be_bytes(), raw.as_slice())?;
                            tx.quarantine_by_source.insert(skey, &id.to_be_bytes())?;
                            out.quarantined += 1;
                        }
                    }
                }
                tx.folders.insert(
                    keys::folder(&checkpoint.mailbox, &checkpoint.folder),
                    enc(checkpoint),
                )?;
                Ok(Committed {
                    outcome: out,
                    tracked_uids: tracked,
                    created,
                })
            })
            .map_err(tx_err)?;
        let raised_alerts = items
            .iter()
            .any(|i| matches!(i, BatchItem::Tracked(d) if !d.activity.alerts.is_empty()));
        if raised_alerts {
            self.prune_alerts(alerts_mailbox)?;
        }
        self.flush()?;
        Ok(outcome)
    }
}

/// The batch transaction's trees by name (sled hands them over as a slice).
struct Tx<'a> {
    acts: &'a TransactionalTree,
    by_msgid: &'a TransactionalTree,
    by_source: &'a TransactionalTree,
    by_regarding: &'a TransactionalTree,
    folders: &'a TransactionalTree,
    quarantine: &'a TransactionalTree,
    quarantine_raw: &'a TransactionalTree,
    quarantine_by_source: &'a TransactionalTree,
    alerts: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    by_token: &'a TransactionalTree,
    by_thread: &'a TransactionalTree,
    by_subject: &'a TransactionalTree,
    records: &'a TransactionalTree,
    record_by_email: &'a TransactionalTree,
    record_by_name: &'a TransactionalTree,
    by_parent: &'a TransactionalTree,
}

/// How many trees [`Tx`] holds. A transaction may put more trees after them (the outbox does).
const TX_TREES: usize = 17;

impl Store {
    /// The trees of the batch transaction, in the order [`Tx::new`] names them.
    fn tx_trees(&self) -> [&sled::Tree; TX_TREES] {
        let t = &self.t;
        [
            &t.activities,
            &t.activity_by_msgid,
            &t.activity_by_source,
            &t.activity_by_regarding,
            &t.folders,
            &t.quarantine,
            &t.quarantine_raw,
            &t.quarantine_by_source,
            &t.alerts,
            &t.meta,
            &t.activity_by_token,
            &t.activity_by_thread,
            &t.activity_by_subject,
            &t.records,
            &t.record_by_email,
            &t.record_by_name,
            &t.activity_by_parent,
        ]
    }
}

impl<'a> Tx<'a> {
    fn new(t: &'a [TransactionalTree]) -> Tx<'a> {
        Tx {
            acts: &t[0],
            by_msgid: &t[1],
            by_source: &t[2],
            by_regarding: &t[3],
            folders: &t[4],
            quarantine: &t[5],
            quarantine_raw: &t[6],
            quarantine_by_source: &t[7],
            alerts: &t[8],
            meta: &t[9],
            by_token: &t[10],
            by_thread: &t[11],
            by_subject: &t[12],
            records: &t[13],
            record_by_email: &t[14],
            record_by_name: &t[15],
            by_parent: &t[16],
        }
    }
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<String>>;

/// Dense, restart-proof ids (sled's `generate_id` jumps by a million after a restart, which
/// makes poor activity numbers for people to type).
fn next_id(meta: &TransactionalTree, counter: &str) -> TxResult<u64> {
    let cur = meta.get(counter)?.map(|v| keys::u64_of(&v)).unwrap_or(0) + 1;
    meta.insert(counter, &cur.to_be_bytes())?;
    Ok(cur)
}

/// Points activity `id` at `regarding`, keeping the `activity_by_regarding` index in step.
fn set_regarding(
    by_regarding: &TransactionalTree,
    a: &mut Activity,
    id: u64,
    regarding: Option<String>,
) -> TxResult<()> {
    if let Some(old) = &a.regarding {
        by_regarding.remove(keys::regarding(old, id))?;
    }
    a.regarding = regarding;
    if let Some(new) = &a.regarding {
        by_regarding.insert(keys::regarding(new, id), &[])?;
    }
    Ok(())
}

fn load(acts: &TransactionalTree, id: u64) -> TxResult<Option<Activity>> {
    acts.get(id.to_be_bytes())?
        .map(|v| serde_json::from_slice(&v).map_err(abort))
        .transpose()
}

/// Decoded Outlook Thread-Index (22-byte header + 5 bytes per reply), or `None`.
fn thread_bytes(ti: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(ti.trim())
        .ok()?;
    (b.len() >= 22 && (b.len() - 22) % 5 == 0).then_some(b)
}

/// Point reads that correlation needs, from the batch transaction or from the committed store.
trait Lookups {
    fn get_msgid(&self, key: &[u8]) -> Option<u64>;
    fn get_token(&self, token: &str) -> Option<u64>;
    fn get_thread(&self, bytes: &[u8]) -> Option<u64>;
    fn get_activity(&self, id: u64) -> Option<Activity>;
}

impl Lookups for Tx<'_> {
    fn get_msgid(&self, key: &[u8]) -> Option<u64> {
        self.by_msgid
            .get(key)
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_token(&self, token: &str) -> Option<u64> {
        self.by_token
            .get(token.to_ascii_uppercase().as_bytes())
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_thread(&self, bytes: &[u8]) -> Option<u64> {
        self.by_thread
            .get(bytes)
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_activity(&self, id: u64) -> Option<Activity> {
        load(self.acts, id).ok().flatten()
    }
}

impl Lookups for Store {
    fn get_msgid(&self, key: &[u8]) -> Option<u64> {
        self.t
            .activity_by_msgid
            .get(key)
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_token(&self, token: &str) -> Option<u64> {
        self.t
            .activity_by_token
            .get(token.to_ascii_uppercase().as_bytes())
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_thread(&self, bytes: &[u8]) -> Option<u64> {
        self.t
            .activity_by_thread
            .get(bytes)
            .ok()
            .flatten()
            .map(|v| keys::u64_of(&v))
    }
    fn get_activity(&self, id: u64) -> Option<Activity> {
        self.activity(id).ok().flatten()
    }
}

/// `a` was written no later than `b` (by Date; unknown dates do not rule a match out).
fn not_after(a: &Activity, b: &Activity) -> bool {
    match (&a.date, &b.date) {
        (Some(x), Some(y)) => crate::time::parse_date(x) <= crate::time::parse_date(y),
        _ => true,
    }
}

/// Correlation in Dynamics' order (DESIGN §4.10): In-Reply-To, References (newest first),
/// the tracking token (an earlier message with it), then an Outlook Thread-Index that extends a
/// tracked one's.
fn correlate(l: &dyn Lookups, a: &Activity) -> Option<Correlation> {
    let found = |method: CorrelationMethod, id: u64| {
        Some(Correlation {
            method,
            activity: id,
        })
    };
    let by_id = |m: &str| {
        [Direction::Outgoing, Direction::Incoming]
            .iter()
            .find_map(|d| l.get_msgid(&keys::msgid(m, *d)))
            .filter(|id| *id != a.id)
    };
    if let Some(id) = a.in_reply_to.as_deref().and_then(by_id) {
        return found(CorrelationMethod::InReplyTo, id);
    }
    if let Some(id) = a.references.iter().rev().find_map(|r| by_id(r)) {
        return found(CorrelationMethod::References, id);
    }
    if let Some(t) = &a.token {
        if let Some(id) = l.get_token(t).filter(|id| *id != a.id) {
            if l.get_activity(id).is_some_and(|e| not_after(&e, a)) {
                return found(CorrelationMethod::Token, id);
            }
        }
    }
    if let Some(ti) = a.thread_index.as_deref().and_then(thread_bytes) {
        let mut len = ti.len();
        while len > 22 {
            len -= 5;
            if let Some(id) = l.get_thread(&ti[..len]) {
                return found(CorrelationMethod::ThreadIndex, id);
            }
        }
    }
    None
}

/// Creates the unresolved sender's record (once: a second message from it finds it), or
/// returns the existing one's reference.
fn create_sender(tx: &Tx<'_>, r: &Record) -> TxResult<String> {
    let rref = r.reference().to_string();
    if tx.records.get(rref.as_bytes())?.is_none() {
        tx.records.insert(rref.as_bytes(), enc(r))?;
        for e in &r.emails {
            tx.record_by_email
                .insert(keys::record_email(e, &rref), &[])?;
        }
        tx.record_by_name
            .insert(keys::record_name(&r.rtype, &r.name, &rref), &[])?;
    }
    Ok(rref)
}

/// Applies one tracked message inside the batch transaction; `false` when the message is not
/// tracked (other mail that the filter leaves out).
fn apply_activity(
    tx: &Tx<'_>,
    d: &Draft,
    at: &str,
    alerts_mailbox: &str,
    out: &mut BatchOutcome,
    created: &mut Vec<Activity>,
) -> TxResult<bool> {
    let a = &d.activity;
    let skey = keys::source(&a.source);
    if tx.by_source.get(&skey)?.is_some() {
        out.replayed += 1;
        return Ok(true);
    }
    let mkey = keys::msgid(&a.dedup_key, a.direction);
    if let Some(idv) = tx.by_msgid.get(&mkey)? {
        merge_copy(tx, a, keys::u64_of(&idv), skey, out)?;
        out.merged += 1;
        return Ok(true);
    }
    if !d.keep {
        out.skipped += 1;
        return Ok(false);
    }
    let mut a = a.clone();
    a.inherits = d.inherit;
    if let Some(c) = correlate(tx, &a) {
        a.correlation = Some(c);
    }
    if d.only_if_correlated && a.correlation.is_none() {
        out.skipped += 1;
        return Ok(false);
    }
    if d.inherit && a.regarding.is_none() {
        inherit_regarding(tx, d, &mut a)?;
    }
    if let (Some(r), Some(from)) = (&d.create_sender, a.from.as_mut()) {
        if from.record.is_none() {
            from.record = Some(create_sender(tx, r)?);
        }
    }
    let id = next_id(tx.meta, "next_activity_id")?;
    a.id = id;
    a.tracked_at = at.to_string();
    for al in &a.alerts {
        let key = keys::alert(alerts_mailbox, &al.message);
        let prev = tx.alerts.get(&key)?;
        tx.alerts.insert(
            key,
            enc(&StoredAlert::raise(prev.as_deref(), alerts_mailbox, al, at)),
        )?;
    }
    tx.acts.insert(&id.to_be_bytes(), enc_activity(&mut a))?;
    tx.by_msgid.insert(mkey, &id.to_be_bytes())?;
    tx.by_source.insert(skey, &id.to_be_bytes())?;
    index_new(tx, d, &a)?;
    out.created += 1;
    a.body_text = String::new();
    a.attachments = Vec::new();
    created.push(a);
    Ok(true)
}

/// A copy of tracked activity `id` (same Message-ID and direction): the first copy keeps the
/// regarding (DESIGN §4.7); this one adds its source. A copy from the same mailbox and folder
/// under a new UIDVALIDITY replaces the stale source instead (a folder reset, DESIGN §3.1).
fn merge_copy(
    tx: &Tx<'_>,
    a: &Activity,
    id: u64,
    skey: Vec<u8>,
    out: &mut BatchOutcome,
) -> TxResult<()> {
    let Some(mut cur) = load(tx.acts, id)? else {
        return Err(abort(format!("index points to missing activity {id}")));
    };
    let same_place = |s: &Source| {
        s.mailbox == a.source.mailbox
            && s.folder == a.source.folder
            && s.uidvalidity != a.source.uidvalidity
    };
    if same_place(&cur.source) {
        tx.by_source.remove(keys::source(&cur.source))?;
        cur.source = a.source.clone();
    } else if let Some(s) = cur.other_sources.iter_mut().find(|s| same_place(s)) {
        tx.by_source.remove(keys::source(s))?;
        *s = a.source.clone();
    } else {
        cur.other_sources.push(a.source.clone());
    }
    // Within one mailbox, a copy in a folder whose rule names a record is a move (or a
    // drag) into that folder: the folder rule wins and re-links it (DESIGN §4.4–4.5).
    // A folder without a regarding keeps the link; another mailbox's copy never changes
    // it (the first mailbox wins, §4.7).
    let same_mailbox = std::iter::once(&cur.source)
        .chain(&cur.other_sources)
        .filter(|s| **s != a.source)
        .any(|s| s.mailbox == a.source.mailbox);
    if same_mailbox && a.regarding.is_some() && cur.regarding != a.regarding {
        set_regarding(tx.by_regarding, &mut cur, id, a.regarding.clone())?;
        out.relinked += 1;
    }
    tx.by_source.insert(skey, &id.to_be_bytes())?;
    tx.acts.insert(&id.to_be_bytes(), enc_activity(&mut cur))?;
    Ok(())
}

/// A message whose folder rule gives no regarding takes the one of the activity it correlates
/// to (DESIGN §4.10), if the mailbox owner may write that record; else it is tracked unlinked,
/// with an alert that says why.
fn inherit_regarding(tx: &Tx<'_>, d: &Draft, a: &mut Activity) -> TxResult<()> {
    let Some(c) = &a.correlation else {
        return Ok(());
    };
    let Some(earlier) = load(tx.acts, c.activity)?.and_then(|e| e.regarding) else {
        return Ok(());
    };
    let rec: Option<Record> = tx
        .records
        .get(earlier.as_bytes())?
        .and_then(|v| serde_json::from_slice(&v).ok());
    match rec {
        Some(r) if !d.writer.can_write(&r) => a.alerts.push(Alert {
            level: AlertLevel::Warning,
            message: format!(
                "{} may not write {earlier} (correlated by {}): tracked unlinked",
                d.writer.user, c.method
            ),
        }),
        _ => a.regarding = Some(earlier),
    }
    Ok(())
}

/// The indexes a new activity joins besides Message-ID and source: regarding, tracking
/// token, late correlation (its parents), Thread-Index and subject.
fn index_new(tx: &Tx<'_>, d: &Draft, a: &Activity) -> TxResult<()> {
    let id = a.id;
    if let Some(r) = &a.regarding {
        tx.by_regarding.insert(keys::regarding(r, id), &[])?;
    }
    if let Some(t) = &a.token {
        // The index names the earliest message with the token: the one replies correlate to.
        let keep = tx
            .get_token(t)
            .and_then(|e| tx.get_activity(e))
            .is_some_and(|e| not_after(&e, a));
        if !keep {
            tx.by_token
                .insert(t.to_ascii_uppercase().as_bytes(), &id.to_be_bytes())?;
        }
    }
    if a.correlation.is_none() {
        // Its original may be tracked later: let late correlation find this one from it.
        for parent in a.in_reply_to.iter().chain(&a.references) {
            tx.by_parent.insert(keys::regarding(parent, id), &[])?;
        }
    }
    if let Some(ti) = a.thread_index.as_deref().and_then(thread_bytes) {
        tx.by_thread.insert(ti, &id.to_be_bytes())?;
    }
    if let Some(norm) = &d.subject_key {
        tx.by_subject.insert(keys::regarding(norm, id), &[])?;
    }
    Ok(())
}

impl RecordLookup for Store {
    fn get(&self, r: &RecordRef) -> Option<Record> {
        self.record(r).ok().flatten()
    }
    fn by_email(&self, email: &str) -> Vec<Record> {
        self.records_from_index(&self.t.record_by_email, keys::record_email_prefix(email))
    }
    fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
        self.records_from_index(
            &self.t.record_by_name,
            keys::record_name_prefix(rtype, name),
        )
    }
}

impl ActivityLookup for Store {
    fn by_subject(&self, subject: &str) -> Vec<(u64, Vec<String>)> {
        let prefix = keys::regarding_prefix(subject);
        let ids: Vec<u64> = self
            .t
            .activity_by_subject
            .scan_prefix(&prefix)
            .rev()
            .take(50)
            .filter_map(|kv| kv.ok())
            .map(|(k, _)| keys::u64_suffix(&k))
            .collect();
        ids.into_iter()
            .filter_map(|id| self.activity(id).ok().flatten())
            .map(|a| {
                let addrs = a
                    .from
                    .iter()
                    .chain(&a.to)
                    .chain(&a.cc)
                    .chain(&a.bcc)
                    .filter_map(|p| p.address.clone())
                    .collect();
                (a.id, addrs)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alerts keyed by server text grew without bound.
    #[test]
    fn alerts_are_capped_per_mailbox_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let now = crate::time::unix_now();
        let put = |mailbox: &str, message: String, secs_ago: i64| {
            let at = crate::time::rfc3339_utc(now - secs_ago);
            let a = StoredAlert {
                at: at.clone(),
                first_at: at,
                count: 1,
                mailbox: mailbox.into(),
                alert: Alert {
                    level: AlertLevel::Warning,
                    message: message.clone(),
                },
            };
            store
                .t
                .alerts
                .insert(keys::alert(mailbox, &message), enc(&a))
                .unwrap();
        };
        for i in 0..150 {
            put("a", format!("server said {i}"), 60 * (i + 1));
        }
        put("a", "ancient".into(), 31 * 86_400);
        for i in 0..5 {
            put("b", format!("other {i}"), 31 * 86_400 + i);
        }
        store
            .add_alert(
                "a",
                Alert {
                    level: AlertLevel::Error,
                    message: "newest".into(),
                },
            )
            .unwrap();
        let a: Vec<String> = store
            .alerts(1000)
            .unwrap()
            .into_iter()
            .filter(|x| x.mailbox == "a")
            .map(|x| x.alert.message)
            .collect();
        assert_eq!(a.len(), MAX_ALERTS);
        assert_eq!(a[0], "newest");
        assert!(a.contains(&"server said 0".to_string()));
        assert!(!a.contains(&"server said 149".to_string()), "the oldest go");
        assert!(!a.contains(&"ancient".to_string()), "over 30 days");
        let b = store.alerts(1000).unwrap();
        assert_eq!(
            b.iter().filter(|x| x.mailbox == "b").count(),
            5,
            "other mailboxes untouched"
        );
    }
}
