//! Two-way field sync (DESIGN §4.15): an activity's `read`, `follow_up`, `importance` and
//! `categories` against its message's flags in each mailbox copy, and untracking by removing
//! the tracked keyword in a mail client.
//!
//! Each copy remembers what it looked like when foldertrack last saw or wrote it
//! ([`CopySeen`]); a side *changed* a field when its value differs from that. A change on
//! one side goes to the other where the field's direction allows; when both changed (to
//! different values), the side the direction trusts wins: the CRM under `both` and
//! `to_mailbox`, the mailbox under `to_crm`. Every change to the CRM side is in the audit
//! trail, a conflict with both values.
//!
//! The functions run in the caller's transaction over [`BatchTx`], on every engine; writing
//! to the mailbox is the caller's (a [`Push`] says what to store where).

use super::tx::BatchTx;
use crate::config::{FieldSync, SyncDirection};
use crate::model::{AuditAction, AuditEntry, CopySeen, FieldState, Fields, Importance, Source};

/// The IMAP keyword for high importance (RFC 8457).
pub(crate) const IMPORTANT: &str = "$Important";

/// Keywords that are a message's state rather than a category the user gave it (RFC 5788's
/// registry and what common clients set): never synced as categories.
const NOT_CATEGORIES: [&str; 14] = [
    "$forwarded",
    "$mdnsent",
    "$junk",
    "$notjunk",
    "junk",
    "nonjunk",
    "$phishing",
    "$submitpending",
    "$submitted",
    "$hasattachment",
    "$hasnoattachment",
    "$muted",
    "$notify",
    "$important",
];

/// One synced field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Read,
    FollowUp,
    Importance,
    Categories,
}

impl Field {
    pub(crate) const ALL: [Field; 4] = [
        Field::Read,
        Field::FollowUp,
        Field::Importance,
        Field::Categories,
    ];

    /// Its name in the CLI, JSON and the audit trail.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::Read => "read",
            Field::FollowUp => "follow_up",
            Field::Importance => "importance",
            Field::Categories => "categories",
        }
    }

    fn direction(self, s: &FieldSync) -> SyncDirection {
        match self {
            Field::Read => s.read,
            Field::FollowUp => s.follow_up,
            Field::Importance => s.importance,
            Field::Categories => s.categories,
        }
    }

    /// Whether `a` and `b` hold the same value of this field.
    fn same(self, a: &Fields, b: &Fields) -> bool {
        match self {
            Field::Read => a.read == b.read,
            Field::FollowUp => a.follow_up == b.follow_up,
            Field::Importance => a.importance == b.importance,
            Field::Categories => a.categories == b.categories,
        }
    }

    /// Sets this field of `to` to `from`'s value.
    fn copy(self, from: &Fields, to: &mut Fields) {
        match self {
            Field::Read => to.read = from.read,
            Field::FollowUp => to.follow_up = from.follow_up,
            Field::Importance => to.importance = from.importance,
            Field::Categories => to.categories = from.categories.clone(),
        }
    }

    /// Its value in `f`, as the audit trail writes it.
    pub(crate) fn show(self, f: &Fields) -> String {
        match self {
            Field::Read => f.read.to_string(),
            Field::FollowUp => f.follow_up.to_string(),
            Field::Importance => f.importance.to_string(),
            Field::Categories => f.categories.join(", "),
        }
    }
}

/// What a message's flags say of the fields, and whether the tracked keyword is among them.
pub(crate) fn from_flags(flags: &[String], keyword: Option<&str>) -> (Fields, bool) {
    let has = |f: &str| flags.iter().any(|x| x.eq_ignore_ascii_case(f));
    let mut categories: Vec<String> = flags
        .iter()
        .filter(|f| !f.starts_with('\\'))
        .filter(|f| keyword.is_none_or(|k| !f.eq_ignore_ascii_case(k)))
        .filter(|f| !NOT_CATEGORIES.contains(&f.to_ascii_lowercase().as_str()))
        .cloned()
        .collect();
    categories.sort();
    categories.dedup();
    let fields = Fields {
        read: has("\\Seen"),
        follow_up: has("\\Flagged"),
        importance: match has(IMPORTANT) {
            true => Importance::High,
            false => Importance::Normal,
        },
        categories,
    };
    (fields, keyword.is_some_and(has))
}

/// The synced fields on one line, as `activities show` and the web pages print them.
pub(crate) fn describe(f: &Fields) -> String {
    format!(
        "read {}, follow-up {}, importance {}, categories: {}",
        if f.read { "yes" } else { "no" },
        if f.follow_up { "yes" } else { "no" },
        f.importance,
        if f.categories.is_empty() {
            "none".to_string()
        } else {
            f.categories.join(", ")
        }
    )
}

/// The flags to add and to remove to take a message from `from` to `to`.
pub(crate) fn flag_changes(from: &Fields, to: &Fields) -> (Vec<String>, Vec<String>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    let mut flip = |on: bool, was: bool, flag: &str| match (was, on) {
        (false, true) => add.push(flag.to_string()),
        (true, false) => remove.push(flag.to_string()),
        _ => {}
    };
    flip(to.read, from.read, "\\Seen");
    flip(to.follow_up, from.follow_up, "\\Flagged");
    flip(
        to.importance == Importance::High,
        from.importance == Importance::High,
        IMPORTANT,
    );
    for c in &to.categories {
        if !from.categories.contains(c) {
            add.push(c.clone());
        }
    }
    for c in &from.categories {
        if !to.categories.contains(c) {
            remove.push(c.clone());
        }
    }
    (add, remove)
}

/// A change foldertrack is to make to one mailbox copy: store `add` and remove `remove`, then
/// (once the server took it) record that the copy looks like `seen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Push {
    pub activity: u64,
    pub source: Source,
    /// The copy's fields before.
    pub before: Fields,
    pub seen: Fields,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

impl Push {
    /// Only the system flags (`\\Seen`, `\\Flagged`): for a folder that keeps no keywords
    /// (no `\\*` in PERMANENTFLAGS). Importance and categories stay as the copy had them, so
    /// the difference stays known and nothing is stored again and again.
    pub(crate) fn system_only(&mut self) {
        let system = |f: &String| f.starts_with('\\');
        self.add.retain(system);
        self.remove.retain(system);
        self.seen.importance = self.before.importance;
        self.seen.categories = self.before.categories.clone();
    }

    /// Whether it stores nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a flag scan did in the CRM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ScanOutcome {
    /// Fields of activities changed from the mailbox.
    pub changed: u32,
    /// Fields both sides had changed.
    pub conflicts: u32,
    /// Activities untracked because the keyword was removed.
    pub untracked: u32,
    /// What to write to the mailbox.
    pub pushes: Vec<Push>,
}

/// Records the flags a new activity's message was fetched with as its fields (no read: it
/// has none yet, and on a database a read per new activity is a round trip each).
/// `high_importance`: its headers say so (Outlook's `Importance: high`), which the CRM takes
/// where the copy lacks `$Important`.
pub(crate) fn add_new<T: BatchTx>(
    tx: &T,
    id: u64,
    copy: &CopySeen,
    high_importance: bool,
) -> Result<(), T::Error> {
    let mut crm = copy.seen.clone();
    if high_importance {
        crm.importance = Importance::High;
    }
    tx.put_field_state(
        id,
        &FieldState {
            crm,
            copies: vec![copy.clone()],
        },
    )
}

/// Records the flags a new copy of activity `id` was fetched with: a new activity takes them as
/// its fields (the mailbox is where it came from); a further copy of an existing one keeps the
/// CRM's and is written the fields the CRM sends to the mailbox.
pub(crate) fn add_copy<T: BatchTx>(
    tx: &T,
    id: u64,
    copy: &CopySeen,
) -> Result<FieldState, T::Error> {
    let mut st = match tx.field_state(id)? {
        Some(st) => st,
        None => FieldState {
            crm: copy.seen.clone(),
            copies: Vec::new(),
        },
    };
    st.copies.retain(|c| c.source != copy.source);
    st.copies.push(copy.clone());
    tx.put_field_state(id, &st)?;
    Ok(st)
}

/// The push that gives `copy` the CRM's value of every field the CRM sends to the mailbox.
fn push_for(id: u64, crm: &Fields, copy: &CopySeen, sync: &FieldSync) -> Option<Push> {
    let mut target = copy.seen.clone();
    for f in Field::ALL {
        if f.direction(sync).to_mailbox() {
            f.copy(crm, &mut target);
        }
    }
    let (add, remove) = flag_changes(&copy.seen, &target);
    (!add.is_empty() || !remove.is_empty()).then(|| Push {
        activity: id,
        source: copy.source.clone(),
        before: copy.seen.clone(),
        seen: target,
        add,
        remove,
    })
}

/// Applies what a scan of one folder found (each tracked message's flags now), in one
/// transaction: the CRM takes the mailbox's changes, a removed keyword untracks, and the CRM's
/// changes the mailbox has not got yet come back as pushes. `actor` is `mailbox:NAME`.
pub(crate) fn apply_scan<T: BatchTx>(
    tx: &T,
    found: &[(Source, Vec<String>)],
    sync: &FieldSync,
    keyword: Option<&str>,
    actor: &str,
    at: &str,
) -> Result<ScanOutcome, T::Error> {
    let mut out = ScanOutcome::default();
    let sources: Vec<&Source> = found.iter().map(|(s, _)| s).collect();
    tx.prefetch(&sources, &[], &[])?;
    let mut ids = Vec::with_capacity(found.len());
    for (source, flags) in found {
        if let Some(id) = tx.activity_by_source(source)? {
            ids.push((id, source, flags));
        }
    }
    tx.prefetch_fields(&ids.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())?;
    for (id, source, flags) in ids {
        let (now, kw) = from_flags(flags, keyword);
        let now = CopySeen {
            source: source.clone(),
            seen: now,
            keyword: kw,
        };
        let st = tx.field_state(id)?;
        let Some(mut st) = st.filter(|st| st.copies.iter().any(|c| c.source == *source)) else {
            let st = add_copy(tx, id, &now)?;
            out.pushes.extend(push_for(id, &st.crm, &now, sync));
            continue;
        };
        let pos = st
            .copies
            .iter()
            .position(|c| c.source == *source)
            .expect("found above");
        if keyword.is_some() && st.copies[pos].keyword && !kw {
            st.copies[pos] = now;
            tx.put_field_state(id, &st)?;
            if super::batch::untrack(tx, id, actor, at)? == Some(true) {
                out.untracked += 1;
            }
            continue;
        }
        let before = st.clone();
        if tx.is_untracked(id)? {
            st.copies[pos] = now;
        } else {
            st.copies[pos].keyword = kw;
            let push = merge_copy(tx, id, &mut st, pos, &now.seen, sync, actor, at, &mut out)?;
            out.pushes.extend(push);
        }
        // Most answers after a write-back are our own changes: nothing to write for them.
        if st != before {
            tx.put_field_state(id, &st)?;
        }
    }
    Ok(out)
}

/// Merges one copy's flags `now` into `st` field by field (the rules in the module's doc).
/// A copy's `seen` value moves only to a value the CRM then holds too, so a mailbox change the
/// direction does not take stays a difference, and a later CRM change is a conflict.
#[allow(clippy::too_many_arguments)]
fn merge_copy<T: BatchTx>(
    tx: &T,
    id: u64,
    st: &mut FieldState,
    pos: usize,
    now: &Fields,
    sync: &FieldSync,
    actor: &str,
    at: &str,
    out: &mut ScanOutcome,
) -> Result<Option<Push>, T::Error> {
    for f in Field::ALL {
        let dir = f.direction(sync);
        let seen = &st.copies[pos].seen;
        if dir == SyncDirection::None || f.same(now, seen) {
            continue; // not synced, or the mailbox did not change it
        }
        if f.same(&st.crm, now) {
            f.copy(now, &mut st.copies[pos].seen); // both sides agree again
            continue;
        }
        if !f.same(&st.crm, seen) {
            out.conflicts += 1;
            if dir.to_mailbox() {
                // The CRM wins: the copy is written the CRM's value (the push below).
                append(
                    tx,
                    id,
                    at,
                    actor,
                    AuditAction::FieldConflict,
                    f,
                    f.show(now),
                    f.show(&st.crm),
                )?;
                f.copy(now, &mut st.copies[pos].seen);
                continue;
            }
            append(
                tx,
                id,
                at,
                actor,
                AuditAction::FieldConflict,
                f,
                f.show(&st.crm),
                f.show(now),
            )?;
        } else if dir.to_crm() {
            out.changed += 1;
            append(
                tx,
                id,
                at,
                actor,
                AuditAction::FieldChanged,
                f,
                f.show(&st.crm),
                f.show(now),
            )?;
        } else {
            continue; // to_mailbox: a mail client's change stays in the mailbox
        }
        f.copy(now, &mut st.crm);
        f.copy(now, &mut st.copies[pos].seen);
    }
    Ok(push_for(id, &st.crm, &st.copies[pos], sync))
}

#[allow(clippy::too_many_arguments)]
fn append<T: BatchTx>(
    tx: &T,
    id: u64,
    at: &str,
    actor: &str,
    action: AuditAction,
    f: Field,
    old: String,
    new: String,
) -> Result<(), T::Error> {
    tx.append_audit(&AuditEntry {
        activity: id,
        at: at.to_string(),
        actor: actor.to_string(),
        action,
        field: Some(f.name().to_string()),
        old: Some(old),
        new: Some(new),
    })
}

/// Records that the server took `pushes`: each copy now looks like its push's `seen`.
pub(crate) fn record_pushed<T: BatchTx>(tx: &T, pushes: &[Push]) -> Result<(), T::Error> {
    for p in pushes {
        let Some(mut st) = tx.field_state(p.activity)? else {
            continue;
        };
        if let Some(c) = st.copies.iter_mut().find(|c| c.source == p.source) {
            c.seen = p.seen.clone();
            tx.put_field_state(p.activity, &st)?;
        }
    }
    Ok(())
}

/// A change made in the CRM (`activities set`): what to set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldChange {
    pub read: Option<bool>,
    pub follow_up: Option<bool>,
    pub importance: Option<Importance>,
    /// Categories to add.
    pub add_categories: Vec<String>,
    /// Categories to remove.
    pub remove_categories: Vec<String>,
}

/// Sets activity `id`'s fields by `actor` in the CRM (audited); `None` when there is no such
/// activity. Returns the pushes that bring every copy the CRM's values where the fields'
/// directions allow.
pub(crate) fn set_fields<T: BatchTx>(
    tx: &T,
    id: u64,
    change: &FieldChange,
    sync: &FieldSync,
    actor: &str,
    at: &str,
) -> Result<Option<Vec<Push>>, T::Error> {
    if tx.activity(id)?.is_none() {
        return Ok(None);
    }
    let mut st = tx.field_state(id)?.unwrap_or_default();
    let mut new = st.crm.clone();
    if let Some(r) = change.read {
        new.read = r;
    }
    if let Some(f) = change.follow_up {
        new.follow_up = f;
    }
    if let Some(i) = change.importance {
        new.importance = i;
    }
    new.categories.retain(|c| {
        !change
            .remove_categories
            .iter()
            .any(|r| r.eq_ignore_ascii_case(c))
    });
    new.categories.extend(change.add_categories.iter().cloned());
    new.categories.sort();
    new.categories.dedup();
    for f in Field::ALL {
        if !f.same(&st.crm, &new) {
            let (old, value) = (f.show(&st.crm), f.show(&new));
            append(tx, id, at, actor, AuditAction::FieldChanged, f, old, value)?;
        }
    }
    st.crm = new;
    tx.put_field_state(id, &st)?;
    Ok(Some(
        st.copies
            .iter()
            .filter_map(|c| push_for(id, &st.crm, c, sync))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    //! The merge rules on the in-memory engine, including the cases a real mailbox rarely
    //! shows on cue: a conflict, a second copy, a direction of `none`.
    use super::*;
    use crate::track::batch::BatchItem;
    use crate::track::conformance::{activity, commit, draft};
    use crate::track::memory::Memory;
    use crate::track::tx::{Engine, Lookups};

    fn flags(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| s.to_string()).collect()
    }

    /// Tracks one message with `f` as its flags (and `$Tracked`); its id and source.
    fn tracked(e: &Memory, f: &[&str]) -> (u64, Source) {
        let a = activity("alice", "Acme", 1, "<m@x>");
        let s = a.source.clone();
        let mut all = flags(f);
        all.push("$Tracked".into());
        let (seen, keyword) = from_flags(&all, Some("$Tracked"));
        let BatchItem::Tracked(mut d) = draft(a) else {
            unreachable!()
        };
        d.seen = Some(CopySeen {
            source: s.clone(),
            seen,
            keyword,
        });
        commit(e, &[BatchItem::Tracked(d)]).unwrap();
        (e.activity_by_source(&s).unwrap().unwrap(), s)
    }

    fn scan(e: &Memory, s: &Source, f: &[&str], sync: &FieldSync) -> ScanOutcome {
        let mut all = flags(f);
        all.push("$Tracked".into());
        e.transaction(|tx| {
            apply_scan(
                tx,
                &[(s.clone(), all.clone())],
                sync,
                Some("$Tracked"),
                "mailbox:alice",
                "t",
            )
        })
        .unwrap()
    }

    fn crm(e: &Memory, id: u64) -> Fields {
        e.transaction(|tx| tx.field_state(id)).unwrap().unwrap().crm
    }

    fn set(e: &Memory, id: u64, c: FieldChange, sync: &FieldSync) -> Vec<Push> {
        e.transaction(|tx| set_fields(tx, id, &c, sync, "cli:ann", "t"))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn flags_map_to_fields_and_state_keywords_are_not_categories() {
        let (f, kw) = from_flags(
            &flags(&[
                "\\Seen",
                "$important",
                "$Tracked",
                "$Forwarded",
                "Deal",
                "NonJunk",
                "Deal",
            ]),
            Some("$Tracked"),
        );
        assert!(kw && f.read && !f.follow_up);
        assert_eq!(f.importance, Importance::High);
        assert_eq!(f.categories, vec!["Deal".to_string()]);
        let (add, remove) = flag_changes(&f, &Fields::default());
        assert!(add.is_empty());
        assert_eq!(remove, flags(&["\\Seen", "$Important", "Deal"]));
    }

    #[test]
    fn a_conflict_under_both_is_won_by_the_crm_and_written_back() {
        let e = Memory::default();
        let sync = FieldSync::default();
        let (id, s) = tracked(&e, &["Deal"]);
        // The CRM swaps Deal for Won, but the copy could not be written (no push recorded)…
        let pushes = set(
            &e,
            id,
            FieldChange {
                add_categories: vec!["Won".into()],
                remove_categories: vec!["Deal".into()],
                ..Default::default()
            },
            &sync,
        );
        assert_eq!(pushes.len(), 1);
        // …and meanwhile the mail client changed Deal to Lost.
        let out = scan(&e, &s, &["Lost"], &sync);
        assert_eq!(out.conflicts, 1);
        assert_eq!(
            crm(&e, id).categories,
            vec!["Won".to_string()],
            "the CRM wins"
        );
        assert_eq!(out.pushes.len(), 1);
        assert_eq!(
            (out.pushes[0].add.clone(), out.pushes[0].remove.clone()),
            (flags(&["Won"]), flags(&["Lost"]))
        );
        let trail = e.snapshot().audit;
        let c = trail
            .iter()
            .find(|a| a.action == crate::model::AuditAction::FieldConflict)
            .unwrap();
        assert_eq!(
            (c.old.as_deref(), c.new.as_deref()),
            (Some("Lost"), Some("Won")),
            "both values"
        );
    }

    #[test]
    fn to_crm_never_writes_the_mailbox_and_a_crm_change_stays_until_the_mailbox_changes() {
        let e = Memory::default();
        let sync = FieldSync::default(); // read: to_crm
        let (id, s) = tracked(&e, &[]);
        let pushes = set(
            &e,
            id,
            FieldChange {
                read: Some(true),
                ..Default::default()
            },
            &sync,
        );
        assert!(pushes.is_empty(), "read is not written to the mailbox");
        assert!(crm(&e, id).read);
        // The mailbox did not change: the CRM keeps its value.
        assert_eq!(scan(&e, &s, &[], &sync), ScanOutcome::default());
        assert!(crm(&e, id).read);
        // The mail client marks it read too: both sides agree again, nothing changes.
        scan(&e, &s, &["\\Seen"], &sync);
        assert!(crm(&e, id).read);
    }

    #[test]
    fn to_mailbox_keeps_a_mail_clients_change_out_of_the_crm_and_none_syncs_nothing() {
        let e = Memory::default();
        let sync = FieldSync {
            follow_up: SyncDirection::ToMailbox,
            categories: SyncDirection::None,
            ..FieldSync::default()
        };
        let (id, s) = tracked(&e, &[]);
        let out = scan(&e, &s, &["\\Flagged", "Deal"], &sync);
        assert_eq!((out.changed, out.pushes.len()), (0, 0), "{out:?}");
        assert!(!crm(&e, id).follow_up && crm(&e, id).categories.is_empty());
        // The CRM sets follow-up: written to the copy.
        let p = set(
            &e,
            id,
            FieldChange {
                follow_up: Some(true),
                ..Default::default()
            },
            &sync,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].add, flags(&["\\Flagged"]));
    }

    #[test]
    fn removing_the_keyword_untracks_once_and_a_recorded_push_is_not_a_change() {
        let e = Memory::default();
        let sync = FieldSync::default();
        let (id, s) = tracked(&e, &[]);
        let p = set(
            &e,
            id,
            FieldChange {
                follow_up: Some(true),
                ..Default::default()
            },
            &sync,
        );
        e.transaction(|tx| record_pushed(tx, &p)).unwrap();
        // The server took it: the copy now has \Flagged, and that is no change.
        assert_eq!(scan(&e, &s, &["\\Flagged"], &sync), ScanOutcome::default());
        let gone = e
            .transaction(|tx| {
                apply_scan(
                    tx,
                    &[(s.clone(), flags(&["\\Flagged"]))],
                    &sync,
                    Some("$Tracked"),
                    "mailbox:alice",
                    "t",
                )
            })
            .unwrap();
        assert_eq!(gone.untracked, 1);
        assert!(e.transaction(|tx| tx.is_untracked(id)).unwrap());
        let again = e
            .transaction(|tx| {
                apply_scan(
                    tx,
                    &[(s.clone(), flags(&["\\Flagged"]))],
                    &sync,
                    Some("$Tracked"),
                    "mailbox:alice",
                    "t",
                )
            })
            .unwrap();
        assert_eq!(again.untracked, 0);
    }

    #[test]
    fn a_folder_without_keywords_gets_the_system_flags_and_keeps_the_difference() {
        let e = Memory::default();
        let sync = FieldSync::default();
        let (id, s) = tracked(&e, &[]);
        let change = FieldChange {
            follow_up: Some(true),
            importance: Some(Importance::High),
            add_categories: vec!["Deal".into()],
            ..Default::default()
        };
        let mut p = set(&e, id, change, &sync).remove(0);
        p.system_only();
        assert_eq!(
            (p.add.clone(), p.remove.clone()),
            (flags(&["\\Flagged"]), vec![])
        );
        e.transaction(|tx| record_pushed(tx, std::slice::from_ref(&p)))
            .unwrap();
        // The copy has \Flagged only: no change from the mailbox, the CRM keeps its
        // category and importance, and they are pushed again (then filtered again).
        let out = scan(&e, &s, &["\\Flagged"], &sync);
        assert_eq!((out.changed, out.conflicts), (0, 0));
        let crm = crm(&e, id);
        assert!(crm.follow_up && crm.importance == Importance::High);
        assert_eq!(crm.categories, vec!["Deal".to_string()]);
        assert_eq!(out.pushes[0].add, flags(&["Deal"]));
    }
}
