//! Stage 4: what a parsed message becomes in the CRM (DESIGN §4): direction, parties,
//! regarding and dedup key. Pure functions over a [`RecordLookup`], so the rules are tested
//! without IMAP or sled; the store applies the result in its transaction.

pub(crate) mod batch;
#[cfg(test)]
pub(crate) mod conformance;
pub(crate) mod correlate;
pub(crate) mod fields;
#[cfg(test)]
pub(crate) mod memory;
pub mod parties;
pub mod rules;
pub(crate) mod tx;
use crate::token;

use crate::config::{MailboxConfig, OtherMail, UnresolvedSender};
use crate::model::{
    Activity, Alert, Correlation, Direction, Draft, Party, Record, RecordRef, Source, Writer,
};
use crate::parse::ParsedMessage;

/// Read access to the CRM records, as tracking needs it.
pub trait RecordLookup {
    fn get(&self, r: &RecordRef) -> Option<Record>;
    /// Records having this (lower-case) address.
    fn by_email(&self, email: &str) -> Vec<Record>;
    /// [`RecordLookup::by_email`] of several addresses: (address, its records) for each. An
    /// engine whose every read is a round trip reads them at once.
    fn by_emails(&self, emails: &[&str]) -> Vec<(String, Vec<Record>)> {
        emails
            .iter()
            .map(|e| (e.to_string(), self.by_email(e)))
            .collect()
    }
    /// Records of `rtype` whose name equals `name`, case-insensitively.
    fn by_name(&self, rtype: &str, name: &str) -> Vec<Record>;
}

/// A [`RecordLookup`] that asks its store once per address, record and name: a batch's
/// messages name the same few people again and again, and its folder's rule the same record
/// for every message; on a database server every ask is a round trip. Lives for one batch, so
/// a record changed meanwhile is seen by the next batch.
pub(crate) struct MemoRecords<'a, L: ?Sized> {
    inner: &'a L,
    by_email: Memo<String, Vec<Record>>,
    by_ref: Memo<RecordRef, Option<Record>>,
    by_name: Memo<(String, String), Vec<Record>>,
}

type Memo<K, V> = std::sync::Mutex<std::collections::HashMap<K, V>>;

/// The memo's answer for `key`, else `ask`'s, kept (the lock is not held while asking).
fn memoised<K: std::hash::Hash + Eq, V: Clone>(
    memo: &Memo<K, V>,
    key: K,
    ask: impl FnOnce() -> V,
) -> V {
    let lock = || memo.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(v) = lock().get(&key) {
        return v.clone();
    }
    let v = ask();
    lock().insert(key, v.clone());
    v
}

impl<'a, L: RecordLookup + ?Sized> MemoRecords<'a, L> {
    pub(crate) fn new(inner: &'a L) -> Self {
        MemoRecords {
            inner,
            by_email: Default::default(),
            by_ref: Default::default(),
            by_name: Default::default(),
        }
    }

    /// Looks up, at once, every address these messages name that is not looked up yet.
    pub(crate) fn prefetch<'p>(&self, parsed: impl Iterator<Item = &'p ParsedMessage>) {
        let mut wanted: std::collections::BTreeSet<&str> = Default::default();
        {
            let memo = self.by_email.lock().unwrap_or_else(|p| p.into_inner());
            for p in parsed {
                let addrs = p.from.iter().chain(&p.to).chain(&p.cc).chain(&p.bcc);
                for a in addrs.filter_map(|a| a.address.as_deref()) {
                    if !memo.contains_key(a) {
                        wanted.insert(a);
                    }
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        let wanted: Vec<&str> = wanted.into_iter().collect();
        let found = self.inner.by_emails(&wanted);
        let mut memo = self.by_email.lock().unwrap_or_else(|p| p.into_inner());
        memo.extend(found);
    }
}

impl<L: RecordLookup + ?Sized> RecordLookup for MemoRecords<'_, L> {
    fn get(&self, r: &RecordRef) -> Option<Record> {
        memoised(&self.by_ref, r.clone(), || self.inner.get(r))
    }
    fn by_email(&self, email: &str) -> Vec<Record> {
        memoised(&self.by_email, email.to_string(), || {
            self.inner.by_email(email)
        })
    }
    fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
        let key = (rtype.to_string(), name.to_string());
        memoised(&self.by_name, key, || self.inner.by_name(rtype, name))
    }
}

/// What the tracker knows about the folder a message sits in.
#[derive(Debug, Clone)]
pub struct FolderContext<'a> {
    pub mailbox: &'a MailboxConfig,
    /// Config form (`/` separated).
    pub folder: String,
    /// The folder is the mailbox's Sent folder (or below it).
    pub is_sent: bool,
    pub rule: Option<rules::RuleMatch<'a>>,
    /// Set for INBOX and Sent tracked under `track_other_mail` (no folder rule).
    pub other: Option<OtherMail>,
    /// The mailbox owner and its teams: who the links are made for.
    pub writer: Writer,
}

/// The mailbox owner as a [`Writer`], with the teams its user record lists.
pub fn writer_of(mb: &MailboxConfig, records: &dyn RecordLookup) -> Writer {
    Writer {
        user: mb.owner.to_string(),
        teams: records.get(&mb.owner).map(|r| r.teams).unwrap_or_default(),
    }
}

/// Direction (DESIGN §4.8): mail in the Sent folder is outgoing. foldertrack also treats mail
/// *from the mailbox's own address* as outgoing wherever it is filed: a user who drags a sent
/// message into a tracked folder under the Inbox sent it all the same (Dynamics does the same
/// for mail whose sender is the mailbox's user).
pub fn direction(parsed: &ParsedMessage, ctx: &FolderContext<'_>) -> Direction {
    let own = ctx.mailbox.address.as_deref();
    let from_self = matches!((own, parsed.from.as_ref().and_then(|f| f.address.as_deref())), (Some(a), Some(b)) if a == b);
    if ctx.is_sent || from_self {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

/// Dedup key (DESIGN §4.7): the Message-ID, else the hash of the message minus trace headers.
/// Paired with the direction it identifies one activity across all mailboxes.
pub fn dedup_key(parsed: &ParsedMessage) -> String {
    parsed
        .message_id
        .clone()
        .or_else(|| parsed.content_hash.clone())
        .unwrap_or_default()
}

/// Read access to tracked activities, for smart matching (the header-based correlation runs
/// inside the store's transaction, where earlier messages of the same batch are visible).
pub trait ActivityLookup {
    /// Recent activities whose normalised subject is `subject`: (id, every party address).
    fn by_subject(&self, subject: &str) -> Vec<(u64, Vec<String>)>;
}

/// The subject without reply and forward prefixes and tracking tokens, lower-cased, for smart
/// matching: "RE: AW: Quote for 40 widgets CRM:0001002" → "quote for 40 widgets".
pub fn normalise_subject(subject: &str, token: &token::TokenFormat) -> String {
    let mut s = subject.trim().to_string();
    if let Some(t) = token.find(&s) {
        if let Some(i) = s.to_ascii_lowercase().rfind(&t.text.to_ascii_lowercase()) {
            s.replace_range(i..i + t.text.len(), "");
        }
    }
    let mut s = s.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = [
            "re:", "fw:", "fwd:", "aw:", "wg:", "sv:", "vs:", "tr:", "rv:", "antw:",
        ]
        .iter()
        .find(|p| lower.starts_with(*p));
        match cut {
            Some(p) => s = s[p.len()..].trim_start(),
            None => break,
        }
    }
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Builds the draft activity for `parsed` found at `source`; the store completes it (id,
/// correlation, inherited regarding, auto-created sender) in its transaction.
pub fn build(
    parsed: ParsedMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    size: u64,
    records: &dyn RecordLookup,
    activities: &dyn ActivityLookup,
) -> Draft {
    let mut alerts = Vec::new();
    let regarding = rule_regarding(ctx, records, &mut alerts);
    let crm = &ctx.mailbox.crm;
    let owner = ctx.mailbox.owner.to_string();
    let direction = direction(&parsed, ctx);
    let from = parsed
        .from
        .as_ref()
        .map(|a| parties::resolve_from(a, &owner, records));
    let list = |v: &[crate::parse::MailAddr]| {
        v.iter()
            .map(|a| parties::resolve_recipient(a, records))
            .collect::<Vec<Party>>()
    };
    let (to, cc, bcc) = (list(&parsed.to), list(&parsed.cc), list(&parsed.bcc));
    let token = parsed
        .subject
        .as_deref()
        .and_then(|s| crm.token.find(s))
        .map(|t| t.text);
    let subject_key = parsed
        .subject
        .as_deref()
        .map(|s| normalise_subject(s, &crm.token))
        .filter(|n| n.split_whitespace().count() >= 2 && !n.contains('\0'));
    let all: Vec<&Party> = from.iter().chain(&to).chain(&cc).chain(&bcc).collect();
    // Smart matching runs here, against what is committed; the store prefers any header match.
    let correlation = match (crm.smart_matching, subject_key.as_deref()) {
        (true, Some(norm)) => smart_match(norm, &all[..all.len() - bcc.len()], activities),
        _ => None,
    };
    let create_sender = sender_record(crm.unresolved_sender, from.as_ref(), direction, &owner);
    let (keep, only_if_correlated) = other_mail_filter(ctx.other, &all, correlation.is_some());
    let activity = Activity {
        id: 0,
        dedup_key: dedup_key(&parsed),
        to,
        cc,
        bcc,
        from,
        direction,
        regarding: regarding.map(|r| r.to_string()),
        subject: parsed.subject,
        message_id: parsed.message_id,
        date: parsed.date,
        in_reply_to: parsed.in_reply_to,
        references: parsed.references,
        thread_index: parsed.thread_index,
        body_text: parsed.body_text,
        body_blob: None,
        attachments: parsed.attachments.into_iter().map(Into::into).collect(),
        source,
        other_sources: Vec::new(),
        size,
        tracked_at: String::new(),
        alerts,
        correlation,
        token,
        inherits: false,
    };
    Draft {
        activity,
        inherit: ctx
            .rule
            .as_ref()
            .is_none_or(|m| m.rule.regarding == crate::config::Regarding::None)
            || regarding_unresolved(ctx),
        writer: ctx.writer.clone(),
        create_sender,
        only_if_correlated,
        keep,
        subject_key,
        seen: None,
        high_importance: false,
    }
}

/// The regarding the folder's rule gives, if the mailbox owner may write that record
/// (DESIGN §4.11: otherwise the mail is tracked unlinked, with an alert).
fn rule_regarding(
    ctx: &FolderContext<'_>,
    records: &dyn RecordLookup,
    alerts: &mut Vec<Alert>,
) -> Option<RecordRef> {
    let m = ctx.rule.as_ref()?;
    let r = rules::resolve_regarding(m, records)
        .map_err(|alert| alerts.push(alert))
        .ok()??;
    if let Some(rec) = records.get(&r) {
        if !ctx.writer.can_write(&rec) {
            alerts.push(warning(format!(
                "{} may not write {r} (owner {}): tracked unlinked; share the record, give it a team of the user's, or change the rule",
                ctx.writer.user,
                rec.owner.as_deref().unwrap_or("-")
            )));
            return None;
        }
    }
    Some(r)
}

/// Dynamics' smart matching: the newest committed activity with the same normalised subject
/// that shares at least two addresses with this mail (sender and visible recipients).
fn smart_match(
    subject: &str,
    parties: &[&Party],
    activities: &dyn ActivityLookup,
) -> Option<Correlation> {
    let mine: Vec<&str> = parties
        .iter()
        .filter_map(|p| p.address.as_deref())
        .collect();
    activities
        .by_subject(subject)
        .into_iter()
        .filter(|(_, addrs)| addrs.iter().filter(|a| mine.contains(&a.as_str())).count() >= 2)
        .map(|(id, _)| Correlation {
            method: crate::model::CorrelationMethod::Smart,
            activity: id,
        })
        .max_by_key(|c| c.activity)
}

/// The contact or lead to create for an incoming mail's unknown sender, as the mailbox's
/// `unresolved_sender` says.
fn sender_record(
    kind: UnresolvedSender,
    from: Option<&Party>,
    direction: Direction,
    owner: &str,
) -> Option<Record> {
    if kind == UnresolvedSender::Keep || direction == Direction::Outgoing {
        return None;
    }
    let p = from?;
    let (None, Some(addr)) = (&p.record, &p.address) else {
        return None;
    };
    Some(Record {
        rtype: if kind == UnresolvedSender::Lead {
            "lead"
        } else {
            "contact"
        }
        .into(),
        key: addr.clone(),
        name: p.name.clone().unwrap_or_else(|| addr.clone()),
        emails: vec![addr.clone()],
        owner: Some(owner.to_string()),
        shared: false,
        teams: Vec::new(),
    })
}

/// Other mail (not in a tracked folder) is kept only when the mailbox's filter says so:
/// (keep, keep only if it correlates with a tracked activity).
fn other_mail_filter(
    other: Option<OtherMail>,
    parties: &[&Party],
    correlated: bool,
) -> (bool, bool) {
    let known = || {
        parties
            .iter()
            .flat_map(|p| p.record.iter().chain(&p.records))
            .any(|r| {
                ["contact:", "account:", "lead:"]
                    .iter()
                    .any(|t| r.starts_with(t))
            })
    };
    match other {
        None | Some(OtherMail::All) => (true, false),
        Some(OtherMail::None) => (false, false),
        Some(OtherMail::Known) => (known(), false),
        Some(OtherMail::Replies) => (true, !correlated),
    }
}

impl From<crate::parse::ParsedAttachment> for crate::model::AttachmentMeta {
    fn from(a: crate::parse::ParsedAttachment) -> Self {
        crate::model::AttachmentMeta {
            name: a.name,
            mime_type: a.mime_type,
            size: a.size,
            sha256: a.sha256,
            skipped: a.skipped,
        }
    }
}

/// A pattern rule whose capture matched no record: the mail may still inherit a regarding.
fn regarding_unresolved(ctx: &FolderContext<'_>) -> bool {
    ctx.rule
        .as_ref()
        .is_some_and(|m| matches!(m.rule.regarding, crate::config::Regarding::Lookup { .. }))
}

/// An alert at warning level.
pub fn warning(message: impl Into<String>) -> Alert {
    Alert {
        level: crate::model::AlertLevel::Warning,
        message: message.into(),
    }
}

pub mod testing {
    //! An in-memory [`RecordLookup`] for tests (unit, integration and fuzz) that track messages
    //! without a store.
    use super::*;

    #[derive(Default)]
    pub struct MemRecords(pub Vec<Record>);

    impl RecordLookup for MemRecords {
        fn get(&self, r: &RecordRef) -> Option<Record> {
            self.0
                .iter()
                .find(|x| x.rtype == r.rtype && x.key == r.key)
                .cloned()
        }
        fn by_email(&self, email: &str) -> Vec<Record> {
            self.0
                .iter()
                .filter(|x| x.emails.iter().any(|e| e.eq_ignore_ascii_case(email)))
                .cloned()
                .collect()
        }
        fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
            self.0
                .iter()
                .filter(|x| x.rtype == rtype && x.name.eq_ignore_ascii_case(name))
                .cloned()
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::MemRecords;
    use super::*;
    use crate::parse::MailAddr;

    fn rec(t: &str, k: &str, email: &str, owner: Option<&str>) -> Record {
        Record {
            rtype: t.into(),
            key: k.into(),
            name: k.into(),
            emails: vec![email.into()],
            owner: owner.map(Into::into),
            shared: false,
            teams: vec![],
        }
    }

    /// A lookup that counts what reaches it.
    struct Counting(MemRecords, std::sync::atomic::AtomicUsize);
    impl RecordLookup for Counting {
        fn get(&self, r: &RecordRef) -> Option<Record> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.get(r)
        }
        fn by_email(&self, email: &str) -> Vec<Record> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.by_email(email)
        }
        fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.by_name(rtype, name)
        }
    }

    #[test]
    fn a_batch_asks_the_store_once_per_record_address_and_name() {
        let inner = Counting(
            MemRecords(vec![rec("account", "acme", "bob@acme.com", None)]),
            Default::default(),
        );
        let memo = MemoRecords::new(&inner);
        let acme = RecordRef::new("account", "acme");
        let gone = RecordRef::new("account", "gone");
        for _ in 0..3 {
            assert_eq!(memo.get(&acme).map(|r| r.key), Some("acme".to_string()));
            assert_eq!(memo.get(&gone), None);
            assert_eq!(memo.by_name("account", "acme").len(), 1);
            assert_eq!(memo.by_email("bob@acme.com").len(), 1);
        }
        // One ask each for acme, gone (a miss is remembered too), the name and the address.
        assert_eq!(inner.1.load(std::sync::atomic::Ordering::Relaxed), 4);
    }

    #[test]
    fn from_prefers_type_order_then_owner() {
        let recs = MemRecords(vec![
            rec("lead", "l1", "bob@acme.com", Some("systemuser:alice")),
            rec("contact", "c-other", "bob@acme.com", Some("systemuser:zed")),
            rec(
                "contact",
                "c-mine",
                "bob@acme.com",
                Some("systemuser:alice"),
            ),
            rec("account", "acme", "bob@acme.com", None),
        ]);
        let a = MailAddr {
            address: Some("bob@acme.com".into()),
            name: Some("Bob".into()),
        };
        let p = parties::resolve_from(&a, "systemuser:alice", &recs);
        assert_eq!(p.record.as_deref(), Some("contact:c-mine"));
        let p = parties::resolve_recipient(&a, &recs);
        assert_eq!(p.records.len(), 4, "recipients resolve to every record");
        let nobody = MailAddr {
            address: Some("x@y.z".into()),
            name: None,
        };
        assert_eq!(parties::resolve_recipient(&nobody, &recs).record, None);
    }

    #[test]
    fn address_shared_by_100_records_stays_unresolved() {
        let recs = MemRecords(
            (0..100)
                .map(|i| rec("contact", &format!("c{i}"), "info@big.com", None))
                .collect(),
        );
        let a = MailAddr {
            address: Some("info@big.com".into()),
            name: None,
        };
        assert_eq!(
            parties::resolve_from(&a, "systemuser:alice", &recs).record,
            None
        );
    }
}
