//! The batch transaction's rules (DESIGN §4–5): what a tracked or quarantined message does to
//! the store, given what is already there. A replayed source changes nothing, a copy of a
//! tracked message adds its source (and may re-link it), a new message is correlated, inherits
//! a regarding, may create its sender's record, and is written with what finds it later.
//! Pure code over [`BatchTx`]: every engine runs the same rules.

use super::correlate::correlate;
use super::tx::{BatchTx, Broken, Counter, Findable};
use crate::model::{
    Activity, Alert, AlertLevel, AuditAction, AuditEntry, Draft, FolderState, QuarantineEntry,
    Source,
};
use serde::Serialize;

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

/// Applies a batch and writes the folder checkpoint, in the caller's transaction. Idempotent:
/// replaying a batch whose sources are recorded changes nothing but the checkpoint.
/// Activities get their `id`, `tracked_at`, correlation and inherited regarding here, where
/// earlier messages of the same batch are visible.
pub(crate) fn apply_batch<T: BatchTx>(
    tx: &T,
    items: &[BatchItem],
    checkpoint: &FolderState,
    at: &str,
    alerts_mailbox: &str,
) -> Result<Committed, T::Error> {
    let mut c = Committed::default();
    let tracked = items
        .iter()
        .filter(|i| matches!(i, BatchItem::Tracked(_)))
        .count();
    tx.reserve_ids(Counter::Activity, tracked)?;
    prefetch(tx, items)?;
    for item in items {
        match item {
            BatchItem::Tracked(d) => {
                if apply_activity(tx, d, at, alerts_mailbox, &mut c.outcome, &mut c.created)? {
                    c.tracked_uids.push(d.activity.source.uid);
                }
            }
            BatchItem::Quarantined {
                source,
                reason,
                raw,
                size,
            } => {
                if tx.is_quarantined(source)? || tx.activity_by_source(source)?.is_some() {
                    c.outcome.replayed += 1;
                    continue;
                }
                let e = QuarantineEntry {
                    id: tx.next_id(Counter::Quarantine)?,
                    source: source.clone(),
                    reason: reason.clone(),
                    size: *size,
                    at: at.to_string(),
                };
                tx.quarantine(&e, raw)?;
                c.outcome.quarantined += 1;
            }
        }
    }
    tx.put_checkpoint(checkpoint)?;
    Ok(c)
}

/// Tells the engine what the batch's messages will look up: their sources, their dedup keys
/// and the Message-IDs correlation asks for.
fn prefetch<T: BatchTx>(tx: &T, items: &[BatchItem]) -> Result<(), T::Error> {
    let mut sources = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    let mut parents = Vec::with_capacity(items.len() * 2);
    for item in items {
        match item {
            BatchItem::Tracked(d) => {
                let a = &d.activity;
                sources.push(&a.source);
                keys.push(a.dedup_key.as_str());
                parents.extend(a.in_reply_to.as_deref());
                parents.extend(a.references.iter().map(String::as_str));
            }
            BatchItem::Quarantined { source, .. } => sources.push(source),
        }
    }
    tx.prefetch(&sources, &keys, &parents)
}

/// Applies one tracked message; `false` when the message is not tracked (other mail that the
/// filter leaves out). A new activity is pushed to `created` without body and attachments.
pub(crate) fn apply_activity<T: BatchTx>(
    tx: &T,
    d: &Draft,
    at: &str,
    alerts_mailbox: &str,
    out: &mut BatchOutcome,
    created: &mut Vec<Activity>,
) -> Result<bool, T::Error> {
    let a = &d.activity;
    if tx.activity_by_source(&a.source)?.is_some() {
        out.replayed += 1;
        return Ok(true);
    }
    if let Some(id) = tx.activity_by_dedup(&a.dedup_key, a.direction)? {
        merge_copy(tx, a, id, at, out)?;
        if let Some(c) = &d.seen {
            super::fields::add_copy(tx, id, c)?;
        }
        out.merged += 1;
        return Ok(true);
    }
    if !d.keep {
        out.skipped += 1;
        return Ok(false);
    }
    let mut a = a.clone();
    a.inherits = d.inherit;
    if let Some(c) = correlate(tx, &a)? {
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
            tx.insert_record_once(r)?;
            from.record = Some(r.reference().to_string());
        }
    }
    a.id = tx.next_id(Counter::Activity)?;
    a.tracked_at = at.to_string();
    for al in &a.alerts {
        tx.raise_alert(alerts_mailbox, al, at)?;
    }
    let find = Findable {
        by_token: first_with_token(tx, &a)?,
        awaiting_parent: a.correlation.is_none(),
        subject_key: d.subject_key.as_deref(),
    };
    tx.insert_activity(&a, find)?;
    audit_created(tx, &a)?;
    if let Some(c) = &d.seen {
        super::fields::add_new(tx, a.id, c, d.high_importance)?;
    }
    out.created += 1;
    a.body_text = String::new();
    a.attachments = Vec::new();
    created.push(a);
    Ok(true)
}

/// Whether `a` is to be the activity its tracking token finds: none has the token yet, or the
/// one that has it was written later (replies correlate to the earliest).
fn first_with_token<T: BatchTx>(tx: &T, a: &Activity) -> Result<bool, T::Error> {
    let Some(t) = &a.token else {
        return Ok(false);
    };
    let Some(e) = tx.activity_by_token(t)? else {
        return Ok(true);
    };
    let earlier = tx.activity_head(e)?;
    Ok(!earlier.is_some_and(|e| e.not_after(a)))
}

/// A copy of tracked activity `id` (same Message-ID and direction): the first copy keeps the
/// regarding (DESIGN §4.7); this one adds its source. A copy from the same mailbox and folder
/// under a new UIDVALIDITY replaces the stale source instead (a folder reset, DESIGN §3.1).
fn merge_copy<T: BatchTx>(
    tx: &T,
    a: &Activity,
    id: u64,
    at: &str,
    out: &mut BatchOutcome,
) -> Result<(), T::Error> {
    let Some(before) = tx.activity(id)? else {
        return Err(Broken(format!("index points to missing activity {id}")).into());
    };
    let mut cur = before.clone();
    if tx.is_untracked(id)? {
        tx.set_untracked(id, false)?;
        let e = audit(&a.source, id, at, AuditAction::TrackedAgain, "source");
        tx.append_audit(&AuditEntry {
            new: Some(place(&a.source)),
            ..e
        })?;
    }
    let same_place = |s: &Source| {
        s.mailbox == a.source.mailbox
            && s.folder == a.source.folder
            && s.uidvalidity != a.source.uidvalidity
    };
    if same_place(&cur.source) {
        cur.source = a.source.clone();
    } else if let Some(s) = cur.other_sources.iter_mut().find(|s| same_place(s)) {
        *s = a.source.clone();
    } else {
        cur.other_sources.push(a.source.clone());
        let e = audit(&a.source, id, at, AuditAction::CopyAdded, "source");
        tx.append_audit(&AuditEntry {
            new: Some(place(&a.source)),
            ..e
        })?;
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
        let e = audit(&a.source, id, at, AuditAction::Relinked, "regarding");
        tx.append_audit(&AuditEntry {
            old: cur.regarding.clone(),
            new: a.regarding.clone(),
            ..e
        })?;
        cur.regarding = a.regarding.clone();
        out.relinked += 1;
    }
    tx.update_activity(&before, &cur)
}

/// Untracks activity `id` by `actor` (`activities untrack`): it stays, marked untracked, and
/// its sources keep its message out of tracking where it is; a copy dragged into a tracked
/// folder later tracks it again ([`merge_copy`]). `None`: no such activity; `Some(false)`:
/// it was untracked already (nothing written).
pub(crate) fn untrack<T: BatchTx>(
    tx: &T,
    id: u64,
    actor: &str,
    at: &str,
) -> Result<Option<bool>, T::Error> {
    if tx.activity(id)?.is_none() {
        return Ok(None);
    }
    if tx.is_untracked(id)? {
        return Ok(Some(false));
    }
    tx.set_untracked(id, true)?;
    tx.append_audit(&AuditEntry {
        activity: id,
        at: at.to_string(),
        actor: actor.to_string(),
        action: AuditAction::Untracked,
        field: None,
        old: None,
        new: None,
    })?;
    Ok(Some(true))
}

/// Deletes activity `id` by `actor` (`activities untrack --delete`: mail tracked by mistake):
/// the activity and everything of it go; its audit trail stays, with this deletion and the
/// reason given. Returns the activity as it was (for its blobs), `None` when there is none.
pub(crate) fn delete<T: BatchTx>(
    tx: &T,
    id: u64,
    subject_key: Option<&str>,
    actor: &str,
    reason: Option<&str>,
    at: &str,
) -> Result<Option<Activity>, T::Error> {
    let Some(a) = tx.activity(id)? else {
        return Ok(None);
    };
    tx.delete_activity(&a, subject_key)?;
    tx.append_audit(&AuditEntry {
        activity: id,
        at: at.to_string(),
        actor: actor.to_string(),
        action: AuditAction::Deleted,
        field: None,
        old: None,
        new: reason.map(str::to_string),
    })?;
    Ok(Some(a))
}

/// The actor of a change a folder's tracking made: `rule:MAILBOX/FOLDER`.
fn rule_actor(s: &Source) -> String {
    format!("rule:{}/{}", s.mailbox, s.folder)
}

/// Where a copy is, for the audit trail: `MAILBOX/FOLDER` and its UID.
fn place(s: &Source) -> String {
    format!("{}/{} UID {}", s.mailbox, s.folder, s.uid)
}

/// An audit entry of `action` on `field` by the folder of `s`, values to be filled in.
fn audit(s: &Source, id: u64, at: &str, action: AuditAction, field: &str) -> AuditEntry {
    AuditEntry {
        activity: id,
        at: at.to_string(),
        actor: rule_actor(s),
        action,
        field: Some(field.to_string()),
        old: None,
        new: None,
    }
}

/// The audit entries of a new activity: created (with its regarding), and correlated.
fn audit_created<T: BatchTx>(tx: &T, a: &Activity) -> Result<(), T::Error> {
    let e = audit(
        &a.source,
        a.id,
        &a.tracked_at,
        AuditAction::Created,
        "regarding",
    );
    tx.append_audit(&AuditEntry {
        new: a.regarding.clone(),
        ..e.clone()
    })?;
    if let Some(c) = &a.correlation {
        tx.append_audit(&AuditEntry {
            action: AuditAction::Correlated,
            field: Some("correlation".into()),
            new: Some(format!("{} of activity {}", c.method, c.activity)),
            ..e
        })?;
    }
    Ok(())
}

/// A message whose folder rule gives no regarding takes the one of the activity it correlates
/// to (DESIGN §4.10), if the mailbox owner may write that record; else it is tracked unlinked,
/// with an alert that says why.
fn inherit_regarding<T: BatchTx>(tx: &T, d: &Draft, a: &mut Activity) -> Result<(), T::Error> {
    let Some(c) = &a.correlation else {
        return Ok(());
    };
    let Some(earlier) = tx.activity_head(c.activity)?.and_then(|e| e.regarding) else {
        return Ok(());
    };
    match tx.record(&earlier)? {
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

/// Points activity `id` at `regarding` (or at nothing), a change by `actor` (`cli:USER`, a
/// folder's rule) that its audit trail records. `false` when there is no such activity.
pub(crate) fn relink<T: BatchTx>(
    tx: &T,
    id: u64,
    regarding: Option<&str>,
    actor: &str,
) -> Result<bool, T::Error> {
    let Some(before) = tx.activity(id)? else {
        return Ok(false);
    };
    if before.regarding.as_deref() != regarding {
        let mut after = before.clone();
        after.regarding = regarding.map(str::to_string);
        tx.update_activity(&before, &after)?;
        tx.append_audit(&AuditEntry {
            activity: id,
            at: crate::time::humantime_now(),
            actor: actor.to_string(),
            action: AuditAction::Relinked,
            field: Some("regarding".into()),
            old: before.regarding,
            new: after.regarding,
        })?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    //! Each rule of DESIGN §4 on the in-memory engine: no IMAP, no sled.
    use super::*;
    use crate::model::{CorrelationMethod, Party, Record, Writer};
    use crate::track::conformance::{activity, commit, draft, record, source, thread_index};
    use crate::track::correlate::recorrelate;
    use crate::track::memory::Memory;
    use crate::track::tx::{Engine, Lookups};

    fn tracked(d: BatchItem) -> Draft {
        match d {
            BatchItem::Tracked(d) => *d,
            BatchItem::Quarantined { .. } => unreachable!(),
        }
    }

    fn one(e: &Memory, item: BatchItem) -> Committed {
        commit(e, &[item]).unwrap()
    }

    fn id_of(e: &Memory, msgid: &str) -> u64 {
        e.activity_by_dedup(msgid, crate::model::Direction::Incoming)
            .unwrap()
            .unwrap()
    }

    fn put_record(e: &Memory, r: Record) {
        e.transaction(|tx| tx.insert_record_once(&r)).unwrap();
    }

    #[test]
    fn a_replayed_source_changes_nothing() {
        let e = Memory::default();
        let a = activity("alice", "Acme", 1, "<m@x>");
        assert_eq!(one(&e, draft(a.clone())).outcome.created, 1);
        let c = one(&e, draft(a));
        assert_eq!((c.outcome.created, c.outcome.replayed), (0, 1));
        assert_eq!(c.tracked_uids, vec![1], "a replay is still written back");
        assert_eq!(e.snapshot().activities.len(), 1);
    }

    #[test]
    fn a_copy_in_another_mailbox_adds_its_source_and_keeps_the_first_regarding() {
        let e = Memory::default();
        let mut a = activity("alice", "Acme", 1, "<m@x>");
        a.regarding = Some("account:acme".into());
        one(&e, draft(a));
        let mut b = activity("bob", "Globex", 7, "<m@x>");
        b.regarding = Some("account:globex".into());
        let c = one(&e, draft(b));
        assert_eq!((c.outcome.merged, c.outcome.relinked), (1, 0));
        let stored = e.activity(id_of(&e, "<m@x>")).unwrap().unwrap();
        assert_eq!(stored.regarding.as_deref(), Some("account:acme"));
        assert_eq!(stored.other_sources, vec![source("bob", "Globex", 7)]);
        assert_eq!(
            e.activity_by_source(&source("bob", "Globex", 7)).unwrap(),
            Some(stored.id)
        );
    }

    #[test]
    fn a_move_within_the_mailbox_into_a_folder_with_a_regarding_relinks() {
        let e = Memory::default();
        let mut a = activity("alice", "Acme", 1, "<m@x>");
        a.regarding = Some("account:acme".into());
        one(&e, draft(a));
        let mut moved = activity("alice", "Globex", 3, "<m@x>");
        moved.regarding = Some("account:globex".into());
        assert_eq!(one(&e, draft(moved)).outcome.relinked, 1);
        let stored = e.activity(id_of(&e, "<m@x>")).unwrap().unwrap();
        assert_eq!(stored.regarding.as_deref(), Some("account:globex"));
        // A folder without a regarding keeps the link.
        one(&e, draft(activity("alice", "Archive", 4, "<m@x>")));
        let stored = e.activity(stored.id).unwrap().unwrap();
        assert_eq!(stored.regarding.as_deref(), Some("account:globex"));
        // The audit trail, oldest first here: created by Acme's rule, a copy in Globex that
        // moved it there, a copy in Archive that kept it.
        let trail: Vec<(String, AuditAction, Option<String>, Option<String>)> = e
            .snapshot()
            .audit
            .into_iter()
            .map(|x| (x.actor, x.action, x.old, x.new))
            .collect();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            trail,
            vec![
                (
                    "rule:alice/Acme".into(),
                    AuditAction::Created,
                    None,
                    s("account:acme")
                ),
                (
                    "rule:alice/Globex".into(),
                    AuditAction::CopyAdded,
                    None,
                    s("alice/Globex UID 3")
                ),
                (
                    "rule:alice/Globex".into(),
                    AuditAction::Relinked,
                    s("account:acme"),
                    s("account:globex")
                ),
                (
                    "rule:alice/Archive".into(),
                    AuditAction::CopyAdded,
                    None,
                    s("alice/Archive UID 4")
                ),
            ]
        );
    }

    #[test]
    fn a_new_uidvalidity_replaces_the_stale_source() {
        let e = Memory::default();
        one(&e, draft(activity("alice", "Acme", 1, "<m@x>")));
        let mut reset = activity("alice", "Acme", 1, "<m@x>");
        reset.source.uidvalidity = 2;
        assert_eq!(one(&e, draft(reset.clone())).outcome.merged, 1);
        let stored = e.activity(id_of(&e, "<m@x>")).unwrap().unwrap();
        assert_eq!(stored.source, reset.source);
        assert!(stored.other_sources.is_empty());
        assert_eq!(
            e.activity_by_source(&source("alice", "Acme", 1)).unwrap(),
            None,
            "the stale source no longer finds it"
        );
    }

    #[test]
    fn other_mail_is_skipped_unless_it_correlates_when_asked() {
        let e = Memory::default();
        let mut d = tracked(draft(activity("alice", "INBOX", 1, "<spam@x>")));
        d.keep = false;
        let c = one(&e, BatchItem::Tracked(Box::new(d)));
        assert_eq!((c.outcome.skipped, c.tracked_uids.len()), (1, 0));

        let mut d = tracked(draft(activity("alice", "INBOX", 2, "<lonely@x>")));
        d.only_if_correlated = true;
        assert_eq!(one(&e, BatchItem::Tracked(Box::new(d))).outcome.skipped, 1);

        one(&e, draft(activity("alice", "Acme", 1, "<orig@x>")));
        let mut reply = activity("alice", "INBOX", 3, "<re@x>");
        reply.in_reply_to = Some("<orig@x>".into());
        let mut d = tracked(draft(reply));
        d.only_if_correlated = true;
        assert_eq!(one(&e, BatchItem::Tracked(Box::new(d))).outcome.created, 1);
        assert!(e.snapshot().activities.len() == 2);
    }

    #[test]
    fn correlation_follows_dynamics_order() {
        let e = Memory::default();
        for m in ["<a@x>", "<b@x>", "<c@x>"] {
            one(&e, draft(activity("alice", "F", id_of_len(&e), m)));
        }
        let mut x = activity("alice", "F", 10, "<x@x>");
        x.references = vec!["<a@x>".into(), "<b@x>".into()];
        x.in_reply_to = Some("<c@x>".into());
        let c = one(&e, draft(x)).created[0].correlation.clone().unwrap();
        assert_eq!(
            (c.method, c.activity),
            (CorrelationMethod::InReplyTo, id_of(&e, "<c@x>"))
        );

        let mut y = activity("alice", "F", 11, "<y@x>");
        y.references = vec!["<a@x>".into(), "<b@x>".into(), "<unknown@x>".into()];
        let c = one(&e, draft(y)).created[0].correlation.clone().unwrap();
        assert_eq!(
            (c.method, c.activity),
            (CorrelationMethod::References, id_of(&e, "<b@x>")),
            "the newest known reference"
        );
    }

    fn id_of_len(e: &Memory) -> u32 {
        e.snapshot().activities.len() as u32 + 1
    }

    #[test]
    fn a_token_correlates_to_its_earliest_message_only() {
        let e = Memory::default();
        let mut first = activity("alice", "F", 1, "<t1@x>");
        first.token = Some("CRM:0001".into());
        first.date = Some("2024-09-02T09:00:00Z".into());
        let first_id = one(&e, draft(first)).created[0].id;
        let mut second = activity("alice", "F", 2, "<t2@x>");
        second.token = Some("crm:0001".into());
        second.date = Some("2024-09-02T11:00:00Z".into());
        let c = one(&e, draft(second)).created[0]
            .correlation
            .clone()
            .unwrap();
        assert_eq!((c.method, c.activity), (CorrelationMethod::Token, first_id));
        // An older message with the token tracked later becomes the one the token names.
        let mut older = activity("alice", "F", 3, "<t0@x>");
        older.token = Some("CRM:0001".into());
        older.date = Some("2024-09-02T08:00:00Z".into());
        let older_id = one(&e, draft(older)).created[0].id;
        assert_eq!(e.activity_by_token("CRM:0001").unwrap(), Some(older_id));
    }

    #[test]
    fn a_thread_index_correlates_to_the_message_it_extends() {
        let e = Memory::default();
        let mut root = activity("alice", "F", 1, "<r@x>");
        root.thread_index = Some(thread_index(0));
        let root_id = one(&e, draft(root)).created[0].id;
        let mut reply = activity("alice", "F", 2, "<r2@x>");
        reply.thread_index = Some(thread_index(2));
        let c = one(&e, draft(reply)).created[0]
            .correlation
            .clone()
            .unwrap();
        assert_eq!(
            (c.method, c.activity),
            (CorrelationMethod::ThreadIndex, root_id)
        );
    }

    #[test]
    fn a_correlated_message_inherits_a_regarding_its_owner_may_write() {
        let e = Memory::default();
        put_record(&e, record("account", "acme", None));
        put_record(&e, record("account", "secret", Some("systemuser:bob")));
        for (uid, (m, r)) in [("<o1@x>", "account:acme"), ("<o2@x>", "account:secret")]
            .into_iter()
            .enumerate()
        {
            let mut a = activity("alice", "F", uid as u32 + 1, m);
            a.regarding = Some(r.into());
            one(&e, draft(a));
        }
        for (uid, parent, want) in [(5, "<o1@x>", Some("account:acme")), (6, "<o2@x>", None)] {
            let mut reply = activity("alice", "INBOX", uid, &format!("<re{uid}@x>"));
            reply.in_reply_to = Some(parent.into());
            let mut d = tracked(draft(reply));
            d.inherit = true;
            let c = one(&e, BatchItem::Tracked(Box::new(d)));
            let a = &c.created[0];
            assert_eq!(a.regarding.as_deref(), want);
            assert!(a.inherits);
            assert_eq!(a.alerts.is_empty(), want.is_some(), "{:?}", a.alerts);
        }
        let alerts = e.snapshot().alerts;
        assert_eq!(alerts.len(), 1, "the refused inheritance raised one alert");
    }

    #[test]
    fn an_unresolved_sender_record_is_created_once() {
        let e = Memory::default();
        let sender = record("contact", "carol@new.example", None);
        for uid in 1..=2 {
            let mut a = activity("alice", "F", uid, &format!("<s{uid}@x>"));
            a.from = Some(Party {
                address: Some("carol@new.example".into()),
                name: None,
                record: None,
                records: Vec::new(),
            });
            let mut d = tracked(draft(a));
            d.create_sender = Some(sender.clone());
            let c = one(&e, BatchItem::Tracked(Box::new(d)));
            let from = c.created[0].from.clone().unwrap();
            assert_eq!(from.record.as_deref(), Some("contact:carol@new.example"));
        }
        assert_eq!(e.snapshot().records.len(), 1);
    }

    #[test]
    fn a_quarantined_message_is_kept_once() {
        let e = Memory::default();
        let q = BatchItem::Quarantined {
            source: source("alice", "F", 4),
            reason: "no header".into(),
            raw: b"junk".to_vec(),
            size: 4,
        };
        assert_eq!(one(&e, q.clone()).outcome.quarantined, 1);
        assert_eq!(one(&e, q).outcome.replayed, 1);
        let s = e.snapshot();
        assert_eq!(s.quarantine.len(), 1);
        assert_eq!(s.quarantine[&1].1, b"junk");
        assert_eq!(s.checkpoints[&("alice".into(), "F".into())].last_uid, 4);
    }

    #[test]
    fn late_correlation_links_a_reply_tracked_before_its_original() {
        let e = Memory::default();
        let mut reply = activity("alice", "INBOX", 1, "<late-re@x>");
        reply.in_reply_to = Some("<late@x>".into());
        reply.date = Some("2024-09-03T10:00:00Z".into());
        let mut d = tracked(draft(reply));
        d.inherit = true;
        let reply_id = one(&e, BatchItem::Tracked(Box::new(d))).created[0].id;
        assert_eq!(e.activity(reply_id).unwrap().unwrap().correlation, None);

        let mut orig = activity("alice", "Acme", 2, "<late@x>");
        orig.regarding = Some("account:acme".into());
        let created = one(&e, draft(orig)).created;
        let writer = Writer {
            user: "systemuser:alice".into(),
            teams: Vec::new(),
        };
        assert_eq!(recorrelate(&e, &created, &writer, None).unwrap(), 1);
        let r = e.activity(reply_id).unwrap().unwrap();
        let c = r.correlation.unwrap();
        assert_eq!(
            (c.method, c.activity),
            (CorrelationMethod::InReplyTo, created[0].id)
        );
        assert_eq!(
            r.regarding.as_deref(),
            Some("account:acme"),
            "inherited late"
        );
        // Run again: nothing left to do.
        assert_eq!(recorrelate(&e, &created, &writer, None).unwrap(), 0);
    }

    #[test]
    fn relink_sets_and_clears_a_regarding() {
        let e = Memory::default();
        let id = one(&e, draft(activity("alice", "F", 1, "<l@x>"))).created[0].id;
        assert!(e
            .transaction(|tx| relink(tx, id, Some("account:acme"), "cli:test"))
            .unwrap());
        assert_eq!(
            e.activity(id).unwrap().unwrap().regarding.as_deref(),
            Some("account:acme")
        );
        assert!(e
            .transaction(|tx| relink(tx, id, None, "cli:test"))
            .unwrap());
        assert_eq!(e.activity(id).unwrap().unwrap().regarding, None);
        assert!(!e
            .transaction(|tx| relink(tx, 999, None, "cli:test"))
            .unwrap());
    }
}
