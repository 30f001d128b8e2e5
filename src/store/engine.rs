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

    /// A store over an open PostgreSQL engine (tests that run on both engines).
    #[cfg(test)]
    pub(crate) fn from_pg(p: PgStore) -> Store {
        Store {
            backend: Backend::Pg(p),
        }
    }

    /// Whether this store is a PostgreSQL database (no data dir lock: commands open it
    /// alongside a running agent).
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// The lease table, on PostgreSQL (on sled one agent holds every mailbox).
    pub(crate) fn leases(&self) -> Option<crate::store::pg::lease::Leases<'_>> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Pg(p) => Some(crate::store::pg::lease::Leases(p)),
        }
    }

    /// The fences of this process's leases, on PostgreSQL.
    pub(crate) fn fences(&self) -> Option<&crate::store::pg::lease::Fences> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Pg(p) => Some(p.fences()),
        }
    }

    /// Whether this process may work `mailbox` now: always on sled, and on PostgreSQL unless
    /// the agent works with leases and does not hold this one.
    pub(crate) fn holds(&self, mailbox: &str) -> bool {
        self.fences().is_none_or(|f| f.holds(mailbox))
    }

    /// Who sends `mailbox`'s queued mail if not this process: on PostgreSQL the agent holding
    /// its lease (an agent sends only its own mailboxes'; a command without an agent leaves
    /// a mailbox some agent works to that agent). `None`: send here.
    ///
    /// # Errors
    /// The lease table cannot be read.
    pub(crate) fn sender_elsewhere(&self, mailbox: &str) -> Result<Option<String>> {
        let (Some(leases), Some(fences)) = (self.leases(), self.fences()) else {
            return Ok(None);
        };
        if fences.enabled() && fences.holds(mailbox) {
            return Ok(None);
        }
        let owner = leases.owner(mailbox)?;
        Ok(match fences.enabled() {
            true => Some(owner.unwrap_or_else(|| "the next agent to take it".into())),
            false => owner,
        })
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
    /// The activities of `ids` that exist, with their body text, in the order of `ids`
    /// (PostgreSQL reads them in a handful of statements, not a handful per activity).
    fn activities_by_id(&self, ids: &[u64]) -> Result<Vec<Activity>>;
    /// The ids of the activities regarding a record or with it as a party, newest first: at
    /// most `limit`, ids below `before`.
    fn timeline_ids(&self, r: &RecordRef, before: Option<u64>, limit: usize) -> Result<Vec<u64>>;
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
    fn link_by_hand(&self, id: u64, r: &RecordRef, actor: &str) -> Result<bool>;
    /// Points an activity at `regarding` (or at nothing). `false` when it does not exist.
    fn relink(&self, id: u64, regarding: Option<&str>, actor: &str) -> Result<bool>;
    /// Marks an activity untracked, by `actor`: `None` when there is no such activity,
    /// `Some(false)` when it was already.
    fn untrack(&self, id: u64, actor: &str) -> Result<Option<bool>>;
    /// The activities untracked, by id.
    fn untracked_ids(&self) -> Result<Vec<u64>>;
    /// Deletes an activity for good, by `actor` with an optional reason (its audit trail
    /// stays), and the blobs only it used: `None` when there is no such activity.
    fn delete_activity(
        &self,
        id: u64,
        subject_key: Option<&str>,
        actor: &str,
        reason: Option<&str>
    ) -> Result<Option<crate::store::Deleted>>;
    /// The UIDs of a folder (under `uidvalidity`) that activities were tracked from, sorted.
    fn tracked_uids(&self, mailbox: &str, folder: &str, uidvalidity: u32) -> Result<Vec<u32>>;
    /// Applies a folder's flag scan (DESIGN §4.15) and writes its checkpoint `cp`, in one
    /// transaction (on PostgreSQL fenced by the mailbox's lease).
    fn apply_flag_scan(
        &self,
        found: &[(Source, Vec<String>)],
        mb: &crate::config::MailboxConfig,
        cp: &FolderState
    ) -> Result<crate::track::fields::ScanOutcome>;
    /// Records that the server took these pushes of the CRM's fields.
    fn record_pushed(&self, pushes: &[crate::track::fields::Push]) -> Result<()>;
    /// Sets an activity's fields in the CRM, by `actor`: `None` when there is no such
    /// activity, else the pushes that bring its copies the CRM's values.
    fn set_fields(
        &self,
        id: u64,
        change: &crate::track::fields::FieldChange,
        sync: &crate::config::FieldSync,
        actor: &str
    ) -> Result<Option<Vec<crate::track::fields::Push>>>;
    /// An activity's synced fields, if they were ever seen.
    fn field_state(&self, id: u64) -> Result<Option<crate::model::FieldState>>;
    /// Removes audit entries older than `before` (RFC 3339 UTC), `[audit] retention_days`.
    fn prune_audit(&self, before: &str) -> Result<u64>;
    /// An activity's audit trail, newest first (also after the activity is gone).
    fn audit(&self, id: u64) -> Result<Vec<crate::model::AuditEntry>>;
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
    fn by_emails(&self, emails: &[&str]) -> Vec<(String, Vec<Record>)> {
        match &self.backend {
            Backend::Sled(s) => emails
                .iter()
                .map(|e| (e.to_string(), s.by_email(e)))
                .collect(),
            Backend::Pg(p) => blocking(|| p.by_emails(emails)),
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

/// The product's store methods, the same on both engines: what the CLI, the agent and the
/// outbox see through [`Store`] (the rules themselves are held to `track::conformance`).
impl Store {
    /// A page of a record's timeline: the newest `limit` activities below `before` that regard
    /// it or have it as a party and that `keep` keeps (the web page's filters and what its
    /// reader may see), and the id to ask for the next page with when there are more.
    ///
    /// The engines list ids (cheap, an index range); the activities are loaded and filtered
    /// here, a chunk at a time, so one filter serves both engines. An unfiltered page loads
    /// `limit + 1`; a filter that keeps few reads further, to the end of the record at worst.
    pub(crate) fn timeline(
        &self,
        r: &RecordRef,
        before: Option<u64>,
        limit: usize,
        keep: impl Fn(&Activity) -> bool,
    ) -> Result<(Vec<Activity>, Option<u64>)> {
        const CHUNK: usize = 200;
        let mut out = Vec::with_capacity(limit + 1);
        let (mut cursor, mut ask) = (before, limit + 1);
        loop {
            let ids = self.timeline_ids(r, cursor, ask)?;
            let at_end = ids.len() < ask;
            cursor = ids.last().copied().or(cursor);
            for a in self.activities_by_id(&ids)? {
                if out.len() > limit {
                    break;
                }
                if keep(&a) {
                    out.push(a);
                }
            }
            if out.len() > limit || at_end {
                break;
            }
            ask = CHUNK;
        }
        let older = (out.len() > limit && limit > 0).then(|| out[limit - 1].id);
        out.truncate(limit);
        Ok((out, older))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Alert;
    use crate::model::{AlertLevel, Direction};
    use crate::store::{OutboxEntry, SendState, ALERT_MAX_AGE_DAYS, MAX_ALERTS, OUTBOX_FOLDER};
    use crate::track::conformance::{activity, checkpoint, draft, record};

    fn suite(store: &Store) {
        records_in_key_order_across_pages(store);
        batches_listings_and_links(store);
        alerts_are_capped_and_age_out(store);
        quarantine_and_blobs(store);
        outbox_and_token_numbers(store);
    }

    fn records_in_key_order_across_pages(store: &Store) {
        // More than a page of PostgreSQL's streaming read (200), in a mixed insertion order.
        let mut recs: Vec<Record> = (0..450)
            .rev()
            .map(|i| record("account", &format!("a{i:04}"), None))
            .collect();
        let mut bob = record("contact", "bob", Some("systemuser:alice"));
        bob.emails = vec!["Bob@Acme.com".into()];
        bob.name = "Bob Builder".into();
        recs.push(bob.clone());
        store.put_records(&recs).unwrap();
        let all = store.records(None).unwrap();
        assert_eq!(all.len(), 451);
        assert_eq!(all[0].key, "a0000");
        assert_eq!(all[449].key, "a0449");
        assert_eq!(all[450].key, "bob", "type:key order");
        let streamed: Vec<Record> = store
            .records_iter(Some("account"))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(streamed.len(), 450);
        assert_eq!(store.by_email("bob@acme.com"), vec![bob.clone()]);
        assert_eq!(store.by_name("contact", "BOB builder"), vec![bob.clone()]);
        assert!(store.by_name("account", "Bob Builder").is_empty());
        // Replaced, not doubled.
        bob.name = "Robert Builder".into();
        store.put_records(&[bob]).unwrap();
        assert_eq!(
            store.records(Some("contact")).unwrap()[0].name,
            "Robert Builder"
        );
    }

    fn batches_listings_and_links(store: &Store) {
        let mut a = activity("alice", "INBOX/Acme", 1, "<one@t>");
        a.regarding = Some("account:a0001".into());
        a.body_text = "long ".repeat(200);
        store.keep_body_out(&mut a);
        let b = activity("alice", "INBOX/Acme", 2, "<two@t>");
        let cp = checkpoint("alice", "INBOX/Acme", 2);
        let done = store
            .commit_batch(&[draft(a), draft(b)], &cp, "alice")
            .unwrap();
        assert_eq!(done.outcome.created, 2);
        assert_eq!(done.tracked_uids, vec![1, 2]);
        assert_eq!(store.activity_count(), 2);
        let all = store.activities(None).unwrap();
        assert_eq!(all[0].body_text, "long ".repeat(200), "the body comes back");
        let acme = RecordRef::new("account", "a0001");
        let linked = store.activities(Some(&acme)).unwrap();
        assert_eq!(linked.len(), 1);
        let id = linked[0].id;
        assert_eq!(store.activities_iter().count(), 2);
        let src = crate::track::conformance::source("alice", "INBOX/Acme", 2);
        assert_eq!(store.activity_by_source(&src).unwrap(), Some(all[1].id));
        assert_eq!(store.counterpart(&all[0]).unwrap(), None);
        // Checkpoints, rename, bindings, mailbox state.
        assert_eq!(
            store
                .folder_state("alice", "INBOX/Acme")
                .unwrap()
                .unwrap()
                .last_uid,
            2
        );
        store
            .rename_folder_state("alice", "INBOX/Acme", "INBOX/Acme2")
            .unwrap();
        assert!(store.folder_state("alice", "INBOX/Acme").unwrap().is_none());
        assert_eq!(store.folder_states().unwrap()[0].folder, "INBOX/Acme2");
        let binding = RuleBinding {
            folder: "INBOX/Acme2".into(),
            uidvalidity: 1,
        };
        store
            .put_rule_binding("alice", "INBOX/Acme", &binding)
            .unwrap();
        assert_eq!(
            store.rule_binding("alice", "INBOX/Acme").unwrap(),
            Some(binding)
        );
        let mut st = store.mailbox_state("alice").unwrap();
        assert_eq!(st.name, "alice");
        st.failed("refused");
        store.put_mailbox_state(&st).unwrap();
        assert_eq!(store.mailbox_state("alice").unwrap().outages.len(), 1);
        // A link by hand, found by its folder, then cleared.
        let other = all[1].id;
        assert!(store.link_by_hand(other, &acme, "cli:root").unwrap());
        assert!(!store.link_by_hand(999_999, &acme, "cli:root").unwrap());
        assert_eq!(store.activities(Some(&acme)).unwrap().len(), 2);
        assert_eq!(
            store.manual_links_in("alice", "INBOX/Acme").unwrap(),
            vec![(other, 2)]
        );
        store.clear_manual_link(other).unwrap();
        assert!(store
            .manual_links_in("alice", "INBOX/Acme")
            .unwrap()
            .is_empty());
        assert!(store.relink(id, None, "cli:root").unwrap());
        assert_eq!(store.activities(Some(&acme)).unwrap().len(), 1);
        // The audit trail, newest first: unlinked by hand, created by the folder's rule.
        use crate::model::AuditAction;
        let trail = store.audit(id).unwrap();
        let got: Vec<(&str, AuditAction, Option<&str>, Option<&str>)> = trail
            .iter()
            .map(|x| {
                (
                    x.actor.as_str(),
                    x.action,
                    x.old.as_deref(),
                    x.new.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "cli:root",
                    AuditAction::Relinked,
                    Some("account:a0001"),
                    None
                ),
                (
                    "rule:alice/INBOX/Acme",
                    AuditAction::Created,
                    None,
                    Some("account:a0001")
                ),
            ]
        );
        assert_eq!(
            store.audit(other).unwrap()[0].new.as_deref(),
            Some("account:a0001")
        );
        assert!(store.audit(999_999).unwrap().is_empty());
        // Retention: nothing is older than a day ago; everything is older than tomorrow.
        let day = |d: i64| crate::time::rfc3339_utc(crate::time::unix_now() + d * 86_400);
        assert_eq!(store.prune_audit(&day(-1)).unwrap(), 0);
        assert!(store.prune_audit(&day(1)).unwrap() >= 3);
        assert!(store.audit(id).unwrap().is_empty());
    }

    fn alerts_are_capped_and_age_out(store: &Store) {
        let alert = |message: String| Alert {
            level: AlertLevel::Warning,
            message,
        };
        for i in 0..MAX_ALERTS + 5 {
            store
                .add_alert("carol", alert(format!("server said {i}")))
                .unwrap();
        }
        store
            .add_alert("carol", alert("server said 7".into()))
            .unwrap();
        let carol: Vec<StoredAlert> = store
            .alerts(1000)
            .unwrap()
            .into_iter()
            .filter(|a| a.mailbox == "carol")
            .collect();
        assert_eq!(carol.len(), MAX_ALERTS);
        let seven = carol
            .iter()
            .find(|a| a.alert.message == "server said 7")
            .unwrap();
        assert_eq!(seven.count, 2, "raised again: counted, not added");
        assert_eq!(store.alerts(3).unwrap().len(), 3);
    }

    fn quarantine_and_blobs(store: &Store) {
        let item = BatchItem::Quarantined {
            source: crate::track::conformance::source("bob", "INBOX", 9),
            reason: "cannot parse".into(),
            raw: b"raw bytes".to_vec(),
            size: 9,
        };
        store
            .commit_batch(&[item], &checkpoint("bob", "INBOX", 9), "bob")
            .unwrap();
        let q = store.quarantine().unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(store.quarantine_count(), 1);
        assert_eq!(
            store.quarantine_entry(q[0].id).unwrap().unwrap().reason,
            "cannot parse"
        );
        assert_eq!(
            store.quarantine_raw(q[0].id).unwrap().unwrap(),
            b"raw bytes"
        );
        assert!(store.quarantine_remove(q[0].id).unwrap());
        assert!(!store.quarantine_remove(q[0].id).unwrap());
        assert_eq!(store.quarantine_count(), 0);
        store.put_blob("ab12", b"attachment").unwrap();
        store.put_blob("ab12", b"attachment").unwrap();
        assert_eq!(store.blob("ab12").unwrap().unwrap(), b"attachment");
        assert_eq!(store.blob("cd34").unwrap(), None);
        store.flush().unwrap();
        assert!(store.schema_version().unwrap() >= 1);
        assert!(store.disk_usage() > 0);
    }

    fn outbox_and_token_numbers(store: &Store) {
        assert_eq!(
            store.next_token_numbers("systemuser:alice").unwrap(),
            (1, 1)
        );
        assert_eq!(
            store.next_token_numbers("systemuser:alice").unwrap(),
            (1, 2)
        );
        assert_eq!(store.next_token_numbers("systemuser:bob").unwrap(), (2, 1));
        let src = store.outbox_source("alice").unwrap();
        assert_eq!(src.folder, OUTBOX_FOLDER);
        assert_ne!(store.outbox_source("alice").unwrap().uid, src.uid);
        let mut a = activity("alice", "x", 0, "<sent@t>");
        a.direction = Direction::Outgoing;
        a.source = src;
        let BatchItem::Tracked(d) = draft(a) else {
            unreachable!()
        };
        let entry = OutboxEntry {
            activity: 0,
            mailbox: "alice".into(),
            message_id: "<sent@t>".into(),
            raw_sha256: "ab12".into(),
            raw_size: 10,
            from: "alice@example.com".into(),
            recipients: vec!["carol@globex.com".into()],
            state: SendState::Queued,
            attempts: 0,
            queued_at: 1,
            next_attempt: 1,
            last_error: None,
            sent_at: None,
            server_reply: None,
            sent_copy: None,
            copy_error: None,
        };
        let id = store.enqueue_outgoing(&d, &entry).unwrap();
        let mut e = store.outbox_entry(id).unwrap().unwrap();
        assert_eq!(e.activity, id);
        assert_eq!(
            store.activity(id).unwrap().unwrap().direction,
            Direction::Outgoing
        );
        // The same message again: refused, and nothing of it written.
        let n = store.activity_count();
        assert!(matches!(
            store.enqueue_outgoing(&d, &entry),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.activity_count(), n);
        e.state = SendState::Sent;
        store.put_outbox_entry(&e).unwrap();
        assert_eq!(store.outbox_entries().unwrap(), vec![e.clone()]);
        let summary = store.outbox_summary().unwrap();
        assert_eq!(summary["alice"].counts[&SendState::Sent], 1);
        e.activity = 999_999;
        assert!(matches!(
            store.put_outbox_entry(&e),
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn sled_store_serves_the_product() {
        let dir = tempfile::tempdir().unwrap();
        suite(&Store::open(dir.path(), 1 << 20).unwrap());
    }

    #[test]
    fn postgres_store_serves_the_product() {
        let Some(pg) = testkit::pg::PgCluster::start() else {
            return;
        };
        let store = Store {
            backend: Backend::Pg(PgStore::open(pg.url()).unwrap()),
        };
        suite(&store);
        // An alert not raised again for ALERT_MAX_AGE_DAYS goes at the mailbox's next alert.
        let Backend::Pg(p) = &store.backend else {
            unreachable!()
        };
        let old =
            crate::time::rfc3339_utc(crate::time::unix_now() - (ALERT_MAX_AGE_DAYS + 1) * 86_400);
        p.sql()
            .unwrap()
            .execute(
                "INSERT INTO alerts (mailbox, message, level, count, first_at, at)
                 VALUES ('dave', 'ancient', 'warning', 1, $1, $1)",
                &[&old],
            )
            .unwrap();
        let fresh = Alert {
            level: AlertLevel::Info,
            message: "fresh".into(),
        };
        store.add_alert("dave", fresh).unwrap();
        let dave: Vec<String> = store
            .alerts(1000)
            .unwrap()
            .into_iter()
            .filter(|a| a.mailbox == "dave")
            .map(|a| a.alert.message)
            .collect();
        assert_eq!(dave, vec!["fresh".to_string()]);
    }

    /// The agent calls the store from its async tasks: PostgreSQL's blocking client must not
    /// panic there, on either runtime flavour.
    #[test]
    fn postgres_store_runs_on_async_tasks() {
        let Some(pg) = testkit::pg::PgCluster::start() else {
            return;
        };
        let store = std::sync::Arc::new(Store {
            backend: Backend::Pg(PgStore::open(pg.url()).unwrap()),
        });
        for multi in [true, false] {
            let rt = match multi {
                true => tokio::runtime::Builder::new_multi_thread().build(),
                false => tokio::runtime::Builder::new_current_thread().build(),
            }
            .unwrap();
            let s = store.clone();
            let n = rt.block_on(async move { s.records(None).unwrap().len() });
            assert_eq!(n, 0);
        }
        // Dropped on a runtime thread: the pooled clients close off it.
        let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        rt.block_on(async move { drop(store) });
    }
}
