//! `foldertrack store copy --from-sled DIR`: a sled store, whole, into an empty PostgreSQL
//! database (DESIGN §5.1), then verified.
//!
//! The copy streams sled's trees in key order and writes them in batches, one transaction
//! each, with the copy's progress (`copy_progress`: source dir, phase, last activity id, last
//! blob) in the same transaction: an interrupted copy run again continues where it stopped and
//! writes nothing twice. Activities keep their ids; the sequences are set past the highest
//! copied ids so new activities do not collide. Phases, in order: records, blobs, activities
//! (rows, child rows, token and Thread-Index lookups), indexes (subject keys, awaiting
//! parents), state (checkpoints, mailbox states, quarantine, alerts, manual links, rule
//! bindings, outbox, token users, sequences: one transaction), verify.
//!
//! The verification reads both stores through their read APIs: per kind the count and a
//! checksum (sha256 over each activity's canonical JSON in id order; for the other kinds an
//! order-free sum of each item's sha256, so that neither side's sort order matters).

use super::pg::bulk::NewActivity;
use super::pg::copy::State;
use super::pg::PgStore;
use super::sledstore::TokenUser;
use super::{SledStore, StoreError};
use crate::model::Record;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Activities per transaction.
const ACTIVITY_BATCH: usize = 250;
/// Records, keys per transaction.
const ROW_BATCH: usize = 1000;
/// Blob bytes per transaction (at least one blob).
const BLOB_BATCH_BYTES: usize = 16 << 20;

/// The phases, in order.
const PHASES: [&str; 7] = [
    "records",
    "blobs",
    "activities",
    "indexes",
    "state",
    "verify",
    "done",
];

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CopyError {
    /// The target is not one this copy may write (not empty, another source, finished).
    #[error("{0}")]
    Refused(String),
    /// A store failed (reading sled, writing PostgreSQL).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stopped on purpose (tests: `FOLDERTRACK_FAIL_COPY_AFTER`).
    #[error("{0}")]
    Interrupted(String),
}

impl From<super::pg::PgError> for CopyError {
    fn from(e: super::pg::PgError) -> CopyError {
        CopyError::Store(e.into())
    }
}

type Result<T> = std::result::Result<T, CopyError>;

/// Count and checksum of one kind on one side.
#[derive(Clone)]
struct Tally {
    count: u64,
    ordered: Option<Sha256>,
    sum: u128,
}

impl Tally {
    fn new(ordered: bool) -> Tally {
        Tally {
            count: 0,
            ordered: ordered.then(Sha256::new),
            sum: 0,
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        let h = Sha256::digest(bytes);
        self.count += 1;
        match &mut self.ordered {
            Some(o) => o.update(h),
            None => {
                let mut b = [0u8; 16];
                b.copy_from_slice(&h[..16]);
                self.sum = self.sum.wrapping_add(u128::from_be_bytes(b));
            }
        }
    }

    fn add_json<T: serde::Serialize>(&mut self, v: &T) {
        self.add(&serde_json::to_vec(v).unwrap_or_default());
    }

    fn checksum(&self) -> String {
        match &self.ordered {
            Some(o) => hex::encode(o.clone().finalize()),
            None => format!("{:032x}", self.sum),
        }
    }
}

/// One kind's result: copied (the target's count) and whether both sides agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub kind: &'static str,
    pub source: u64,
    pub copied: u64,
    pub source_sum: String,
    pub target_sum: String,
}

impl Line {
    pub(crate) fn verified(&self) -> bool {
        self.source == self.copied && self.source_sum == self.target_sum
    }
}

/// What a copy did.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// `Some(phase)` when this run resumed an interrupted copy at that phase.
    pub resumed: Option<String>,
    /// Activities written by this run.
    pub activities_this_run: u64,
    pub lines: Vec<Line>,
}

impl Report {
    pub(crate) fn verified(&self) -> bool {
        self.lines.iter().all(Line::verified)
    }
}

fn phase_index(p: &str) -> usize {
    PHASES.iter().position(|x| *x == p).unwrap_or(0)
}

/// Copies the sled store `sled` (from data dir `source`, as the progress row names it) into
/// `pg`, resuming an interrupted copy of the same source, then verifies. `note` gets progress
/// lines.
pub(crate) fn copy(
    sled: &SledStore,
    pg: &PgStore,
    source: &str,
    note: &mut dyn FnMut(String),
) -> Result<Report> {
    let (phase, resumed) = begin(pg, source, note)?;
    let from = phase_index(&phase);
    let mut activities_this_run = 0;
    if from <= phase_index("records") {
        copy_records(sled, pg, note)?;
        pg.copy_set_phase("blobs")?;
    }
    if from <= phase_index("blobs") {
        copy_blobs(sled, pg, note)?;
        pg.copy_set_phase("activities")?;
    }
    if from <= phase_index("activities") {
        activities_this_run = copy_activities(sled, pg, note)?;
        pg.copy_set_phase("indexes")?;
    }
    if from <= phase_index("indexes") {
        batched(sled.subject_keys(), |b| pg.copy_subject_keys(b))?;
        batched(sled.awaiting_parents(), |b| pg.copy_awaiting(b))?;
        pg.copy_set_phase("state")?;
    }
    if from <= phase_index("state") {
        note(
            "copying checkpoints, quarantine, alerts, the audit trail, outbox and the rest".into(),
        );
        pg.copy_state(
            State {
                checkpoints: &mut sled.folder_states()?.into_iter().map(Ok),
                mailboxes: &mut sled.mailbox_states(),
                quarantine: &mut sled.quarantine_with_raw(),
                alerts: &mut sled.all_alerts(),
                audit: &mut sled.all_audit(),
                manual_links: &mut sled.manual_link_ids(),
                untracked: &mut sled.untracked_ids()?.into_iter().map(Ok),
                fields: &mut sled.all_fields(),
                bindings: &mut sled.rule_bindings(),
                outbox: &mut sled.outbox_iter(),
                token_users: &sled.token_users()?,
                counters: sled.counters()?,
            },
            "verify",
        )?;
    }
    note("verifying".into());
    let lines = verify(sled, pg)?;
    let report = Report {
        resumed,
        activities_this_run,
        lines,
    };
    if report.verified() {
        pg.copy_set_phase("done")?;
    }
    Ok(report)
}

/// Checks the target and the progress row: the phase to run next, and the phase resumed at.
fn begin(
    pg: &PgStore,
    source: &str,
    note: &mut dyn FnMut(String),
) -> Result<(String, Option<String>)> {
    match pg.copy_progress()? {
        None => {
            let held = pg.copy_target_contents()?;
            if !held.is_empty() {
                let what: Vec<String> = held.iter().map(|(t, n)| format!("{n} {t}")).collect();
                return Err(CopyError::Refused(format!(
                    "the PostgreSQL database ({}) is not empty: it holds {}. store copy only \
                     fills an empty database; create a new one (or drop this one's tables) and \
                     run it again",
                    pg.target(),
                    what.join(", ")
                )));
            }
            pg.copy_start(source)?;
            Ok(("records".into(), None))
        }
        Some(p) if p.source != source => Err(CopyError::Refused(format!(
            "the PostgreSQL database ({}) holds a copy of another sled store, {} (started {}, \
             phase {}); it is not mixed with {source}. Use a new database",
            pg.target(),
            p.source,
            p.started_at,
            p.phase
        ))),
        Some(p) if p.phase == "done" => Err(CopyError::Refused(format!(
            "the PostgreSQL database ({}) already holds a finished, verified copy of {source} \
             (finished {}); nothing was copied again",
            pg.target(),
            p.finished_at.as_deref().unwrap_or("?")
        ))),
        Some(p) => {
            note(format!(
                "resuming the copy of {source} started {}: phase {}, activities after id {}",
                p.started_at, p.phase, p.last_activity
            ));
            Ok((p.phase.clone(), Some(p.phase)))
        }
    }
}

fn copy_records(sled: &SledStore, pg: &PgStore, note: &mut dyn FnMut(String)) -> Result<()> {
    let mut batch: Vec<Record> = Vec::with_capacity(ROW_BATCH);
    let mut n = 0;
    for r in sled.records_iter(None) {
        batch.push(r?);
        if batch.len() == ROW_BATCH {
            pg.copy_records(&batch)?;
            n += batch.len();
            batch.clear();
        }
    }
    pg.copy_records(&batch)?;
    note(format!("copied {} records", n + batch.len()));
    Ok(())
}

fn copy_blobs(sled: &SledStore, pg: &PgStore, note: &mut dyn FnMut(String)) -> Result<()> {
    let after = pg.copy_progress()?.and_then(|p| p.last_blob);
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut bytes, mut n) = (0, 0);
    for k in sled.blob_keys() {
        let k = k?;
        if after.as_ref().is_some_and(|a| k <= *a) {
            continue;
        }
        let Some(b) = sled.blob(&k)? else { continue };
        bytes += b.len();
        batch.push((k, b));
        if bytes >= BLOB_BATCH_BYTES || batch.len() >= ROW_BATCH {
            pg.copy_blobs(&batch)?;
            n += batch.len();
            batch.clear();
            bytes = 0;
        }
    }
    pg.copy_blobs(&batch)?;
    note(format!("copied {} blobs", n + batch.len()));
    Ok(())
}

/// Where a test interrupts the copy: after this many activities of one run.
fn stop_after() -> Option<u64> {
    #[cfg(feature = "failpoints")]
    if let Some(n) = std::env::var("FOLDERTRACK_FAIL_COPY_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(n);
    }
    None
}

/// Copies the activities after the last one copied; returns how many this run wrote.
fn copy_activities(sled: &SledStore, pg: &PgStore, note: &mut dyn FnMut(String)) -> Result<u64> {
    let after = pg.copy_progress()?.map_or(0, |p| p.last_activity);
    let total = sled.activity_count() as u64;
    let stop = stop_after();
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(ACTIVITY_BATCH);
    let mut n = 0u64;
    let mut last_note = std::time::Instant::now();
    for a in sled.activities_from(after) {
        let activity = a?;
        let (token_key, thread_key) = sled.activity_keys(&activity)?;
        batch.push(NewActivity {
            activity,
            token_key,
            thread_key,
            subject_key: None, // copied after the activities, from sled's subject index
        });
        let cut = stop.is_some_and(|s| n + batch.len() as u64 >= s);
        if batch.len() == ACTIVITY_BATCH || cut {
            pg.copy_activities(&batch)?;
            n += batch.len() as u64;
            batch.clear();
            if last_note.elapsed().as_secs() >= 5 {
                note(format!("copied {n} of {total} activities"));
                last_note = std::time::Instant::now();
            }
        }
        if cut {
            return Err(CopyError::Interrupted(format!(
                "interrupted after {n} activities (FOLDERTRACK_FAIL_COPY_AFTER)"
            )));
        }
    }
    pg.copy_activities(&batch)?;
    n += batch.len() as u64;
    note(format!(
        "copied {n} activities in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(n)
}

/// Writes `items` through `write` a batch at a time.
fn batched<T>(
    items: impl Iterator<Item = std::result::Result<T, StoreError>>,
    write: impl Fn(&[T]) -> std::result::Result<(), super::pg::PgError>,
) -> Result<()> {
    let mut batch = Vec::with_capacity(ROW_BATCH);
    for i in items {
        batch.push(i?);
        if batch.len() == ROW_BATCH {
            write(&batch)?;
            batch.clear();
        }
    }
    write(&batch)?;
    Ok(())
}

/// Both sides' tallies of one kind.
struct Pair {
    sled: Tally,
    pg: Tally,
}

impl Pair {
    fn new(ordered: bool) -> Pair {
        Pair {
            sled: Tally::new(ordered),
            pg: Tally::new(ordered),
        }
    }
}

/// Counts and checksums of every kind on both sides.
fn verify(sled: &SledStore, pg: &PgStore) -> Result<Vec<Line>> {
    let mut kinds: BTreeMap<&'static str, Pair> = BTreeMap::new();
    verify_activities(sled, pg, &mut kinds)?;
    verify_rows(sled, pg, &mut kinds)?;
    verify_state(sled, pg, &mut kinds)?;
    const ORDER: [&str; 21] = [
        "records",
        "activities",
        "sources",
        "attachments",
        "blobs",
        "token lookups",
        "thread lookups",
        "subject keys",
        "awaiting parent",
        "checkpoints",
        "mailbox states",
        "quarantine",
        "alerts",
        "manual links",
        "rule bindings",
        "outbox",
        "token users",
        "audit trail",
        "untracked",
        "synced fields",
        "next ids",
    ];
    Ok(ORDER
        .iter()
        .filter_map(|k| kinds.get(k).map(|p| (k, p)))
        .map(|(k, p)| Line {
            kind: k,
            source: p.sled.count,
            copied: p.pg.count,
            source_sum: p.sled.checksum(),
            target_sum: p.pg.checksum(),
        })
        .collect())
}

/// Activities, their sources and attachments, one side: each activity's canonical JSON in
/// id order.
fn tally_activities(
    acts: impl Iterator<Item = std::result::Result<crate::model::Activity, StoreError>>,
) -> std::result::Result<[Tally; 3], StoreError> {
    let mut t = [Tally::new(true), Tally::new(false), Tally::new(false)];
    for a in acts {
        let a = a?;
        t[0].add_json(&a);
        for s in std::iter::once(&a.source).chain(&a.other_sources) {
            t[1].add_json(&(a.id, s));
        }
        for x in &a.attachments {
            t[2].add_json(&(a.id, x));
        }
    }
    Ok(t)
}

/// Both sides at once (each waits mostly on its own store: sled's reads, PostgreSQL's round
/// trips).
fn verify_activities(
    sled: &SledStore,
    pg: &PgStore,
    kinds: &mut BTreeMap<&'static str, Pair>,
) -> Result<()> {
    let (s, p) = std::thread::scope(|scope| {
        let s = scope.spawn(|| tally_activities(sled.activities_from(0)));
        let p = tally_activities(pg.activities_iter());
        (s.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), p)
    });
    let ([a, so, at], [pa, pso, pat]) = (s?, p?);
    let pair = |sled, pg| Pair { sled, pg };
    kinds.insert("activities", pair(a, pa));
    kinds.insert("sources", pair(so, pso));
    kinds.insert("attachments", pair(at, pat));
    Ok(())
}

fn pairs<K: serde::Serialize>(
    s: impl Iterator<Item = std::result::Result<(K, u64), StoreError>>,
    p: Vec<(K, u64)>,
) -> Result<Pair> {
    let mut pair = Pair::new(false);
    for x in s {
        pair.sled.add_json(&x?);
    }
    for x in p {
        pair.pg.add_json(&x);
    }
    Ok(pair)
}

fn verify_rows(
    sled: &SledStore,
    pg: &PgStore,
    kinds: &mut BTreeMap<&'static str, Pair>,
) -> Result<()> {
    let mut records = Pair::new(false);
    for r in sled.records_iter(None) {
        records.sled.add_json(&r?);
    }
    for r in pg.records_iter(None) {
        records.pg.add_json(&r?);
    }
    kinds.insert("records", records);
    let mut blobs = Pair::new(false);
    for k in sled.blob_keys() {
        let k = k?;
        let b = sled.blob(&k)?.unwrap_or_default();
        blobs.sled.add_json(&(k, hex::encode(Sha256::digest(&b))));
    }
    for x in pg.copy_blobs_iter() {
        let (k, b) = x?;
        blobs.pg.add_json(&(k, hex::encode(Sha256::digest(&b))));
    }
    kinds.insert("blobs", blobs);
    let by = |sql: &str| pg.copy_pairs(sql);
    kinds.insert(
        "token lookups",
        pairs(
            sled.token_keys(),
            by("SELECT token_key, id FROM activities WHERE token_key IS NOT NULL")?,
        )?,
    );
    kinds.insert(
        "thread lookups",
        pairs(
            sled.thread_keys()
                .map(|r| r.map(|(k, id)| (hex::encode(k), id))),
            pg.copy_thread_keys()?
                .into_iter()
                .map(|(k, id)| (hex::encode(k), id))
                .collect(),
        )?,
    );
    kinds.insert(
        "subject keys",
        pairs(
            sled.subject_keys(),
            by("SELECT subject_key, id FROM activities WHERE subject_key IS NOT NULL")?,
        )?,
    );
    kinds.insert(
        "awaiting parent",
        pairs(
            sled.awaiting_parents(),
            by("SELECT message_id, activity_id FROM awaiting_parent")?,
        )?,
    );
    Ok(())
}

/// A kind given whole on both sides.
fn whole<T: serde::Serialize>(sled: &[T], pg: &[T]) -> Pair {
    let mut pair = Pair::new(false);
    sled.iter().for_each(|x| pair.sled.add_json(x));
    pg.iter().for_each(|x| pair.pg.add_json(x));
    pair
}

fn collect<T>(i: impl Iterator<Item = std::result::Result<T, StoreError>>) -> Result<Vec<T>> {
    Ok(i.collect::<std::result::Result<Vec<T>, StoreError>>()?)
}

fn verify_state(
    sled: &SledStore,
    pg: &PgStore,
    kinds: &mut BTreeMap<&'static str, Pair>,
) -> Result<()> {
    kinds.insert(
        "checkpoints",
        whole(&sled.folder_states()?, &pg.folder_states()?),
    );
    kinds.insert(
        "mailbox states",
        whole(&collect(sled.mailbox_states())?, &pg.copy_mailbox_states()?),
    );
    let mut q = Pair::new(false);
    for x in sled.quarantine_with_raw() {
        let (e, raw) = x?;
        q.sled.add_json(&(e, hex::encode(Sha256::digest(&raw))));
    }
    for e in pg.quarantine()? {
        let raw = pg.quarantine_raw(e.id)?.unwrap_or_default();
        q.pg.add_json(&(e, hex::encode(Sha256::digest(&raw))));
    }
    kinds.insert("quarantine", q);
    kinds.insert(
        "alerts",
        whole(&collect(sled.all_alerts())?, &pg.copy_alerts()?),
    );
    kinds.insert(
        "audit trail",
        whole(&collect(sled.all_audit())?, &pg.copy_audit()?),
    );
    kinds.insert(
        "untracked",
        whole(&sled.untracked_ids()?, &pg.untracked_ids()?),
    );
    kinds.insert(
        "synced fields",
        whole(&collect(sled.all_fields())?, &pg.copy_fields()?),
    );
    kinds.insert(
        "manual links",
        whole(&collect(sled.manual_link_ids())?, &pg.copy_manual_links()?),
    );
    kinds.insert(
        "rule bindings",
        whole(&collect(sled.rule_bindings())?, &pg.copy_rule_bindings()?),
    );
    kinds.insert(
        "outbox",
        whole(&collect(sled.outbox_iter())?, &pg.outbox_entries()?),
    );
    let users = |u: Vec<TokenUser>| -> Vec<(String, u64, u64)> {
        u.into_iter()
            .map(|u| (u.user, u.number, u.counter))
            .collect()
    };
    kinds.insert(
        "token users",
        whole(&users(sled.token_users()?), &users(pg.copy_token_users()?)),
    );
    kinds.insert("next ids", next_ids(sled, pg)?);
    Ok(())
}

/// The sequences against sled's counters: each must hand out a value past every copied one.
/// Both sides tally the sled counter; the PostgreSQL side only when its sequence is past it.
fn next_ids(sled: &SledStore, pg: &PgStore) -> Result<Pair> {
    let c = sled.counters()?;
    let last_id = sled.last_activity_id()?;
    let max_user = sled
        .token_users()?
        .iter()
        .map(|u| u.number)
        .max()
        .unwrap_or(0);
    let wanted = [
        ("activity_id_seq", c.activity.max(last_id)),
        ("quarantine_id_seq", c.quarantine),
        ("outbox_uid_seq", c.outbox_uid),
        ("token_user_seq", c.token_users.max(max_user)),
    ];
    let mut pair = Pair::new(false);
    for (seq, want) in wanted {
        pair.sled.add_json(&(seq, want));
        let have = pg.copy_sequence_last(seq)?;
        if have >= want {
            pair.pg.add_json(&(seq, want));
        } else {
            pair.pg.add_json(&(seq, have));
        }
    }
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alert, AlertLevel, AttachmentMeta, Direction, Party};
    use crate::store::{BatchItem, OutboxEntry, RuleBinding, SendState};
    use crate::track::conformance::{activity, checkpoint, draft, record, source, thread_index};
    use crate::track::tx::{Engine, Lookups};

    fn party(addr: &str) -> Party {
        Party {
            address: Some(addr.into()),
            name: Some(addr.to_uppercase()),
            record: None,
            records: vec!["contact:x".into()],
        }
    }

    /// A sled store with `n` activities and some of everything else.
    fn fill(s: &SledStore, n: u32) {
        let recs: Vec<Record> = (0..300)
            .map(|i| record("account", &format!("a{i}"), None))
            .collect();
        s.put_records(&recs).unwrap();
        let mut items = Vec::new();
        for uid in 1..=n {
            let mut a = activity("alice", "INBOX/Acme", uid, &format!("<m{uid}@t>"));
            a.from = Some(party("bob@acme.com"));
            a.to = vec![party("alice@example.com"), party("carol@globex.com")];
            a.references = vec!["<root@t>".into(), format!("<p{uid}@t>")];
            a.regarding = Some(format!("account:a{}", uid % 300));
            if uid % 7 == 0 {
                a.token = Some(format!("CRM:{uid:07}"));
            }
            if uid % 11 == 0 {
                // Several activities share a Thread-Index: the last one written holds it.
                a.thread_index = Some(thread_index(uid as usize % 4));
            }
            if uid % 5 == 0 {
                a.in_reply_to = Some(format!("<nowhere{uid}@t>"));
            }
            if uid % 3 == 0 {
                let bytes = format!("attachment {}", uid % 17).into_bytes();
                let sha = hex::encode(Sha256::digest(&bytes));
                s.put_blob(&sha, &bytes).unwrap();
                a.attachments.push(AttachmentMeta {
                    name: Some("a.txt".into()),
                    mime_type: "text/plain".into(),
                    size: bytes.len() as u64,
                    sha256: sha,
                    skipped: None,
                });
            }
            if uid % 10 == 0 {
                a.body_text = format!("long body {uid} ").repeat(60);
                s.keep_body_out(&mut a);
            }
            let BatchItem::Tracked(mut d) = draft(a) else {
                unreachable!()
            };
            d.subject_key = Some(format!("about m{uid}"));
            items.push(BatchItem::Tracked(d));
            if items.len() == 100 || uid == n {
                s.commit_batch(&items, &checkpoint("alice", "INBOX/Acme", uid), "alice")
                    .unwrap();
                items.clear();
            }
        }
        // A copy of message 1 in another folder: a second source.
        let copy = draft(activity("alice", "INBOX/Other", 1, "<m1@t>"));
        s.commit_batch(&[copy], &checkpoint("alice", "INBOX/Other", 1), "alice")
            .unwrap();
        let q = BatchItem::Quarantined {
            source: source("bob", "INBOX", 9),
            reason: "cannot parse".into(),
            raw: b"raw \xff bytes".to_vec(),
            size: 11,
        };
        s.commit_batch(&[q], &checkpoint("bob", "INBOX", 9), "bob")
            .unwrap();
        s.add_alert(
            "alice",
            Alert {
                level: AlertLevel::Warning,
                message: "server said no".into(),
            },
        )
        .unwrap();
        let mut st = s.mailbox_state("alice").unwrap();
        st.failed("refused");
        st.succeeded();
        s.put_mailbox_state(&st).unwrap();
        let b = RuleBinding {
            folder: "INBOX/Acme".into(),
            uidvalidity: 1,
        };
        s.put_rule_binding("alice", "INBOX/Acme", &b).unwrap();
        assert!(s
            .link_by_hand(
                2,
                &crate::model::RecordRef::new("account", "a7"),
                "cli:test"
            )
            .unwrap());
        assert_eq!(s.untrack(3, "cli:test").unwrap(), Some(true));
        let change = crate::track::fields::FieldChange {
            follow_up: Some(true),
            add_categories: vec!["Deal".into()],
            ..Default::default()
        };
        let sync = crate::config::FieldSync::default();
        assert!(s
            .set_fields(2, &change, &sync, "cli:test")
            .unwrap()
            .is_some());
        s.next_token_numbers("systemuser:alice").unwrap();
        s.next_token_numbers("systemuser:alice").unwrap();
        s.next_token_numbers("systemuser:bob").unwrap();
        let mut out = activity("alice", "x", 0, "<sent@t>");
        out.direction = Direction::Outgoing;
        out.source = s.outbox_source("alice").unwrap();
        let BatchItem::Tracked(d) = draft(out) else {
            unreachable!()
        };
        s.put_blob("ab12", b"raw message").unwrap();
        let entry = OutboxEntry {
            activity: 0,
            mailbox: "alice".into(),
            message_id: "<sent@t>".into(),
            raw_sha256: "ab12".into(),
            raw_size: 11,
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
        s.enqueue_outgoing(&d, &entry).unwrap();
        s.flush().unwrap();
    }

    #[test]
    fn a_sled_store_is_copied_whole_and_verified() {
        let Some(cluster) = testkit::pg::PgCluster::start() else {
            return;
        };
        let n: u32 = std::env::var("FOLDERTRACK_COPY_TEST_ACTIVITIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path(), 8 << 20).unwrap();
        let t = std::time::Instant::now();
        fill(&sled, n);
        eprintln!("filled sled with {n} activities in {:?}", t.elapsed());
        let pg = PgStore::open(cluster.url()).unwrap();
        let t = std::time::Instant::now();
        let report = copy(&sled, &pg, "/src", &mut |l| eprintln!("{l}")).unwrap();
        eprintln!("copied and verified in {:?}", t.elapsed());
        for l in &report.lines {
            assert!(l.verified(), "{l:?}");
            assert!(l.copied > 0 || l.kind == "next ids", "{l:?}");
        }
        assert_eq!(report.activities_this_run, u64::from(n) + 1);
        let acts = &report.lines[1];
        assert_eq!((acts.kind, acts.copied), ("activities", u64::from(n) + 1));
        // New ids, token numbers and outbox UIDs follow the copied ones.
        let last = sled.last_activity_id().unwrap();
        let fresh = draft(activity("alice", "INBOX/Acme", n + 1, "<new@t>"));
        let done = pg
            .commit_batch(&[fresh], &checkpoint("alice", "INBOX/Acme", n + 1), "alice")
            .unwrap();
        assert_eq!(done.outcome.created, 1);
        let new_id = pg.activities(None).unwrap().last().unwrap().id;
        assert_eq!(new_id, last + 1);
        assert_eq!(pg.next_token_numbers("systemuser:alice").unwrap(), (1, 3));
        assert_eq!(pg.next_token_numbers("systemuser:carol").unwrap(), (3, 1));
        assert_eq!(pg.outbox_source("alice").unwrap().uid, 2);
        assert_eq!(pg.activity_by_token("crm:0000007").unwrap(), Some(7));
        let fields = pg.field_state(2).unwrap();
        assert_eq!(fields, sled.field_state(2).unwrap());
        assert!(fields.is_some_and(|f| f.crm.follow_up && f.crm.categories == ["Deal"]));
        assert_eq!(
            Engine::transaction(&pg, |tx| {
                use crate::track::tx::BatchTx;
                tx.next_id(crate::track::tx::Counter::Quarantine)
            })
            .unwrap(),
            2
        );
        // Run again: the copy is done, nothing is written twice.
        let again = copy(&sled, &pg, "/src", &mut |_| {});
        assert!(
            matches!(&again, Err(CopyError::Refused(m)) if m.contains("finished")),
            "{again:?}"
        );
        let other = copy(&sled, &pg, "/elsewhere", &mut |_| {});
        assert!(
            matches!(&other, Err(CopyError::Refused(m)) if m.contains("another sled store")),
            "{other:?}"
        );
    }

    #[test]
    fn a_target_that_is_not_empty_is_refused() {
        let Some(cluster) = testkit::pg::PgCluster::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let sled = SledStore::open(dir.path(), 1 << 20).unwrap();
        let pg = PgStore::open(cluster.url()).unwrap();
        pg.put_records(&[record("account", "acme", None)]).unwrap();
        let r = copy(&sled, &pg, "/src", &mut |_| {});
        let Err(CopyError::Refused(m)) = r else {
            panic!("{r:?}")
        };
        assert!(m.contains("not empty") && m.contains("1 records"), "{m}");
        assert!(pg.copy_progress().unwrap().is_none(), "nothing started");
    }
}
