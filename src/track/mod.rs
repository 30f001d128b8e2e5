//! Stage 4: what a parsed message becomes in the CRM (DESIGN §4): direction, parties,
//! regarding and dedup key. Pure functions over a [`RecordLookup`], so the rules are tested
//! without IMAP or sled; the store applies the result in its transaction.

pub mod parties;
pub mod rules;

use crate::config::MailboxConfig;
use crate::model::{Activity, Alert, Direction, Record, RecordRef, Source};
use crate::parse::ParsedMessage;

/// Read access to the CRM records, as tracking needs it.
pub trait RecordLookup {
    fn get(&self, r: &RecordRef) -> Option<Record>;
    /// Records having this (lower-case) address.
    fn by_email(&self, email: &str) -> Vec<Record>;
    /// Records of `rtype` whose name equals `name`, case-insensitively.
    fn by_name(&self, rtype: &str, name: &str) -> Vec<Record>;
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

/// Builds the activity for `parsed` found at `source`. `id` and `tracked_at` are filled by the store.
pub fn build_activity(
    parsed: ParsedMessage,
    ctx: &FolderContext<'_>,
    source: Source,
    size: u64,
    records: &dyn RecordLookup,
) -> Activity {
    let mut alerts = Vec::new();
    let regarding = match &ctx.rule {
        Some(m) => match rules::resolve_regarding(m, records) {
            Ok(r) => r,
            Err(alert) => {
                alerts.push(alert);
                None
            }
        },
        None => None,
    };
    let owner = ctx.mailbox.owner.to_string();
    let direction = direction(&parsed, ctx);
    let from = parsed
        .from
        .as_ref()
        .map(|a| parties::resolve_from(a, &owner, records));
    let list = |v: &[crate::parse::MailAddr]| {
        v.iter()
            .map(|a| parties::resolve_recipient(a, records))
            .collect()
    };
    Activity {
        id: 0,
        dedup_key: dedup_key(&parsed),
        to: list(&parsed.to),
        cc: list(&parsed.cc),
        bcc: list(&parsed.bcc),
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
        attachments: parsed
            .attachments
            .into_iter()
            .map(|a| crate::model::AttachmentMeta {
                name: a.name,
                mime_type: a.mime_type,
                size: a.size,
                sha256: a.sha256,
            })
            .collect(),
        source,
        other_sources: Vec::new(),
        size,
        tracked_at: String::new(),
        alerts,
    }
}

/// An alert at warning level.
pub fn warning(message: impl Into<String>) -> Alert {
    Alert {
        level: "warning".into(),
        message: message.into(),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! An in-memory [`RecordLookup`] for unit tests.
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
        }
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
