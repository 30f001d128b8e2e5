//! [`Store`], the one store type callers hold: it dispatches every method to the engine the
//! configuration chose (`[store] engine`), sled in the data dir or a PostgreSQL database. The
//! engines answer the same questions with the same types; only how they keep the data differs.

use super::outbox::{OutboxEntry, OutboxSummary, SendState};
use super::{
    FolderState, MailboxState, QuarantineEntry, Result, RuleBinding, SledStore, StoreError,
    StoredAlert,
};
use crate::config::{Config, StoreEngine};
use crate::model::{Activity, Alert, Draft, Record, RecordRef, Source};
use crate::store::pg::PgStore;
use crate::track::batch::{BatchItem, Committed};
use crate::track::{ActivityLookup, RecordLookup};
use std::collections::BTreeMap;
use std::path::Path;

/// The CRM store: sled in one data dir (one process at a time holds it), or a PostgreSQL
/// database that any number of agents and commands use at once.
pub struct Store {
    backend: Backend,
}

enum Backend {
    Sled(SledStore),
    Pg(PgStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Sled(_) => f.write_str("Store(sled)"),
            // PgStore's Debug names host, database and user, never the password.
            Backend::Pg(p) => write!(f, "Store({p:?})"),
        }
    }
}

impl Store {
    /// Opens (creating) the sled store in `dir`, taking its lock.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds it; I/O errors name the dir.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        Ok(Store {
            backend: Backend::Sled(SledStore::open(dir, cache_bytes)?),
        })
    }

    /// Opens the store the configuration names: sled in its data dir, or its PostgreSQL
    /// database (connected, and its schema migrated to this binary's version).
    ///
    /// # Errors
    /// As [`Store::open`] for sled; for PostgreSQL, [`StoreError::Postgres`] (no password in
    /// it) or [`StoreError::Config`] when the URL's environment variable is missing.
    pub fn open_config(config: &Config) -> Result<Store> {
        match &config.store {
            StoreEngine::Sled => Store::open(&config.data_dir, config.cache_bytes),
            StoreEngine::Postgres(pg) => {
                let url = pg.url().map_err(StoreError::Config)?;
                let store = blocking(|| PgStore::open_with(&url, pg))?;
                Ok(Store {
                    backend: Backend::Pg(store),
                })
            }
        }
    }

    /// Whether this store is a PostgreSQL database (no data dir lock: commands open it
    /// alongside a running agent).
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// The engine and where its data is, for `status` (never a password).
    pub(crate) fn describe(&self) -> String {
        match &self.backend {
            Backend::Sled(_) => "sled".into(),
            Backend::Pg(p) => format!("postgres ({})", p.target()),
        }
    }

    /// Every activity in id (= tracking time) order, read a few at a time: exports stream
    /// through this without holding the store in memory.
    pub(crate) fn activities_iter(&self) -> Box<dyn Iterator<Item = Result<Activity>> + '_> {
        match &self.backend {
            Backend::Sled(s) => Box::new(s.activities_iter()),
            Backend::Pg(p) => Box::new(Blocking(p.activities_iter())),
        }
    }

    /// Every record (of `rtype`, if given) in `type:key` order, read a few at a time.
    pub(crate) fn records_iter<'a>(
        &'a self,
        rtype: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = Result<Record>> + 'a> {
        match &self.backend {
            Backend::Sled(s) => Box::new(s.records_iter(rtype)),
            Backend::Pg(p) => Box::new(Blocking(p.records_iter(rtype))),
        }
    }

    /// Keeps a new activity's long body text apart (sled: in the blob packs). PostgreSQL
    /// keeps it in its `body_text` column, where SQL reads it: nothing to do.
    pub(crate) fn keep_body_out(&self, a: &mut Activity) {
        if let Backend::Sled(s) = &self.backend {
            s.keep_body_out(a);
        }
    }

    /// Each mailbox's outbox at a glance, in one pass over the entries (for `status` and the
    /// metrics).
    pub(crate) fn outbox_summary(&self) -> Result<BTreeMap<String, OutboxSummary>> {
        let mut out: BTreeMap<String, OutboxSummary> = BTreeMap::new();
        for e in self.outbox_entries()? {
            let s = out.entry(e.mailbox.clone()).or_default();
            *s.counts.entry(e.state).or_default() += 1;
            // Authentication failures keep a message queued (smtp::SmtpError::Auth).
            s.login_stuck |= e.state == SendState::Queued
                && e.last_error.as_deref().is_some_and(|m| m.contains("login"));
        }
        Ok(out)
    }
}

/// Runs blocking PostgreSQL work where the caller is. The `postgres` crate drives its own
/// tokio runtime and panics when called on a runtime thread ("Cannot start a runtime from
/// within a runtime"), and the agent calls the store from its async tasks: on a
/// multi-threaded runtime (the binary's) the work runs in `block_in_place`, which hands this
/// worker's other tasks to another thread meanwhile; on a current-thread runtime (a
/// `#[tokio::test]`) it runs on a scoped thread of its own; outside a runtime, right here.
pub(crate) fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
        Ok(_) => tokio::task::block_in_place(f),
        Err(_) => f(),
    }
}

/// An iterator whose every step is PostgreSQL work, run through [`blocking`].
struct Blocking<I>(I);

impl<T: Send, I: Iterator<Item = T> + Send> Iterator for Blocking<I> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        let it = &mut self.0;
        blocking(move || it.next())
    }
}

/// The methods both engines implement, dispatched: the same name and signature on
/// [`SledStore`] and [`PgStore`] (PostgreSQL's run through [`blocking`]).
macro_rules! dispatch {
    ($( $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$m])*
                pub(crate) fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        Backend::Sled(s) => s.$name($($arg),*),
                        Backend::Pg(p) => blocking(|| p.$name($($arg),*)),
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// The store's schema version (sled's `meta`, PostgreSQL's `schema_version` table).
    fn schema_version(&self) -> Result<u32>;
    /// Makes everything written so far durable (PostgreSQL: a commit already is).
    fn flush(&self) -> Result<()>;
    /// Inserts or replaces records, all or none.
    fn put_records(&self, recs: &[Record]) -> Result<()>;
    fn record(&self, r: &RecordRef) -> Result<Option<Record>>;
    /// All records, optionally of one type, in `type:key` order.
    fn records(&self, rtype: Option<&str>) -> Result<Vec<Record>>;
    /// An activity with its body text.
    fn activity(&self, id: u64) -> Result<Option<Activity>>;
    /// Activities in id (= tracking time) order; `regarding` filters by the linked record.
    fn activities(&self, regarding: Option<&RecordRef>) -> Result<Vec<Activity>>;
    /// The activity of the same message in the other direction (sent copy ↔ received copy).
    fn counterpart(&self, a: &Activity) -> Result<Option<u64>>;
    /// Bytes the store takes (sled: on disk; PostgreSQL: the database's size), for metrics.
    fn disk_usage(&self) -> u64;
    fn activity_count(&self) -> usize;
    /// The activity tracked from this exact source, if any.
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>>;
    fn folder_state(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>>;
    fn folder_states(&self) -> Result<Vec<FolderState>>;
    /// Writes a folder checkpoint on its own (e.g. a folder seen for the first time, or empty).
    fn put_folder_state(&self, st: &FolderState) -> Result<()>;
    fn mailbox_state(&self, name: &str) -> Result<MailboxState>;
    fn put_mailbox_state(&self, st: &MailboxState) -> Result<()>;
    /// Raises an alert (kept per mailbox: at most `MAX_ALERTS`, none older than
    /// `ALERT_MAX_AGE_DAYS`).
    fn add_alert(&self, mailbox: &str, alert: Alert) -> Result<()>;
    /// The `n` most recently raised alerts, newest first.
    fn alerts(&self, n: usize) -> Result<Vec<StoredAlert>>;
    fn quarantine(&self) -> Result<Vec<QuarantineEntry>>;
    /// One quarantined message, by id.
    fn quarantine_entry(&self, id: u64) -> Result<Option<QuarantineEntry>>;
    /// Removes a quarantined message (after a successful replay, or `quarantine drop`).
    fn quarantine_remove(&self, id: u64) -> Result<bool>;
    fn quarantine_raw(&self, id: u64) -> Result<Option<Vec<u8>>>;
    fn quarantine_count(&self) -> usize;
    /// Sets an activity's regarding by hand and remembers that it was by hand. `false` when
    /// there is no such activity.
    fn link_by_hand(&self, id: u64, r: &RecordRef) -> Result<bool>;
    /// Points an activity at `regarding` (or at nothing). `false` when it does not exist.
    fn relink(&self, id: u64, regarding: Option<&str>) -> Result<bool>;
    /// Activities linked by hand whose first or other source is in `mailbox`/`folder`, with
    /// the UID they have there.
    fn manual_links_in(&self, mailbox: &str, folder: &str) -> Result<Vec<(u64, u32)>>;
    fn clear_manual_link(&self, id: u64) -> Result<()>;
    fn rule_binding(&self, mailbox: &str, rule: &str) -> Result<Option<RuleBinding>>;
    fn put_rule_binding(&self, mailbox: &str, rule: &str, b: &RuleBinding) -> Result<()>;
    /// Moves a folder's checkpoint to its new name after a rename, so nothing is read again.
    fn rename_folder_state(&self, mailbox: &str, from: &str, to: &str) -> Result<()>;
    /// Late correlation for activities given by id, read back a few hundred at a time.
    fn recorrelate_ids(
        &self,
        ids: &[u64],
        writer: &crate::model::Writer,
        smart: Option<&crate::token::TokenFormat>
    ) -> Result<u32>;
    /// Stores a blob (attachment, raw outgoing message) under its sha256, once.
    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<()>;
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>>;
    /// Writes one batch and the folder checkpoint in one transaction (`track::batch`).
    fn commit_batch(
        &self,
        items: &[BatchItem],
        checkpoint: &FolderState,
        alerts_mailbox: &str
    ) -> Result<Committed>;
    /// Writes a new outgoing activity and its outbox entry in one transaction.
    fn enqueue_outgoing(&self, draft: &Draft, entry: &OutboxEntry) -> Result<u64>;
    /// A fresh pseudo source for an activity created in the CRM.
    fn outbox_source(&self, mailbox: &str) -> Result<Source>;
    /// The next tracking token numbers of `user`: its user number and its counter.
    fn next_token_numbers(&self, user: &str) -> Result<(u32, u64)>;
    fn outbox_entry(&self, activity: u64) -> Result<Option<OutboxEntry>>;
    /// Every outbox entry, oldest first.
    fn outbox_entries(&self) -> Result<Vec<OutboxEntry>>;
    /// Replaces an outbox entry (it must exist), durably.
    fn put_outbox_entry(&self, e: &OutboxEntry) -> Result<()>;
}

impl RecordLookup for Store {
    fn get(&self, r: &RecordRef) -> Option<Record> {
        self.record(r).ok().flatten()
    }
    fn by_email(&self, email: &str) -> Vec<Record> {
        match &self.backend {
            Backend::Sled(s) => s.by_email(email),
            Backend::Pg(p) => blocking(|| p.by_email(email)),
        }
    }
    fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
        match &self.backend {
            Backend::Sled(s) => s.by_name(rtype, name),
            Backend::Pg(p) => blocking(|| p.by_name(rtype, name)),
        }
    }
}

impl ActivityLookup for Store {
    fn by_subject(&self, subject: &str) -> Vec<(u64, Vec<String>)> {
        match &self.backend {
            Backend::Sled(s) => s.by_subject(subject),
            Backend::Pg(p) => blocking(|| p.by_subject(subject)),
        }
    }
}
