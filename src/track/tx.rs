//! What the tracking rules need from a store, and nothing more (DESIGN §5.1): point reads,
//! the few scans late correlation makes, and the writes of the batch transaction, in terms of
//! activities, sources and records. An engine implements these over its own transaction
//! (sled's trees today; the in-memory engine of the tests); the rules in [`super::batch`] and
//! [`super::correlate`] never see a key, a tree or a table, so a second engine does not mean
//! writing them again.

use crate::model::{
    Activity, Alert, AuditEntry, Direction, FieldState, FolderState, QuarantineEntry, Record,
    Source,
};

/// A rule found the store inconsistent (an index that names a missing activity). Engines turn
/// it into their own error type, which aborts the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Broken(pub String);

/// What correlation reads of an earlier activity: whether it is not later than a new one, and
/// the regarding a reply may inherit from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub date: Option<String>,
    pub regarding: Option<String>,
}

impl From<&Activity> for Head {
    fn from(a: &Activity) -> Head {
        Head {
            date: a.date.clone(),
            regarding: a.regarding.clone(),
        }
    }
}

/// Point reads, inside a transaction (where earlier writes of the same transaction are seen)
/// or on the committed store.
pub(crate) trait Lookups {
    /// The engine's error; a rule's [`Broken`] converts into it.
    type Error: From<Broken>;
    /// An activity, its body text left out where the engine keeps bodies apart (the rules read
    /// headers, links and sources only).
    fn activity(&self, id: u64) -> Result<Option<Activity>, Self::Error>;
    /// The activities of `ids` that exist, in the order of `ids`: an engine whose every read
    /// is a round trip reads them at once.
    fn activities(&self, ids: &[u64]) -> Result<Vec<Activity>, Self::Error> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.activity(*id)?);
        }
        Ok(out)
    }
    /// Activity `id`'s [`Head`]: an engine that reads an activity whole (its body, parties,
    /// sources) from a server reads only these two columns for it.
    fn activity_head(&self, id: u64) -> Result<Option<Head>, Self::Error> {
        Ok(self.activity(id)?.as_ref().map(Head::from))
    }
    /// The activities of `ids` that exist, in the order of `ids`, as late correlation reads
    /// them: headers, references and, when `parties` (smart matching compares addresses),
    /// parties. An engine may leave out the body, sources, attachments and, without
    /// `parties`, the parties: nothing read here is written back (a change re-reads its
    /// activity whole in its own transaction).
    fn activities_for_correlation(
        &self,
        ids: &[u64],
        parties: bool,
    ) -> Result<Vec<Activity>, Self::Error> {
        let _ = parties;
        self.activities(ids)
    }
    /// The activity of this dedup key and direction (one per pair: DESIGN §4.7).
    fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>, Self::Error>;
    /// The activity tracked from exactly this source.
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>, Self::Error>;
    /// The earliest tracked activity whose subject carries tracking token `token` (compared
    /// case-insensitively): the one replies correlate to.
    fn activity_by_token(&self, token: &str) -> Result<Option<u64>, Self::Error>;
    /// The activity whose decoded Outlook Thread-Index is exactly `bytes`.
    fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>, Self::Error>;
    /// A record by its `type:key` reference.
    fn record(&self, reference: &str) -> Result<Option<Record>, Self::Error>;
}

/// Which counter a new id comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Activity,
    Quarantine,
}

/// How a new activity is to be found later, besides its id, dedup key, source and regarding,
/// which every engine indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Findable<'a> {
    /// It is the earliest activity with its tracking token ([`Lookups::activity_by_token`]
    /// must return it from now on).
    pub by_token: bool,
    /// It correlated to nothing yet: late correlation looks it up by the Message-IDs it
    /// names (In-Reply-To, References) when one of them is tracked later.
    pub awaiting_parent: bool,
    /// Its normalised subject, for smart matching.
    pub subject_key: Option<&'a str>,
}

/// The writes of one transaction. All of them commit together or none does; an error from any
/// method aborts the transaction (an engine may run the rules again after a conflict, so the
/// rules keep no state across a call).
pub(crate) trait BatchTx: Lookups {
    /// Whether this source is already in quarantine.
    fn is_quarantined(&self, s: &Source) -> Result<bool, Self::Error>;
    /// The next id of a counter: unique and increasing, never reused (an engine may leave
    /// gaps: ids it drew for a transaction that aborted, or reserved and did not give out).
    fn next_id(&self, c: Counter) -> Result<u64, Self::Error>;
    /// About `n` ids of `c` are about to be taken: an engine whose every draw is a round trip
    /// may draw them at once.
    fn reserve_ids(&self, _c: Counter, _n: usize) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The coming messages will look up these sources and these dedup keys (in both
    /// directions; the activities they find whole), and the Message-IDs they correlate to (the
    /// activities those find by their [`Head`] only): an engine whose every read is a round
    /// trip may read them all at once.
    fn prefetch(
        &self,
        _sources: &[&Source],
        _dedup_keys: &[&str],
        _correlation_keys: &[&str],
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Writes a new activity (its `id` already taken from [`Counter::Activity`]) with its
    /// source, dedup key, regarding, and what `find` asks for.
    fn insert_activity(&self, a: &Activity, find: Findable<'_>) -> Result<(), Self::Error>;
    /// Writes a changed activity: `before` is what [`Lookups::activity`] returned, and the
    /// engine moves its source and regarding lookups from `before`'s to `after`'s.
    fn update_activity(&self, before: &Activity, after: &Activity) -> Result<(), Self::Error>;
    /// Writes a record unless one with its reference exists (then leaves that one alone).
    fn insert_record_once(&self, r: &Record) -> Result<(), Self::Error>;
    /// Raises an alert of `mailbox` at `at`: a new one, or the same text raised again.
    fn raise_alert(&self, mailbox: &str, alert: &Alert, at: &str) -> Result<(), Self::Error>;
    /// Keeps a message that could not be tracked, with its raw bytes.
    fn quarantine(&self, e: &QuarantineEntry, raw: &[u8]) -> Result<(), Self::Error>;
    /// Writes a folder's checkpoint.
    fn put_checkpoint(&self, st: &FolderState) -> Result<(), Self::Error>;
    /// Appends an entry to an activity's audit trail (written with the transaction).
    fn append_audit(&self, e: &AuditEntry) -> Result<(), Self::Error>;
    /// Whether activity `id` was untracked (its message stays out of tracking where it is).
    fn is_untracked(&self, id: u64) -> Result<bool, Self::Error>;
    /// Marks activity `id` untracked, or tracked again.
    fn set_untracked(&self, id: u64, untracked: bool) -> Result<(), Self::Error>;
    /// The coming lookups will read these activities' synced fields and untracked marks (a
    /// flag scan): an engine whose every read is a round trip may read them all at once.
    fn prefetch_fields(&self, _ids: &[u64]) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Activity `id`'s synced fields and what its copies last looked like, if ever seen.
    fn field_state(&self, id: u64) -> Result<Option<FieldState>, Self::Error>;
    /// Writes activity `id`'s synced fields.
    fn put_field_state(&self, id: u64, st: &FieldState) -> Result<(), Self::Error>;
    /// Deletes activity `a` (as [`Lookups::activity`] returned it) with every index entry and
    /// child row it has, its synced fields and its untracked and hand-link marks (not its
    /// audit trail, nor blobs: the caller deletes those no other activity uses).
    /// `subject_key` is the normalised subject it was indexed under for smart matching.
    fn delete_activity(&self, a: &Activity, subject_key: Option<&str>) -> Result<(), Self::Error>;
}

/// The reads late correlation makes on the committed store (a transaction need not offer
/// them: sled's cannot scan).
pub(crate) trait Scans: Lookups {
    /// Activities tracked uncorrelated that name `message_id` in In-Reply-To or References.
    fn awaiting_parent(&self, message_id: &str) -> Result<Vec<u64>, Self::Error>;
    /// [`Scans::awaiting_parent`] of several Message-IDs at once: (Message-ID, activity)
    /// pairs, each Message-ID's activities in increasing order.
    fn awaiting_parents(&self, message_ids: &[&str]) -> Result<Vec<(String, u64)>, Self::Error> {
        let mut out = Vec::new();
        for m in message_ids {
            out.extend(
                self.awaiting_parent(m)?
                    .into_iter()
                    .map(|id| (m.to_string(), id)),
            );
        }
        Ok(out)
    }
    /// Activities whose decoded Thread-Index extends `bytes` (longer, with `bytes` as prefix).
    fn extending_thread(&self, bytes: &[u8]) -> Result<Vec<u64>, Self::Error>;
}

/// An engine: committed reads and scans, and transactions over [`BatchTx`].
pub(crate) trait Engine: Scans + super::ActivityLookup {
    /// The engine's transaction.
    type Tx<'t>: BatchTx<Error = Self::Error>
    where
        Self: 't;
    /// Runs `f` in one transaction and commits what it wrote; on an error nothing is written.
    /// `f` may run more than once (after a conflict).
    fn transaction<T>(
        &self,
        f: impl Fn(&Self::Tx<'_>) -> Result<T, Self::Error>,
    ) -> Result<T, Self::Error>;
}
