//! The embedded CRM store (DESIGN §5): records, activities and their indexes, folder
//! checkpoints, quarantine, alerts, blobs and the outbox, on one of two engines. [`Store`] is
//! the type every caller holds; it dispatches to sled in the data dir ([`sledstore`], the
//! default) or to a PostgreSQL database ([`pg`], `[store] engine = "postgres"`).
//! The tracking rules themselves live in [`crate::track`] and run unchanged on both.

/// `store copy --from-sled`: a sled store into an empty PostgreSQL database.
pub(crate) mod copy;
mod engine;
mod keys;
pub(crate) mod outbox;
/// The PostgreSQL engine (DESIGN §5.1), `[store] engine = "postgres"`.
pub(crate) mod pg;
mod sledstore;

pub(crate) use engine::blocking;
pub use engine::Store;
pub(crate) use outbox::{OutboxEntry, OutboxSummary, SendState, OUTBOX_FOLDER};
pub(crate) use sledstore::SledStore;

pub(crate) use crate::model::{FolderState, QuarantineEntry};
pub(crate) use crate::track::batch::{BatchItem, BatchOutcome, Committed};

use crate::model::Alert;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// An agent of this data dir is running already (on PostgreSQL, where no lock stops a
    /// second one: its control socket answered).
    #[error("data dir {dir} is in use by another foldertrack process: its agent answers on the control socket; stop it first (one agent per configuration: two would track the same mailboxes twice)")]
    AgentRunning {
        /// The data dir.
        dir: PathBuf,
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
    /// A transaction met a concurrent one. The engine runs the transaction again; a caller
    /// never sees this.
    #[error("transaction conflict")]
    Conflict,
    /// Something a command names is not in the store.
    #[error("{0}")]
    NotFound(String),
    /// The PostgreSQL store failed (connecting, a statement, its schema). The message names
    /// host, database and user, never a password.
    #[error(transparent)]
    Postgres(crate::store::pg::PgError),
    /// The `[store]` settings cannot be used as they are (e.g. `url_env` names an unset
    /// variable).
    #[error("{0}")]
    Config(String),
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

type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    /// A write of a mailbox whose lease this agent no longer holds ([`pg::lease`]).
    pub(crate) fn is_fenced(&self) -> bool {
        matches!(self, StoreError::Postgres(pg::PgError::Fenced { .. }))
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

    /// `attempts` failures since `since` that could not be recorded then (the store itself
    /// failed): counted, and an outage opened at `since` unless one is open.
    pub(crate) fn failed_since(&mut self, since: &str, error: &str, attempts: u32) {
        let open = self.outages.last().is_some_and(|o| o.to.is_none());
        self.failed(error);
        self.consecutive_errors += attempts.saturating_sub(1);
        if !open {
            if let Some(o) = self.outages.last_mut() {
                o.from = since.to_string();
            }
        }
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

/// The alert of an outage recorded late, once the store answered again ([`MailboxState::failed_since`]).
pub(crate) fn late_outage_alert(since: &str, now: &str, attempts: u32, error: &str) -> Alert {
    Alert {
        level: crate::model::AlertLevel::Warning,
        message: format!(
            "the store could not be used from {since} to {now} ({attempts} failed attempt(s), recorded once it answered again): {error}"
        ),
    }
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

fn now() -> String {
    crate::time::humantime_now()
}

/// The "mailbox" of alerts about the store itself (the data dir's permissions): `status`
/// shows them apart from any mailbox's.
pub(crate) const STORE_ALERTS: &str = "";

impl From<crate::store::pg::PgError> for StoreError {
    fn from(e: crate::store::pg::PgError) -> StoreError {
        match e {
            crate::store::pg::PgError::NotFound(m) => StoreError::NotFound(m),
            e => StoreError::Postgres(e),
        }
    }
}

/// What a deletion freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deleted {
    /// Blobs deleted (no other activity used them).
    pub blobs_deleted: u32,
    /// Blobs kept because another activity or outgoing message uses them.
    pub blobs_kept: u32,
}

/// The blobs an activity refers to: stored attachments and its body.
pub(crate) fn blobs_of(a: &crate::model::Activity) -> std::collections::BTreeSet<String> {
    a.attachments
        .iter()
        .filter(|m| m.skipped.is_none())
        .map(|m| m.sha256.clone())
        .chain(a.body_blob.clone())
        .collect()
}

/// Two lists of ids, each newest first, merged into one: newest first, each id once, at most
/// `limit` (a record's timeline: what regards it and where it is a party).
pub(crate) fn merge_newest_first(
    a: impl Iterator<Item = Result<u64>>,
    b: impl Iterator<Item = Result<u64>>,
    limit: usize,
) -> Result<Vec<u64>> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    let mut out: Vec<u64> = Vec::with_capacity(limit);
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) | (Some(_), None) => a.next(),
            (_, Some(Err(_))) | (None, Some(_)) => b.next(),
            (Some(Ok(x)), Some(Ok(y))) => {
                if x >= y {
                    a.next()
                } else {
                    b.next()
                }
            }
        };
        let id = next.expect("peeked")?;
        if out.last() != Some(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod merge_tests {
    use super::merge_newest_first;

    fn ids(v: &[u64]) -> impl Iterator<Item = super::Result<u64>> + '_ {
        v.iter().copied().map(Ok)
    }

    #[test]
    fn merges_two_newest_first_lists_without_repeats_up_to_the_limit() {
        let m = merge_newest_first(ids(&[9, 7, 4, 2]), ids(&[8, 7, 3]), 10).unwrap();
        assert_eq!(m, vec![9, 8, 7, 4, 3, 2]);
        let m = merge_newest_first(ids(&[9, 7, 4, 2]), ids(&[8, 7, 3]), 3).unwrap();
        assert_eq!(m, vec![9, 8, 7]);
        assert!(merge_newest_first(ids(&[]), ids(&[]), 3)
            .unwrap()
            .is_empty());
    }
}
