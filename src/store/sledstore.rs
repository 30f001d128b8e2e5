//! The sled 0.34 engine (DESIGN §5): records, activities and their indexes, folder
//! checkpoints, quarantine and alerts in sled trees of one data dir, blobs in pack files beside
//! them.
//!
//! This is the one module that knows sled. A batch of tracked messages, its quarantined
//! messages and the folder checkpoint are written in **one transaction**, then flushed, so a
//! crash replays at most the unflushed batch, and the replay is idempotent: a message whose
//! source (mailbox, folder, UIDVALIDITY, UID) is already recorded is skipped, and a copy of an
//! already tracked message (same dedup key and direction) only adds its source.

use super::keys;
use super::outbox::{OutboxEntry, OUTBOX_FOLDER};
use super::BatchOutcome;
use super::{
    now, FolderState, MailboxState, QuarantineEntry, Result, RuleBinding, StoreError, StoredAlert,
    ALERT_MAX_AGE_DAYS, MAX_ALERTS, SCHEMA_VERSION, STORE_ALERTS,
};
use crate::model::Draft;
use crate::model::{
    Activity, Alert, AlertLevel, AuditEntry, Direction, FieldState, Record, RecordRef, Source,
};
use crate::track::batch::apply_activity;
use crate::track::batch::{self, BatchItem, Committed};
use crate::track::correlate::thread_bytes;
use crate::track::fields;
use crate::track::tx::{BatchTx, Broken, Counter, Engine, Findable, Lookups, Scans};
use crate::track::{ActivityLookup, RecordLookup};
use fs2::FileExt;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
    UnabortableTransactionError,
};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Reading the whole store out, for `store copy --from-sled`.
mod delete;
mod dump;
pub(crate) use dump::{Counters, TokenUser};

/// Space kept free on the data dir's filesystem. sled 0.34 does not recover from a write
/// that fails for lack of space (its flusher waits forever: found by the full-disk test), so
/// foldertrack refuses to start a write that could get near that point.
pub(crate) const MIN_FREE_BYTES: u64 = 16 * 1024 * 1024;

/// The store of one data dir. Holding it holds the data dir's lock.
pub struct SledStore {
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

/// A blob's place as the `blobs` tree keeps it: (pack number, offset, length).
fn blob_location(sha256: &str, loc: &[u8]) -> Result<(u64, u64, u64)> {
    if loc.len() != 24 {
        return Err(StoreError::Corrupt {
            tree: "blobs",
            message: format!("bad location for {sha256}"),
        });
    }
    Ok((
        keys::u64_of(&loc[..8]),
        keys::u64_of(&loc[8..16]),
        keys::u64_of(&loc[16..]),
    ))
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

/// Removes the snapshots sled was writing when it was killed (`snap.<lsn>.generating`). sled
/// 0.34 writes a snapshot at every open and renames it when whole, but on the next open it
/// reads the file with the highest name, `.generating` or not: one cut short by a SIGKILL
/// fails the open with "Read corrupted data" for ever (sled issues 1527, 1533; found by the
/// crash loop, a kill 34 ms into start-up). The previous whole snapshot and the log are what
/// recovery needs; an unfinished one holds nothing they do not. Called with the lock held.
fn remove_incomplete_snapshots(db: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(db) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing a snapshot sled did not finish writing (the agent was killed while it wrote it)");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// How long a lock held by a previous handle in this process is waited for ([`open_db`],
/// [`take_lock`]).
const DB_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `attempt` again every 20 ms, up to [`DB_LOCK_WAIT`], while it fails with an error
/// marked `true` (a lock this process itself still holds for a moment); an error marked
/// `false`, or the last one when the time is up, is the answer.
fn retry_own_lock<T, E>(
    mut attempt: impl FnMut() -> std::result::Result<T, (E, bool)>,
) -> std::result::Result<T, E> {
    let deadline = std::time::Instant::now() + DB_LOCK_WAIT;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err((e, wait)) if !wait || std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Opens sled's own database under `dir/db`.
///
/// Why the retry: the caller holds `foldertrack.lock`, so no other process has the store; if
/// sled still reports its file lock taken, it is this process's previous handle: a log write or
/// segment truncation it queued on sled's shared I/O threads holds the file until it runs, a
/// moment after the last `Db` is dropped (a store closed and reopened, as the tests do). CI saw
/// that race fail an immediate reopen.
fn open_db(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
    retry_own_lock(|| {
        sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(source) if is_lock_error(&source) => {
                    let locked = StoreError::Locked {
                        dir: dir.to_path_buf(),
                        pid: None,
                    };
                    (locked, true)
                }
                e => (e.into(), false),
            })
    })
}

/// Takes the data dir's lock, or gives the pid written in it by whoever holds it.
///
/// Why the wait when that pid is this process's own: the lock is taken only here and held by
/// the store, so it means a store this process just dropped, whose descriptor a child being
/// started at that moment (the token command's `sh`) still holds a copy of between its fork
/// and its exec. CI saw that window fail a reopen. Another process's lock is refused at once.
fn take_lock(lock: &File, lock_path: &Path) -> std::result::Result<(), Option<String>> {
    retry_own_lock(|| {
        lock.try_lock_exclusive().map_err(|_| {
            let pid = std::fs::read_to_string(lock_path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let ours = pid.as_deref() == Some(&std::process::id().to_string());
            (pid, ours)
        })
    })
}

/// sled reports its file lock as `WouldBlock` or wrapped as "could not acquire lock".
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

impl SledStore {
    /// Opens (creating) the store in `dir`, taking its lock.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it; I/O errors name the dir.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
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
        take_lock(&lock, &lock_path).map_err(|pid| StoreError::Locked {
            dir: dir.to_path_buf(),
            pid,
        })?;
        lock.set_len(0).map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        remove_incomplete_snapshots(&dir.join("db")).map_err(io)?;
        let db = open_db(dir, cache_bytes)?;
        let t = Trees::open(&db)?;
        let store = SledStore {
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
                self.t.meta.insert(PARTY_INDEX, &[])?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) => {
                let found: u32 = String::from_utf8_lossy(&v).parse().unwrap_or(0);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema { found });
                }
                if self.t.meta.get(ACTIVITY_COUNT)?.is_none() {
                    // A store from before the counter: count once.
                    let n = self.t.activities.len() as u64;
                    self.t.meta.insert(ACTIVITY_COUNT, &n.to_be_bytes())?;
                    self.db.flush()?;
                }
                if self.t.meta.get(PARTY_INDEX)?.is_none() {
                    self.index_parties()?;
                }
                Ok(())
            }
        }
    }

    /// A store from before the party index (the web timeline's "where it is a party"): one
    /// pass over the activities adds their entries, then the mark that it was done.
    fn index_parties(&self) -> Result<()> {
        for kv in self.t.activities.iter() {
            let a = self.dec_activity(&kv?.1)?;
            for r in party_records(&a) {
                self.t
                    .activity_by_regarding
                    .insert(keys::regarding(&keys::party_of(r), a.id), &[])?;
            }
        }
        self.t.meta.insert(PARTY_INDEX, &[])?;
        self.db.flush()?;
        Ok(())
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

    /// The activities of `ids` that exist, in that order.
    pub(crate) fn activities_by_id(&self, ids: &[u64]) -> Result<Vec<Activity>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.activity(*id)?);
        }
        Ok(out)
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

    /// The ids of the activities regarding `r` or with `r` as a party, newest first: at most
    /// `limit` below `before` (keyset paging: a page never repeats or skips one while new mail
    /// arrives). Two ranges of `activity_by_regarding`, merged.
    pub(crate) fn timeline_ids(
        &self,
        r: &RecordRef,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let before = before.unwrap_or(u64::MAX);
        let range = |name: String| {
            let (from, to) = (
                keys::regarding_prefix(&name),
                keys::regarding(&name, before),
            );
            self.t
                .activity_by_regarding
                .range(from..to)
                .rev()
                .map(|kv| Ok(keys::u64_suffix(&kv?.0)))
        };
        let reference = r.to_string();
        super::merge_newest_first(
            range(reference.clone()),
            range(keys::party_of(&reference)),
            limit,
        )
    }

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
    /// [`SledStore::activities_iter`]).
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

    /// How many activities the store holds, from the counter the batch transaction keeps:
    /// counting sled's tree is a full scan, which `status` and every metrics scrape made, and
    /// which pulled every activity through sled's cache (measured: +11 MB of RSS for a
    /// `status` on 10,000 activities, and the agent kept it).
    pub(crate) fn activity_count(&self) -> usize {
        match self.t.meta.get(ACTIVITY_COUNT) {
            Ok(Some(v)) => keys::u64_of(&v) as usize,
            _ => self.t.activities.len(),
        }
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
    pub(crate) fn link_by_hand(&self, id: u64, r: &RecordRef, actor: &str) -> Result<bool> {
        let found = self.relink(id, Some(&r.to_string()), actor)?;
        if found {
            self.t.manual_links.insert(id.to_be_bytes(), &[])?;
            self.flush()?;
        }
        Ok(found)
    }

    /// Points an activity at `regarding` (or at nothing), index included. `false` when the
    /// activity does not exist.
    pub(crate) fn relink(&self, id: u64, regarding: Option<&str>, actor: &str) -> Result<bool> {
        Engine::transaction(self, |tx| batch::relink(tx, id, regarding, actor))
    }

    /// Marks activity `id` untracked ([`batch::untrack`]).
    pub(crate) fn untrack(&self, id: u64, actor: &str) -> Result<Option<bool>> {
        let at = crate::time::humantime_now();
        let out = Engine::transaction(self, |tx| batch::untrack(tx, id, actor, &at))?;
        self.flush()?;
        Ok(out)
    }

    /// The UIDs of a folder (under `uidvalidity`) that activities were tracked from, sorted.
    pub(crate) fn tracked_uids(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>> {
        let prefix = keys::source_prefix(mailbox, folder, uidvalidity);
        let mut out = Vec::new();
        for kv in self.t.activity_by_source.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let uid = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|u| u.parse().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    tree: "activity_by_source",
                    message: "a key without a UID".into(),
                })?;
            out.push(uid);
        }
        Ok(out)
    }

    /// Applies a folder's flag scan and moves its checkpoint, in one transaction
    /// ([`fields::apply_scan`]).
    pub(crate) fn apply_flag_scan(
        &self,
        found: &[(Source, Vec<String>)],
        mb: &crate::config::MailboxConfig,
        cp: &FolderState,
    ) -> Result<fields::ScanOutcome> {
        let at = crate::time::humantime_now();
        let actor = format!("mailbox:{}", mb.name);
        let k = mb.crm.tracked_keyword.as_deref();
        let out = Engine::transaction(self, |tx| {
            let out = fields::apply_scan(tx, found, &mb.field_sync, k, &actor, &at)?;
            tx.put_checkpoint(cp)?;
            Ok(out)
        })?;
        self.flush()?;
        Ok(out)
    }

    /// Records that the server took `pushes` ([`fields::record_pushed`]).
    pub(crate) fn record_pushed(&self, pushes: &[fields::Push]) -> Result<()> {
        if pushes.is_empty() {
            return Ok(());
        }
        Engine::transaction(self, |tx| fields::record_pushed(tx, pushes))?;
        self.flush()
    }

    /// Sets an activity's fields in the CRM ([`fields::set_fields`]).
    pub(crate) fn set_fields(
        &self,
        id: u64,
        change: &fields::FieldChange,
        sync: &crate::config::FieldSync,
        actor: &str,
    ) -> Result<Option<Vec<fields::Push>>> {
        let at = crate::time::humantime_now();
        let out = Engine::transaction(self, |tx| {
            fields::set_fields(tx, id, change, sync, actor, &at)
        })?;
        self.flush()?;
        Ok(out)
    }

    /// An activity's synced fields, if they were ever seen.
    pub(crate) fn field_state(&self, id: u64) -> Result<Option<FieldState>> {
        self.t
            .fields
            .get(id.to_be_bytes())?
            .map(|v| dec("fields", &v))
            .transpose()
    }

    /// The activities untracked, by id.
    pub(crate) fn untracked_ids(&self) -> Result<Vec<u64>> {
        self.t
            .untracked
            .iter()
            .map(|kv| Ok(keys::u64_of(&kv?.0)))
            .collect()
    }

    /// Removes audit entries older than `before` (RFC 3339 UTC): how many.
    pub(crate) fn prune_audit(&self, before: &str) -> Result<u64> {
        let mut n = 0;
        for kv in self.t.audit.iter() {
            let (k, v) = kv?;
            let e: AuditEntry = dec("audit", &v)?;
            if e.at.as_str() < before {
                self.t.audit.remove(k)?;
                n += 1;
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// The audit trail of activity `id`, newest first. It outlives the activity.
    pub(crate) fn audit(&self, id: u64) -> Result<Vec<AuditEntry>> {
        let mut out = Vec::new();
        for kv in self.t.audit.scan_prefix(id.to_be_bytes()) {
            out.push(dec("audit", &kv?.1)?);
        }
        out.reverse();
        Ok(out)
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

    /// Late correlation ([`crate::track::correlate::recorrelate_ids`]); flushed when it
    /// changed any activity.
    pub(crate) fn recorrelate_ids(
        &self,
        ids: &[u64],
        writer: &crate::model::Writer,
        smart: Option<&crate::token::TokenFormat>,
    ) -> Result<u32> {
        let n = crate::track::correlate::recorrelate_ids(self, ids, writer, smart)?;
        if n > 0 {
            self.flush()?;
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
        let (n, off, len) = blob_location(sha256, &loc)?;
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

    /// Writes one batch and the folder checkpoint atomically ([`batch::apply_batch`]), then
    /// flushes. Returns what it did, and the UIDs whose messages are now tracked (for
    /// write-back).
    pub(crate) fn commit_batch(
        &self,
        items: &[BatchItem],
        checkpoint: &FolderState,
        alerts_mailbox: &str,
    ) -> Result<Committed> {
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
        let outcome = Engine::transaction(self, |tx| {
            batch::apply_batch(tx, items, checkpoint, &at, alerts_mailbox)
        })?;
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

// ---- the outbox (types in `super::outbox`) ------------------------------------------------

impl SledStore {
    /// Writes a new outgoing activity and its outbox entry in one transaction, then flushes.
    /// The activity gets a pseudo source in [`OUTBOX_FOLDER`]; the Sent copy, once tracked,
    /// merges into it by Message-ID like any other copy. Returns the activity id, which the
    /// stored entry's `activity` holds.
    pub(crate) fn enqueue_outgoing(&self, draft: &Draft, entry: &OutboxEntry) -> Result<u64> {
        self.ensure_space(draft.activity.body_text.len() as u64 + 8192)?;
        self.sync_pack()?;
        let at = now();
        let id = Engine::transaction(self, |tx| {
            let mut out = BatchOutcome::default();
            let mut created = Vec::new();
            apply_activity(tx, draft, &at, &entry.mailbox, &mut out, &mut created)?;
            let Some(a) = created.first() else {
                return Err(StoreError::NotFound(format!(
                    "message {} is already tracked: nothing queued",
                    entry.message_id
                )));
            };
            let mut e = entry.clone();
            e.activity = a.id;
            tx.put_outbox(&e)?;
            Ok(a.id)
        })?;
        self.flush()?;
        Ok(id)
    }

    /// A fresh pseudo source for an activity created in the CRM.
    pub(crate) fn outbox_source(&self, mailbox: &str) -> Result<Source> {
        let n = self
            .t
            .meta
            .update_and_fetch("next_outbox_uid", |v| {
                let cur = v.map(keys::u64_of).unwrap_or(0);
                Some((cur + 1).to_be_bytes().to_vec())
            })?
            .map(|v| keys::u64_of(&v))
            .unwrap_or(1);
        Ok(Source {
            mailbox: mailbox.to_string(),
            folder: OUTBOX_FOLDER.to_string(),
            uidvalidity: 0,
            uid: u32::try_from(n % u64::from(u32::MAX)).unwrap_or(u32::MAX),
        })
    }

    /// The next tracking token number for `user` (a `systemuser:key`): its user number
    /// (assigned on its first send, then fixed, as Dynamics numbers users) and its counter.
    /// Durable before it is used, so a token is never handed out twice by a crash.
    pub(crate) fn next_token_numbers(&self, user: &str) -> Result<(u32, u64)> {
        let ukey = format!("token_user:{user}");
        let ckey = format!("token_counter:{user}");
        let (u, c) = Engine::transaction(self, |tx| {
            let u = match tx.meta.get(ukey.as_bytes())? {
                Some(v) => keys::u64_of(&v),
                None => {
                    let u = next_id(tx.meta, "token_users")?;
                    tx.meta.insert(ukey.as_bytes(), &u.to_be_bytes())?;
                    u
                }
            };
            Ok((u, next_id(tx.meta, &ckey)?))
        })?;
        self.flush()?;
        Ok((u32::try_from(u).unwrap_or(u32::MAX), c))
    }

    pub(crate) fn outbox_entry(&self, activity: u64) -> Result<Option<OutboxEntry>> {
        self.t
            .outbox
            .get(activity.to_be_bytes())?
            .map(|v| dec("outbox", &v))
            .transpose()
    }

    /// Every entry, oldest first.
    pub(crate) fn outbox_entries(&self) -> Result<Vec<OutboxEntry>> {
        self.t
            .outbox
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                dec("outbox", &v)
            })
            .collect()
    }

    /// Replaces an entry (it must exist) and flushes: every state change is durable before the
    /// caller acts on it.
    pub(crate) fn put_outbox_entry(&self, e: &OutboxEntry) -> Result<()> {
        if !self.t.outbox.contains_key(e.activity.to_be_bytes())? {
            return Err(StoreError::NotFound(format!(
                "activity {} is not in the outbox",
                e.activity
            )));
        }
        self.t.outbox.insert(e.activity.to_be_bytes(), enc(e))?;
        self.flush()
    }
}

/// Declares the named trees once: the store's handles, the transaction's view of them, and
/// the order sled hands a transaction's trees over in, so no tree is ever taken by position.
macro_rules! trees {
    ($($name:ident),* $(,)?) => {
        /// The store's sled trees, each opened by its name.
        struct Trees {
            $($name: sled::Tree,)*
        }

        impl Trees {
            fn open(db: &sled::Db) -> std::result::Result<Trees, sled::Error> {
                Ok(Trees { $($name: db.open_tree(stringify!($name))?,)* })
            }

            /// Every tree, in the order [`SledTx::new`] takes them back.
            fn all(&self) -> Vec<&sled::Tree> {
                vec![$(&self.$name,)*]
            }
        }

        /// A sled transaction over every tree, by name. Not every transaction writes every
        /// tree (the blobs and mailboxes trees are written outside of one).
        #[allow(dead_code)]
        pub(crate) struct SledTx<'a> {
            $($name: &'a TransactionalTree,)*
        }

        impl<'a> SledTx<'a> {
            fn new(t: &'a [TransactionalTree]) -> SledTx<'a> {
                let mut t = t.iter();
                SledTx { $($name: t.next().expect("one transactional tree per tree"),)* }
            }
        }
    };
}

trees! {
    meta,
    records,
    record_by_email,
    record_by_name,
    activities,
    activity_by_msgid,
    activity_by_source,
    activity_by_regarding,
    folders,
    mailboxes,
    quarantine,
    quarantine_raw,
    quarantine_by_source,
    alerts,
    manual_links,
    rule_bindings,
    activity_by_token,
    activity_by_thread,
    activity_by_subject,
    activity_by_parent,
    blobs,
    outbox,
    audit,
    untracked,
    fields,
}

impl From<UnabortableTransactionError> for StoreError {
    fn from(e: UnabortableTransactionError) -> StoreError {
        match e {
            UnabortableTransactionError::Conflict => StoreError::Conflict,
            UnabortableTransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

impl From<Broken> for StoreError {
    fn from(b: Broken) -> StoreError {
        StoreError::Corrupt {
            tree: "transaction",
            message: b.0,
        }
    }
}

/// The `meta` key of the number of activities (kept by [`SledTx::insert_activity`]).
const ACTIVITY_COUNT: &str = "activity_count";

/// The `meta` key that says every activity's parties are in `activity_by_regarding`.
const PARTY_INDEX: &str = "party_index";

/// The records an activity's parties resolved to (each party's best match), once each.
fn party_records(a: &Activity) -> std::collections::BTreeSet<&str> {
    a.from
        .iter()
        .chain(&a.to)
        .chain(&a.cc)
        .chain(&a.bcc)
        .filter_map(|p| p.record.as_deref())
        .collect()
}

/// Dense, restart-proof ids (sled's `generate_id` jumps by a million after a restart, which
/// makes poor activity numbers for people to type).
fn next_id(meta: &TransactionalTree, counter: &str) -> Result<u64> {
    let cur = meta.get(counter)?.map(|v| keys::u64_of(&v)).unwrap_or(0) + 1;
    meta.insert(counter, &cur.to_be_bytes())?;
    Ok(cur)
}

fn id_of(v: Option<sled::IVec>) -> Option<u64> {
    v.map(|v| keys::u64_of(&v))
}

impl Lookups for SledTx<'_> {
    type Error = StoreError;
    fn activity(&self, id: u64) -> Result<Option<Activity>> {
        self.activities
            .get(id.to_be_bytes())?
            .map(|v| dec("activities", &v))
            .transpose()
    }
    fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>> {
        Ok(id_of(self.activity_by_msgid.get(keys::msgid(key, d))?))
    }
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        Ok(id_of(self.activity_by_source.get(keys::source(s))?))
    }
    fn activity_by_token(&self, token: &str) -> Result<Option<u64>> {
        Ok(id_of(self.activity_by_token.get(keys::token(token))?))
    }
    fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>> {
        Ok(id_of(self.activity_by_thread.get(bytes)?))
    }
    fn record(&self, reference: &str) -> Result<Option<Record>> {
        self.records
            .get(reference.as_bytes())?
            .map(|v| dec("records", &v))
            .transpose()
    }
}

impl BatchTx for SledTx<'_> {
    fn is_quarantined(&self, s: &Source) -> Result<bool> {
        Ok(self.quarantine_by_source.get(keys::source(s))?.is_some())
    }

    fn next_id(&self, c: Counter) -> Result<u64> {
        next_id(
            self.meta,
            match c {
                Counter::Activity => "next_activity_id",
                Counter::Quarantine => "next_quarantine_id",
            },
        )
    }

    fn insert_activity(&self, a: &Activity, find: Findable<'_>) -> Result<()> {
        let id = a.id.to_be_bytes();
        self.activities.insert(&id, enc_activity(&mut a.clone()))?;
        next_id(self.meta, ACTIVITY_COUNT)?;
        self.activity_by_msgid
            .insert(keys::msgid(&a.dedup_key, a.direction), &id)?;
        self.activity_by_source
            .insert(keys::source(&a.source), &id)?;
        if let Some(r) = &a.regarding {
            self.activity_by_regarding
                .insert(keys::regarding(r, a.id), &[])?;
        }
        for r in party_records(a) {
            self.activity_by_regarding
                .insert(keys::regarding(&keys::party_of(r), a.id), &[])?;
        }
        if let (Some(t), true) = (&a.token, find.by_token) {
            self.activity_by_token.insert(keys::token(t), &id)?;
        }
        if find.awaiting_parent {
            for parent in a.in_reply_to.iter().chain(&a.references) {
                self.activity_by_parent
                    .insert(keys::regarding(parent, a.id), &[])?;
            }
        }
        if let Some(ti) = a.thread_index.as_deref().and_then(thread_bytes) {
            self.activity_by_thread.insert(ti, &id)?;
        }
        if let Some(norm) = find.subject_key {
            self.activity_by_subject
                .insert(keys::regarding(norm, a.id), &[])?;
        }
        Ok(())
    }

    fn update_activity(&self, before: &Activity, after: &Activity) -> Result<()> {
        let id = after.id;
        let sources = |a: &Activity| -> Vec<Source> {
            std::iter::once(&a.source)
                .chain(&a.other_sources)
                .cloned()
                .collect()
        };
        let (old, new) = (sources(before), sources(after));
        for s in old.iter().filter(|s| !new.contains(s)) {
            self.activity_by_source.remove(keys::source(s))?;
        }
        for s in new.iter().filter(|s| !old.contains(s)) {
            self.activity_by_source
                .insert(keys::source(s), &id.to_be_bytes())?;
        }
        if before.regarding != after.regarding {
            if let Some(r) = &before.regarding {
                self.activity_by_regarding.remove(keys::regarding(r, id))?;
            }
            if let Some(r) = &after.regarding {
                self.activity_by_regarding
                    .insert(keys::regarding(r, id), &[])?;
            }
        }
        let (was, is) = (party_records(before), party_records(after));
        for r in was.difference(&is) {
            self.activity_by_regarding
                .remove(keys::regarding(&keys::party_of(r), id))?;
        }
        for r in is.difference(&was) {
            self.activity_by_regarding
                .insert(keys::regarding(&keys::party_of(r), id), &[])?;
        }
        self.activities
            .insert(&id.to_be_bytes(), enc_activity(&mut after.clone()))?;
        Ok(())
    }

    fn insert_record_once(&self, r: &Record) -> Result<()> {
        let rref = r.reference().to_string();
        if self.records.get(rref.as_bytes())?.is_none() {
            self.records.insert(rref.as_bytes(), enc(r))?;
            for e in &r.emails {
                self.record_by_email
                    .insert(keys::record_email(e, &rref), &[])?;
            }
            self.record_by_name
                .insert(keys::record_name(&r.rtype, &r.name, &rref), &[])?;
        }
        Ok(())
    }

    fn raise_alert(&self, mailbox: &str, alert: &Alert, at: &str) -> Result<()> {
        let key = keys::alert(mailbox, &alert.message);
        let prev = self.alerts.get(&key)?;
        let raised = StoredAlert::raise(prev.as_deref(), mailbox, alert, at);
        self.alerts.insert(key, enc(&raised))?;
        Ok(())
    }

    fn quarantine(&self, e: &QuarantineEntry, raw: &[u8]) -> Result<()> {
        let id = e.id.to_be_bytes();
        self.quarantine.insert(&id, enc(e))?;
        self.quarantine_raw.insert(&id, raw)?;
        self.quarantine_by_source
            .insert(keys::source(&e.source), &id)?;
        Ok(())
    }

    fn put_checkpoint(&self, st: &FolderState) -> Result<()> {
        self.folders
            .insert(keys::folder(&st.mailbox, &st.folder), enc(st))?;
        Ok(())
    }

    /// Keyed by activity id, then a store-wide sequence: an activity's trail is one range.
    fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        let seq = next_id(self.meta, "next_audit_seq")?;
        let mut key = e.activity.to_be_bytes().to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        self.audit.insert(key, enc(e))?;
        Ok(())
    }

    fn is_untracked(&self, id: u64) -> Result<bool> {
        Ok(self.untracked.get(id.to_be_bytes())?.is_some())
    }

    fn set_untracked(&self, id: u64, untracked: bool) -> Result<()> {
        match untracked {
            true => self.untracked.insert(&id.to_be_bytes(), &[])?,
            false => self.untracked.remove(&id.to_be_bytes())?,
        };
        Ok(())
    }

    fn field_state(&self, id: u64) -> Result<Option<FieldState>> {
        self.fields
            .get(id.to_be_bytes())?
            .map(|v| dec("fields", &v))
            .transpose()
    }

    fn put_field_state(&self, id: u64, st: &FieldState) -> Result<()> {
        self.fields.insert(&id.to_be_bytes(), enc(st))?;
        Ok(())
    }

    fn delete_activity(&self, a: &Activity, subject_key: Option<&str>) -> Result<()> {
        let id = a.id.to_be_bytes();
        // An index entry is removed only where it names this activity: another activity
        // may hold a token or Thread-Index key that this one once had.
        let remove_if_ours = |t: &TransactionalTree, key: Vec<u8>| -> Result<()> {
            if id_of(t.get(&key)?) == Some(a.id) {
                t.remove(key)?;
            }
            Ok(())
        };
        self.activities.remove(&id)?;
        let n = self
            .meta
            .get(ACTIVITY_COUNT)?
            .map_or(0, |v| keys::u64_of(&v));
        self.meta
            .insert(ACTIVITY_COUNT, &n.saturating_sub(1).to_be_bytes())?;
        remove_if_ours(
            self.activity_by_msgid,
            keys::msgid(&a.dedup_key, a.direction),
        )?;
        for s in std::iter::once(&a.source).chain(&a.other_sources) {
            remove_if_ours(self.activity_by_source, keys::source(s))?;
        }
        if let Some(r) = &a.regarding {
            self.activity_by_regarding
                .remove(keys::regarding(r, a.id))?;
        }
        for r in party_records(a) {
            self.activity_by_regarding
                .remove(keys::regarding(&keys::party_of(r), a.id))?;
        }
        if let Some(t) = &a.token {
            remove_if_ours(self.activity_by_token, keys::token(t))?;
        }
        if let Some(ti) = a.thread_index.as_deref().and_then(thread_bytes) {
            remove_if_ours(self.activity_by_thread, ti)?;
        }
        for parent in a.in_reply_to.iter().chain(&a.references) {
            self.activity_by_parent
                .remove(keys::regarding(parent, a.id))?;
        }
        if let Some(k) = subject_key {
            self.activity_by_subject.remove(keys::regarding(k, a.id))?;
        }
        for t in [self.fields, self.untracked, self.manual_links] {
            t.remove(&id)?;
        }
        Ok(())
    }
}

impl SledTx<'_> {
    /// The outbox entry of a queued send, in the transaction that creates its activity.
    pub(crate) fn put_outbox(&self, e: &OutboxEntry) -> Result<()> {
        self.outbox.insert(&e.activity.to_be_bytes(), enc(e))?;
        Ok(())
    }
}

impl Lookups for SledStore {
    type Error = StoreError;
    fn activity(&self, id: u64) -> Result<Option<Activity>> {
        self.activity_meta(id)
    }
    fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>> {
        Ok(id_of(self.t.activity_by_msgid.get(keys::msgid(key, d))?))
    }
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        SledStore::activity_by_source(self, s)
    }
    fn activity_by_token(&self, token: &str) -> Result<Option<u64>> {
        Ok(id_of(self.t.activity_by_token.get(keys::token(token))?))
    }
    fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>> {
        Ok(id_of(self.t.activity_by_thread.get(bytes)?))
    }
    fn record(&self, reference: &str) -> Result<Option<Record>> {
        self.t
            .records
            .get(reference.as_bytes())?
            .map(|v| dec("records", &v))
            .transpose()
    }
}

impl Scans for SledStore {
    fn awaiting_parent(&self, message_id: &str) -> Result<Vec<u64>> {
        self.t
            .activity_by_parent
            .scan_prefix(keys::regarding_prefix(message_id))
            .map(|kv| Ok(keys::u64_suffix(&kv?.0)))
            .collect()
    }
    fn extending_thread(&self, bytes: &[u8]) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for kv in self.t.activity_by_thread.scan_prefix(bytes) {
            let (k, v) = kv?;
            if k.len() > bytes.len() {
                out.push(keys::u64_of(&v));
            }
        }
        Ok(out)
    }
}

impl Engine for SledStore {
    type Tx<'t> = SledTx<'t>;
    fn transaction<T>(&self, f: impl Fn(&SledTx<'_>) -> Result<T>) -> Result<T> {
        self.t
            .all()
            .as_slice()
            .transaction(|t| {
                f(&SledTx::new(t)).map_err(|e| match e {
                    StoreError::Conflict => ConflictableTransactionError::Conflict,
                    e => ConflictableTransactionError::Abort(e),
                })
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }
}

impl RecordLookup for SledStore {
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

impl ActivityLookup for SledStore {
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

    /// A SIGKILL while sled writes its snapshot leaves `snap.<lsn>.generating` cut short; sled
    /// would read it at the next open and refuse the store as corrupted.
    #[test]
    fn a_snapshot_cut_short_by_a_kill_does_not_make_the_store_unopenable() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        use crate::track::conformance::{activity, commit, draft};
        commit(&store, &[draft(activity("m", "F", 1, "<kept@c>"))]).unwrap();
        store.flush().unwrap();
        drop(store);
        // What the kill leaves: the newest name, a few bytes of a snapshot, no checksum.
        let cut = dir
            .path()
            .join("db")
            .join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(
            &cut,
            b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10",
        )
        .unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).expect("the store opens");
        assert_eq!(store.activity_count(), 1);
        assert!(!cut.exists(), "the unfinished snapshot is gone");
    }

    /// A store written before the party index gets it at its next open: a record's timeline
    /// lists the activities it is a party of, old ones included.
    #[test]
    fn a_store_from_before_the_party_index_is_indexed_when_opened() {
        use crate::track::conformance::{activity, commit, draft};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let mut a = activity("m", "F", 1, "<p@c>");
        a.to = vec![crate::model::Party {
            address: Some("bob@acme.com".into()),
            name: None,
            record: Some("contact:bob".into()),
            records: vec!["contact:bob".into()],
        }];
        commit(&store, &[draft(a)]).unwrap();
        let bob = RecordRef::new("contact", "bob");
        assert_eq!(store.timeline_ids(&bob, None, 10).unwrap(), vec![1]);
        // What an older foldertrack left: no party entries, no mark.
        let party = keys::regarding(&keys::party_of("contact:bob"), 1);
        store.t.activity_by_regarding.remove(party).unwrap();
        store.t.meta.remove(PARTY_INDEX).unwrap();
        assert!(store.timeline_ids(&bob, None, 10).unwrap().is_empty());
        store.flush().unwrap();
        drop(store);
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.timeline_ids(&bob, None, 10).unwrap(), vec![1]);
    }

    /// CI saw a reopen fail on the data dir's own lock with this process's pid in it: a child
    /// this process was starting (the token command's `sh`) held a copy of the lock file's
    /// descriptor between its fork and its exec. Here a copy held for 200 ms plays that child.
    #[test]
    fn a_lock_still_held_by_this_process_for_a_moment_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let copy = store._lock.try_clone().unwrap();
        drop(store);
        let child = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(copy);
        });
        let store = SledStore::open(dir.path(), 1 << 20).expect("reopens once the copy is closed");
        child.join().unwrap();
        drop(store);
        // Another process's lock is still refused at once: played by a second handle here,
        // with a pid that is not ours written in the lock file.
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        std::fs::write(dir.path().join("foldertrack.lock"), "1").unwrap();
        let started = std::time::Instant::now();
        match SledStore::open(dir.path(), 1 << 20) {
            Err(StoreError::Locked { pid, .. }) => assert_eq!(pid.as_deref(), Some("1")),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        assert!(
            started.elapsed() < DB_LOCK_WAIT,
            "another process's lock is not waited for"
        );
        drop(store);
    }

    /// CI saw an immediate reopen fail on sled's own lock, still held by the dropped handle.
    #[test]
    fn a_store_closed_and_reopened_at_once_opens() {
        use crate::track::conformance::{activity, commit, draft};
        let write = |store: &SledStore, uid: u32| {
            commit(
                store,
                &[draft(activity("m", "F", uid, &format!("<{uid}@c>")))],
            )
            .unwrap();
        };
        // Other stores keep sled's shared I/O threads busy, as the other tests of a run do.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SledStore::open(dir.path(), 1 << 20).unwrap();
                    let mut uid = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        uid += 1;
                        write(&store, uid);
                        store.flush().unwrap();
                    }
                })
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for uid in 1..=40 {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            write(&store, uid);
            assert_eq!(store.activity_count() as u32, uid);
            store.flush().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        busy.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn the_activity_count_is_kept_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        use crate::track::conformance::{activity, commit, draft};
        let items: Vec<_> = (1..=3)
            .map(|uid| draft(activity("m", "F", uid, &format!("<{uid}@c>"))))
            .collect();
        commit(&store, &items).unwrap();
        commit(&store, &items).unwrap(); // a replay adds none
        assert_eq!(store.activity_count(), 3);
        assert_eq!(store.t.activities.len(), 3);
        // A store from before the counter gets it at open.
        store.t.meta.remove(ACTIVITY_COUNT).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert!(store.t.meta.get(ACTIVITY_COUNT).unwrap().is_some());
        assert_eq!(store.activity_count(), 3);
    }

    #[test]
    fn sled_engine_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        crate::track::conformance::suite(&store);
    }

    /// Alerts keyed by server text grew without bound.
    #[test]
    fn alerts_are_capped_per_mailbox_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
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
