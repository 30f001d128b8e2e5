//! Shared data types that flow between the stages: records, activities, parties, sources.
//!
//! They are plain serde structs so the store can persist them as JSON and the CLI can print
//! them with `--json` without a second set of view types.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A reference to a CRM record, written `type:key` (e.g. `account:acme`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordRef {
    pub rtype: String,
    pub key: String,
}

impl RecordRef {
    pub fn new(rtype: impl Into<String>, key: impl Into<String>) -> Self {
        RecordRef {
            rtype: rtype.into(),
            key: key.into(),
        }
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.rtype, self.key)
    }
}

impl FromStr for RecordRef {
    type Err = String;
    /// Parses `type:key`; the type is lower-cased (types are identifiers), the key kept as given.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, k) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` is not a record reference: write it as type:key, e.g. account:acme")
        })?;
        let t = t.trim();
        let k = k.trim();
        if t.is_empty() || k.is_empty() {
            return Err(format!(
                "`{s}` is not a record reference: both type and key must be non-empty (type:key)"
            ));
        }
        if !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "record type `{t}` may only hold letters, digits and `_`"
            ));
        }
        if k.chars().any(char::is_control) {
            return Err(format!("record key `{}` holds a control character (CR, LF, NUL…); keys are single-line text", k.escape_debug()));
        }
        Ok(RecordRef::new(t.to_ascii_lowercase(), k))
    }
}

impl TryFrom<String> for RecordRef {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RecordRef> for String {
    fn from(r: RecordRef) -> String {
        r.to_string()
    }
}

/// A CRM row: systemuser, contact, account, lead, or any type the admin imports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    #[serde(rename = "type")]
    pub rtype: String,
    pub key: String,
    pub name: String,
    #[serde(default)]
    pub emails: Vec<String>,
    /// `systemuser:<key>` of the owning user; `None` for records owned by nobody in particular.
    #[serde(default)]
    pub owner: Option<String>,
    /// Writable by every user (DESIGN §4.11).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// For a user: the teams it belongs to. For any other record: the teams that may write it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
}

/// Who links mail to records: a mailbox's owner and the teams it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Writer {
    pub user: String,
    pub teams: Vec<String>,
}

impl Writer {
    /// Whether this user may link mail to `r` (DESIGN §4.11): it owns it, the record is shared
    /// or owned by nobody, or a team of the user's may write it.
    pub(crate) fn can_write(&self, r: &Record) -> bool {
        r.owner.is_none()
            || r.owner.as_deref() == Some(self.user.as_str())
            || r.shared
            || r.teams.iter().any(|t| self.teams.contains(t))
    }
}

impl Record {
    pub(crate) fn reference(&self) -> RecordRef {
        RecordRef::new(self.rtype.clone(), self.key.clone())
    }
}

/// Whether the mail was sent by the mailbox owner (outgoing) or received (incoming).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Incoming,
    Outgoing,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// One address on an activity. `record` is the resolved record (for From: the single best
/// match; for To/Cc/Bcc: the first), `records` all of them. An unresolved party keeps its
/// address only: Dynamics calls that `addressused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Party {
    pub address: Option<String>,
    pub name: Option<String>,
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
}

/// Metadata of one attachment. The bytes themselves are not kept by the foundation slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub name: Option<String>,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
    /// Why the file was not kept (too large, blocked extension); `None` when its blob is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Where a tracked copy of the message lives on the IMAP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub mailbox: String,
    /// The folder in config form (`/` as separator).
    pub folder: String,
    pub uidvalidity: u32,
    pub uid: u32,
}

/// Why an activity has (or lacks) its regarding record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub level: String,
    pub message: String,
}

/// A tracked email: the CRM's email activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub id: u64,
    pub subject: Option<String>,
    /// With angle brackets, as Dynamics stores `messageid`.
    pub message_id: Option<String>,
    /// Key used for dedup: the Message-ID, or `sha256:<hex>` of the message minus trace headers.
    pub dedup_key: String,
    pub direction: Direction,
    pub regarding: Option<String>,
    pub from: Option<Party>,
    pub to: Vec<Party>,
    pub cc: Vec<Party>,
    pub bcc: Vec<Party>,
    /// RFC 3339, from the Date header; `None` when missing or invalid.
    pub date: Option<String>,
    pub in_reply_to: Option<String>,
    #[serde(default)]
    pub references: Vec<String>,
    pub thread_index: Option<String>,
    pub body_text: String,
    /// sha256 of the body text when it is kept in the blob packs instead of in the activity:
    /// bodies are most of an activity's bytes, and in sled they made every commit rewrite
    /// large tree nodes (a third of a sync's CPU) and the store's memory grow with its size.
    /// The store's readers put the text back into `body_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_blob: Option<String>,
    pub attachments: Vec<AttachmentMeta>,
    /// First source is where it was first tracked; later copies add theirs.
    pub source: Source,
    #[serde(default)]
    pub other_sources: Vec<Source>,
    pub size: u64,
    /// RFC 3339 time the activity was written.
    pub tracked_at: String,
    #[serde(default)]
    pub alerts: Vec<Alert>,
    /// The earlier activity this one was correlated to, and how (DESIGN §4.10).
    #[serde(default)]
    pub correlation: Option<Correlation>,
    /// The tracking token found in the subject (e.g. `CRM:0001002`).
    #[serde(default)]
    pub token: Option<String>,
    /// Its folder rule gave no regarding, so a correlated activity's regarding may be inherited,
    /// also when the earlier message is tracked after this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inherits: bool,
}

/// A tracked message on its way into the store: the activity, and what the store's transaction
/// must still decide for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    pub activity: Activity,
    /// The folder rule gives no regarding: a correlated activity's regarding is inherited
    /// (DESIGN §4.10), if `writer` may write it.
    pub inherit: bool,
    pub writer: Writer,
    /// Record to create for an unresolved sender (`unresolved_sender = contact | lead`).
    pub create_sender: Option<Record>,
    /// Other mail under `track_other_mail = replies`: dropped unless it correlates.
    pub only_if_correlated: bool,
    /// `false`: other mail the filter does not want; only the checkpoint moves past it.
    pub keep: bool,
    /// Normalised subject, indexed for smart matching.
    pub subject_key: Option<String>,
}

/// How a message was matched to an earlier activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    /// `in-reply-to`, `references`, `token`, `thread-index` or `smart`.
    pub method: String,
    pub activity: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ref_round_trips_and_rejects_garbage() {
        let r: RecordRef = "Account:Acme Corp".parse().unwrap();
        assert_eq!(r.rtype, "account");
        assert_eq!(r.key, "Acme Corp");
        assert_eq!(r.to_string(), "account:Acme Corp");
        assert!("acme".parse::<RecordRef>().is_err());
        assert!(":acme".parse::<RecordRef>().is_err());
        assert!("acc ount:x".parse::<RecordRef>().is_err());
        assert!(
            "contact:a\r\nb".parse::<RecordRef>().is_err(),
            "no CRLF in keys"
        );
    }
}
