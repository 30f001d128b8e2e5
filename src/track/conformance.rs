//! The conformance suite every engine passes (DESIGN §5.1), in the shape of garage's
//! `db/test.rs`: one `suite(engine)` that each engine's test calls. It holds an engine to the
//! contract of [`super::tx`]: what a transaction writes is seen by the next one, an aborted
//! transaction leaves nothing, the batch commits with its checkpoint, scans find what they
//! should, concurrent writers neither lose nor double anything, and two writers racing on one
//! message make one activity. Also the fixtures the rules' unit tests build drafts with.

use super::batch::{apply_batch, BatchItem, Committed};
use super::tx::{BatchTx, Broken, Counter, Engine, Findable, Lookups};
use crate::model::{Activity, Direction, Draft, FolderState, Record, Source, Writer};

/// An incoming activity from `mailbox`/`folder` UID `uid` with Message-ID `msgid`.
pub(crate) fn activity(mailbox: &str, folder: &str, uid: u32, msgid: &str) -> Activity {
    Activity {
        id: 0,
        subject: Some(format!("about {msgid}")),
        message_id: Some(msgid.to_string()),
        dedup_key: msgid.to_string(),
        direction: Direction::Incoming,
        regarding: None,
        from: None,
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        date: Some("2024-09-02T10:00:00Z".into()),
        in_reply_to: None,
        references: Vec::new(),
        thread_index: None,
        body_text: format!("body of {msgid}"),
        body_blob: None,
        attachments: Vec::new(),
        source: source(mailbox, folder, uid),
        other_sources: Vec::new(),
        size: 100,
        tracked_at: String::new(),
        alerts: Vec::new(),
        correlation: None,
        token: None,
        inherits: false,
    }
}

pub(crate) fn source(mailbox: &str, folder: &str, uid: u32) -> Source {
    Source {
        mailbox: mailbox.into(),
        folder: folder.into(),
        uidvalidity: 1,
        uid,
    }
}

/// A draft to track `a`, written by `systemuser:alice`, kept, nothing to inherit.
pub(crate) fn draft(a: Activity) -> BatchItem {
    BatchItem::Tracked(Box::new(Draft {
        activity: a,
        inherit: false,
        writer: Writer {
            user: "systemuser:alice".into(),
            teams: Vec::new(),
        },
        create_sender: None,
        only_if_correlated: false,
        keep: true,
        subject_key: None,
        seen: None,
        high_importance: false,
    }))
}

pub(crate) fn record(rtype: &str, key: &str, owner: Option<&str>) -> Record {
    Record {
        rtype: rtype.into(),
        key: key.into(),
        name: format!("{rtype} {key}"),
        emails: Vec::new(),
        owner: owner.map(str::to_string),
        shared: false,
        teams: Vec::new(),
    }
}

pub(crate) fn checkpoint(mailbox: &str, folder: &str, last_uid: u32) -> FolderState {
    FolderState {
        mailbox: mailbox.into(),
        folder: folder.into(),
        uidvalidity: 1,
        last_uid,
        ..Default::default()
    }
}

/// Commits `items` as one batch of `mailbox`/`folder`, its checkpoint at the highest UID.
pub(crate) fn commit<E: Engine>(e: &E, items: &[BatchItem]) -> Result<Committed, E::Error> {
    let src = |i: &BatchItem| match i {
        BatchItem::Tracked(d) => d.activity.source.clone(),
        BatchItem::Quarantined { source, .. } => source.clone(),
    };
    let first = items
        .first()
        .map(src)
        .unwrap_or_else(|| source("m", "f", 0));
    let last = items.iter().map(|i| src(i).uid).max().unwrap_or(0);
    let cp = checkpoint(&first.mailbox, &first.folder, last);
    e.transaction(|tx| apply_batch(tx, items, &cp, "2026-12-02T00:00:00Z", &first.mailbox))
}

/// The whole suite, on a fresh, empty engine.
pub(crate) fn suite<E>(e: &E)
where
    E: Engine + Sync,
    E::Error: std::fmt::Debug,
{
    commit_is_seen(e);
    abort_leaves_nothing(e);
    batch_commits_with_checkpoint(e);
    scans(e);
    a_batch_sees_its_own_messages(e);
    concurrent_writers(e);
    dedup_under_a_race(e);
    a_head_follows_its_activity(e);
}

/// An activity read ahead as a correlation parent answers [`Lookups::activity_head`] with
/// what the transaction last wrote of it: its regarding changed, it deleted.
fn a_head_follows_its_activity<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let c = commit(e, &[draft(activity("s6", "F", 1, "<head@t>"))]).unwrap();
    let id = c.created[0].id;
    let heads = e
        .transaction(|tx| {
            tx.prefetch(&[], &[], &["<head@t>"])?;
            let first = tx.activity_head(id)?;
            let before = tx.activity(id)?.expect("the parent");
            let mut after = before.clone();
            after.regarding = Some("account:later".into());
            tx.update_activity(&before, &after)?;
            let updated = tx.activity_head(id)?;
            tx.delete_activity(&after, None)?;
            Ok((first, updated, tx.activity_head(id)?))
        })
        .unwrap();
    let (first, updated, deleted) = heads;
    assert_eq!(first.map(|h| h.regarding), Some(None));
    assert_eq!(
        updated.and_then(|h| h.regarding).as_deref(),
        Some("account:later")
    );
    assert_eq!(deleted, None);
}

fn commit_is_seen<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let a = activity("s1", "F", 1, "<seen@t>");
    let id = e
        .transaction(|tx| {
            let mut a = a.clone();
            a.id = tx.next_id(Counter::Activity)?;
            tx.insert_activity(&a, Findable::default())?;
            // Seen inside the transaction that wrote it.
            assert_eq!(
                tx.activity_by_dedup("<seen@t>", Direction::Incoming)?,
                Some(a.id)
            );
            Ok(a.id)
        })
        .unwrap();
    assert_eq!(e.activity_by_source(&a.source).unwrap(), Some(id));
    assert_eq!(e.activity(id).unwrap().unwrap().message_id, a.message_id);
    assert_eq!(
        e.activity_by_dedup("<seen@t>", Direction::Outgoing)
            .unwrap(),
        None
    );
}

fn abort_leaves_nothing<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let r: Result<(), E::Error> = e.transaction(|tx| {
        let mut a = activity("s2", "F", 1, "<aborted@t>");
        a.id = tx.next_id(Counter::Activity)?;
        tx.insert_activity(&a, Findable::default())?;
        tx.insert_record_once(&record("account", "aborted", None))?;
        Err(Broken("stop here".into()).into())
    });
    assert!(r.is_err());
    assert_eq!(
        e.activity_by_dedup("<aborted@t>", Direction::Incoming)
            .unwrap(),
        None
    );
    assert_eq!(e.record("account:aborted").unwrap(), None);
}

fn batch_commits_with_checkpoint<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let items = [
        draft(activity("s3", "F", 1, "<b1@t>")),
        BatchItem::Quarantined {
            source: source("s3", "F", 2),
            reason: "unparsable".into(),
            raw: b"garbage".to_vec(),
            size: 7,
        },
        draft(activity("s3", "F", 3, "<b3@t>")),
    ];
    let c = commit(e, &items).unwrap();
    assert_eq!((c.outcome.created, c.outcome.quarantined), (2, 1));
    assert_eq!(c.tracked_uids, vec![1, 3]);
    // A replay of the same batch (a crash before the checkpoint was seen) changes nothing.
    let again = commit(e, &items).unwrap();
    assert_eq!((again.outcome.created, again.outcome.replayed), (0, 3));
    assert!(again.created.is_empty());
}

fn scans<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let mut reply = activity("s4", "F", 1, "<reply@t>");
    reply.in_reply_to = Some("<parent@t>".into());
    reply.references = vec!["<root@t>".into(), "<parent@t>".into()];
    reply.thread_index = Some(thread_index(2));
    let c = commit(e, &[draft(reply)]).unwrap();
    let id = c.created[0].id;
    assert_eq!(e.awaiting_parent("<parent@t>").unwrap(), vec![id]);
    assert_eq!(e.awaiting_parent("<root@t>").unwrap(), vec![id]);
    assert!(e.awaiting_parent("<other@t>").unwrap().is_empty());
    let root = super::correlate::thread_bytes(&thread_index(0)).unwrap();
    assert_eq!(e.extending_thread(&root).unwrap(), vec![id]);
    let own = super::correlate::thread_bytes(&thread_index(2)).unwrap();
    assert!(e.extending_thread(&own).unwrap().is_empty());
}

/// Within one batch, a copy merges into a message written earlier in the same batch, a reply
/// correlates to it, and a copy of an activity committed before merges into that one; after
/// the commit every lookup and scan answers as if each had been written on its own. (An
/// engine may hold a batch's new activities back until commit: this is what it must hide.)
fn a_batch_sees_its_own_messages<E: Engine>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    let before = commit(e, &[draft(activity("s5", "Old", 1, "<old@t>"))]).unwrap();
    let old = before.created[0].id;
    let mut reply = activity("s5", "F", 3, "<r@t>");
    reply.in_reply_to = Some("<new@t>".into());
    let mut orphan = activity("s5", "F", 5, "<o@t>");
    orphan.in_reply_to = Some("<nobody@t>".into());
    let items = [
        draft(activity("s5", "F", 1, "<new@t>")),
        draft(activity("s5", "F", 2, "<new@t>")),
        draft(reply),
        draft(activity("s5", "F", 4, "<old@t>")),
        draft(orphan),
        draft(activity("s5", "F", 1, "<new@t>")),
    ];
    let c = commit(e, &items).unwrap();
    let o = c.outcome;
    assert_eq!((o.created, o.merged, o.replayed), (3, 2, 1));
    let new = e
        .activity_by_dedup("<new@t>", Direction::Incoming)
        .unwrap()
        .unwrap();
    let stored = e.activity(new).unwrap().unwrap();
    assert_eq!(stored.source, source("s5", "F", 1));
    assert_eq!(stored.other_sources, vec![source("s5", "F", 2)]);
    assert_eq!(
        e.activity_by_source(&source("s5", "F", 2)).unwrap(),
        Some(new)
    );
    let r = e.activity_by_dedup("<r@t>", Direction::Incoming).unwrap();
    let r = e.activity(r.unwrap()).unwrap().unwrap();
    assert_eq!(r.correlation.map(|c| c.activity), Some(new));
    let old_now = e.activity(old).unwrap().unwrap();
    assert_eq!(old_now.other_sources, vec![source("s5", "F", 4)]);
    assert_eq!(
        e.activity_by_source(&source("s5", "F", 4)).unwrap(),
        Some(old)
    );
    let orphan = e.activity_by_dedup("<o@t>", Direction::Incoming).unwrap();
    assert_eq!(
        e.awaiting_parent("<nobody@t>").unwrap(),
        vec![orphan.unwrap()]
    );
    let ids = [r.id, 999_999, new];
    let read: Vec<u64> = e.activities(&ids).unwrap().iter().map(|a| a.id).collect();
    assert_eq!(
        read,
        vec![r.id, new],
        "activities() keeps the order, skips what is not there"
    );
    let waiting = e.awaiting_parents(&["<nobody@t>", "<none@t>"]).unwrap();
    assert_eq!(waiting, vec![("<nobody@t>".to_string(), orphan.unwrap())]);
}

/// An Outlook Thread-Index: the 22-byte header of one conversation and `replies` child blocks.
pub(crate) fn thread_index(replies: usize) -> String {
    use base64::Engine as _;
    let mut b = vec![7u8; 22];
    for i in 0..replies {
        b.extend_from_slice(&[i as u8 + 1; 5]);
    }
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn concurrent_writers<E: Engine + Sync>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    std::thread::scope(|s| {
        for t in 0..4u32 {
            s.spawn(move || {
                for i in 0..25u32 {
                    let a = activity("s5", &format!("F{t}"), i + 1, &format!("<c{t}-{i}@t>"));
                    commit(e, &[draft(a)]).unwrap();
                }
            });
        }
    });
    let mut ids = std::collections::BTreeSet::new();
    for t in 0..4 {
        for i in 0..25 {
            let id = e
                .activity_by_dedup(&format!("<c{t}-{i}@t>"), Direction::Incoming)
                .unwrap()
                .expect("every concurrent write is there");
            ids.insert(id);
        }
    }
    assert_eq!(ids.len(), 100, "ids are unique");
}

fn dedup_under_a_race<E: Engine + Sync>(e: &E)
where
    E::Error: std::fmt::Debug,
{
    // Eight mailboxes track the same message at once: one activity, eight sources.
    std::thread::scope(|s| {
        for t in 0..8u32 {
            s.spawn(move || {
                let a = activity(&format!("race{t}"), "F", 1, "<race@t>");
                commit(e, &[draft(a)]).unwrap();
            });
        }
    });
    let id = e
        .activity_by_dedup("<race@t>", Direction::Incoming)
        .unwrap()
        .unwrap();
    let a = e.activity(id).unwrap().unwrap();
    assert_eq!(a.other_sources.len() + 1, 8, "one activity with every copy");
    for t in 0..8 {
        assert_eq!(
            e.activity_by_source(&source(&format!("race{t}"), "F", 1))
                .unwrap(),
            Some(id)
        );
    }
}
