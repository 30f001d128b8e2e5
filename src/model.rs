//! Shared data types that flow between the stages: records, activities, parties, sources.
//!
//! They are plain serde structs so the store can persist them as JSON and the CLI can print
//! them with `--json` without a second set of view types.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Declares an enum whose values are a fixed set of strings, from one table: its text
/// (`as_str`, and `Display`, which pads like a string), its JSON (serde, as that text) and the
/// way back (`from_text`), so that the three cannot disagree.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Its text, as JSON, the CLI and the store's keys have it.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// The value `text` names, if any.
            pub(crate) fn from_text(text: &str) -> Option<$name> {
                match text {
                    $( $text => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                let text = String::deserialize(d)?;
                $name::from_text(&text).ok_or_else(|| {
                    serde::de::Error::unknown_variant(&text, &[$($text),+])
                })
            }
        }
    };
}
pub(crate) use text_enum;

/// A reference to a CRM record, written `type:key` (e.g. `account:acme`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordRef {
    /// The record type, lower case (`account`, `contact`, `systemuser`…).
    pub rtype: String,
    /// The key within the type, as the CRM has it.
    pub key: String,
}

impl RecordRef {
    /// `rtype:key`, taken as given (parse a string to have it checked).
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
    /// The record type, lower case (`type` in JSON and CSV).
    #[serde(rename = "type")]
    pub rtype: String,
    /// The key within the type.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Addresses that resolve a party to this record, lower case.
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
    /// The owner, `systemuser:<key>`.
    pub user: String,
    /// The teams the owner belongs to (from its `systemuser` record).
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

text_enum! {
    /// Whether the mail was sent by the mailbox owner (outgoing) or received (incoming).
    pub enum Direction {
        /// Received by the mailbox owner.
        Incoming = "incoming",
        /// Sent by the mailbox owner.
        Outgoing = "outgoing",
    }
}

/// One address on an activity. `record` is the resolved record (for From: the single best
/// match; for To/Cc/Bcc: the first), `records` all of them. An unresolved party keeps its
/// address only: Dynamics calls that `addressused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Party {
    /// The email address, lower case; `None` for a header without one.
    pub address: Option<String>,
    /// The display name from the header.
    pub name: Option<String>,
    /// The resolved record (`type:key`).
    pub record: Option<String>,
    /// Every record the address resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
}

/// Metadata of one attachment. The bytes themselves are not kept by the foundation slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// The file name, when the message gives one.
    pub name: Option<String>,
    /// The MIME type.
    pub mime_type: String,
    /// Bytes, decoded.
    pub size: u64,
    /// Hex sha256 of the decoded bytes: the key of its blob.
    pub sha256: String,
    /// Why the file was not kept (too large, blocked extension); `None` when its blob is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Where a tracked copy of the message lives on the IMAP server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The mailbox's name in the config.
    pub mailbox: String,
    /// The folder in config form (`/` as separator).
    pub folder: String,
    /// The folder's UIDVALIDITY when the message was read.
    pub uidvalidity: u32,
    /// The message's UID.
    pub uid: u32,
}

/// Something an admin should know: why an activity has (or lacks) its regarding record, or
/// what is wrong with a mailbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// How serious it is.
    pub level: AlertLevel,
    /// What happened and what to do, in a sentence.
    pub message: String,
}

text_enum! {
    /// How serious an [`Alert`] is, as Dynamics' alert types.
    pub enum AlertLevel {
        /// Something failed: a mailbox is disabled, a send failed for good.
        Error = "error",
        /// Something needs a look: a rule's record is missing, a folder is gone.
        Warning = "warning",
        /// For the record: a folder was re-read after a UIDVALIDITY change.
        Info = "info",
    }
}

/// A tracked email: the CRM's email activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// Its number in the store, from 1.
    pub id: u64,
    /// The decoded subject.
    pub subject: Option<String>,
    /// With angle brackets, as Dynamics stores `messageid`.
    pub message_id: Option<String>,
    /// Key used for dedup: the Message-ID, or `sha256:<hex>` of the message minus trace headers.
    pub dedup_key: String,
    /// Sent or received by the mailbox owner.
    pub direction: Direction,
    /// The record it regards (`type:key`), from the folder rule, a correlation or by hand.
    pub regarding: Option<String>,
    /// The sender.
    pub from: Option<Party>,
    /// The To: recipients.
    pub to: Vec<Party>,
    /// The Cc: recipients.
    pub cc: Vec<Party>,
    /// The Bcc: recipients (known on sent mail only).
    pub bcc: Vec<Party>,
    /// RFC 3339, from the Date header; `None` when missing or invalid.
    pub date: Option<String>,
    /// The In-Reply-To Message-ID, with angle brackets.
    pub in_reply_to: Option<String>,
    /// The References Message-IDs, oldest first.
    #[serde(default)]
    pub references: Vec<String>,
    /// Outlook's Thread-Index header, as sent.
    pub thread_index: Option<String>,
    /// The plain-text body (from the HTML part when there is no text part).
    pub body_text: String,
    /// sha256 of the body text when it is kept in the blob packs instead of in the activity:
    /// bodies are most of an activity's bytes, and in sled they made every commit rewrite
    /// large tree nodes (a third of a sync's CPU) and the store's memory grow with its size.
    /// The store's readers put the text back into `body_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_blob: Option<String>,
    /// Every attachment, kept or skipped.
    pub attachments: Vec<AttachmentMeta>,
    /// First source is where it was first tracked; later copies add theirs.
    pub source: Source,
    /// Other copies of the same message (another folder or mailbox) that merged into it.
    #[serde(default)]
    pub other_sources: Vec<Source>,
    /// The raw message's size in bytes.
    pub size: u64,
    /// RFC 3339 time the activity was written.
    pub tracked_at: String,
    /// Why it has (or lacks) its regarding, as Dynamics' tracking alerts.
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
    /// The activity as tracking built it (`id` is given by the store).
    pub activity: Activity,
    /// The folder rule gives no regarding: a correlated activity's regarding is inherited
    /// (DESIGN §4.10), if `writer` may write it.
    pub inherit: bool,
    /// Who links it: the mailbox owner, whose write access the regarding needs.
    pub writer: Writer,
    /// Record to create for an unresolved sender (`unresolved_sender = contact | lead`).
    pub create_sender: Option<Record>,
    /// Other mail under `track_other_mail = replies`: dropped unless it correlates.
    pub only_if_correlated: bool,
    /// `false`: other mail the filter does not want; only the checkpoint moves past it.
    pub keep: bool,
    /// Normalised subject, indexed for smart matching.
    pub subject_key: Option<String>,
    /// The message's flags in the mailbox when it was fetched (with the tracked keyword when
    /// it is about to be written back): the new activity's synced fields (DESIGN §4.15).
    pub seen: Option<CopySeen>,
    /// Its headers mark it important: the new activity's importance is high even where the
    /// mailbox copy has no `$Important`.
    pub high_importance: bool,
}

text_enum! {
    /// What happened to an activity, as its audit trail says it.
    pub enum AuditAction {
        /// Tracked from a message (`new`: its regarding).
        Created = "created",
        /// Its regarding changed (`old` → `new`): a move between folders, a rule changed, set
        /// or cleared by hand, a correlation.
        Relinked = "relinked",
        /// A copy of its message elsewhere was added as a source (`new`: where).
        CopyAdded = "copy added",
        /// Matched to an earlier activity (`new`: how, and which).
        Correlated = "correlated",
        /// Untracked by hand: it stays in the CRM, its message out of tracking where it is.
        Untracked = "untracked",
        /// Tracked again: a copy of its message was dragged into a tracked folder.
        TrackedAgain = "tracked again",
        /// A synced field changed (`field`: which; `old` → `new`), from the side the actor
        /// names: `mailbox:NAME` (a mail client) or `cli:USER` (`activities set`).
        FieldChanged = "field changed",
        /// Deleted from the store (`activities untrack --delete`; `new`: the reason given).
        /// Only the audit trail is left of it.
        Deleted = "deleted",
        /// Both sides changed a synced field since they last agreed: `old` is the value that
        /// lost, `new` the one kept (DESIGN §4.15).
        FieldConflict = "field conflict",
    }
}

text_enum! {
    /// An email activity's importance, as Dynamics has it (low is shown as normal: IMAP's
    /// `$Important` keyword, RFC 8457, has no "low").
    #[derive(Default)]
    pub enum Importance {
        /// No `$Important` keyword.
        #[default]
        Normal = "normal",
        /// `$Important`, or an `Importance: high` header.
        High = "high",
    }
}

/// The fields of an activity that sync with its message's flags in the mailbox (DESIGN §4.15):
/// `read` ↔ `\Seen`, `follow_up` ↔ `\Flagged`, `importance` ↔ `$Important`, `categories` ↔
/// the other keywords.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fields {
    /// Read (`\\Seen`).
    pub read: bool,
    /// Flagged for follow-up (`\\Flagged`).
    pub follow_up: bool,
    /// High or normal (`$Important`).
    pub importance: Importance,
    /// Sorted, without duplicates.
    pub categories: Vec<String>,
}

/// What a copy of an activity's message in a mailbox looked like when foldertrack last saw or
/// wrote it: a change on one side is a difference from this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySeen {
    /// Where the copy is.
    pub source: Source,
    /// Its fields as last seen (or written), where both sides last agreed.
    pub seen: Fields,
    /// The tracked keyword was on it: its removal (in a mail client) untracks.
    pub keyword: bool,
}

/// An activity's synced fields: the CRM's values and each mailbox copy's last seen ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldState {
    /// The CRM's values.
    pub crm: Fields,
    /// Each mailbox copy, as last seen.
    pub copies: Vec<CopySeen>,
}

/// One change to an activity, appended in the transaction that made it and never rewritten:
/// the audit history Dynamics keeps per record, for email activities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The activity.
    pub activity: u64,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Who: `rule:MAILBOX/FOLDER` (tracking, a move), `cli:UNIX-USER` (by hand),
    /// `correlation` (an earlier message found later).
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// The field it changed, if one (`regarding`, `source`, `correlation`).
    pub field: Option<String>,
    /// Its value before.
    pub old: Option<String>,
    /// Its value after.
    pub new: Option<String>,
}

/// How a message was matched to an earlier activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    /// Which header or rule matched.
    pub method: CorrelationMethod,
    /// The earlier activity.
    pub activity: u64,
}

text_enum! {
    /// How a correlation was found (DESIGN §4.10), in Dynamics' order.
    pub enum CorrelationMethod {
        /// Its In-Reply-To is the earlier message's Message-ID.
        InReplyTo = "in-reply-to",
        /// Its References name the earlier message.
        References = "references",
        /// Its subject carries the earlier message's tracking token.
        Token = "token",
        /// Its Outlook Thread-Index extends the earlier message's.
        ThreadIndex = "thread-index",
        /// Same subject words and at least two addresses in common (`smart_matching`).
        Smart = "smart",
    }
}

/// Checkpoint of one folder of one mailbox (DESIGN §3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FolderState {
    pub mailbox: String,
    pub folder: String,
    pub uidvalidity: u32,
    /// Highest UID fully processed (tracked or quarantined).
    pub last_uid: u32,
    /// Server's UIDNEXT at the last sync, for the lag figure in `status`.
    pub uid_next: u32,
    pub messages: u32,
    pub last_sync: Option<String>,
    /// The rule that tracks it (its folder pattern), for `status`.
    pub rule: Option<String>,
    /// The regarding the rule gave at the last pass: when the rule's changes, the messages
    /// still in the folder are re-linked (DESIGN §4.6).
    #[serde(default)]
    pub regarding: Option<String>,
    /// UIDNEXT when a pass over the folder last *completed*: a later STATUS with the same
    /// UIDNEXT and UIDVALIDITY means nothing arrived, and the folder need not be opened.
    #[serde(default)]
    pub synced_uid_next: u32,
    /// The folder's HIGHESTMODSEQ (RFC 7162) that the last flag scan covered, written in the
    /// transaction that applied the changes it found: the next scan asks only for changes
    /// since. 0: no CONDSTORE, or never scanned.
    #[serde(default)]
    pub highest_modseq: u64,
    /// When the flags were last scanned (Unix seconds): without CONDSTORE, a scan reads every
    /// tracked message's flags, so it runs at most every `flag_scan_interval`.
    #[serde(default)]
    pub flags_scanned_at: u64,
}

impl FolderState {
    /// Whether a server's UIDVALIDITY and UIDNEXT for the folder say that nothing arrived
    /// since a pass over it last completed (so it need not be opened).
    pub(crate) fn synced_at(&self, uidvalidity: Option<u32>, uid_next: Option<u32>) -> bool {
        self.synced_uid_next > 0
            && uidvalidity == Some(self.uidvalidity)
            && uid_next == Some(self.synced_uid_next)
    }
}

/// A message that could not be tracked, kept with its raw bytes so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct QuarantineEntry {
    pub id: u64,
    pub source: Source,
    pub reason: String,
    pub size: u64,
    pub at: String,
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

    /// The enums keep the strings the JSON output and the stored data have always had.
    #[test]
    fn levels_and_methods_keep_their_strings() {
        for (l, s) in [
            (AlertLevel::Error, "error"),
            (AlertLevel::Warning, "warning"),
            (AlertLevel::Info, "info"),
        ] {
            assert_eq!(serde_json::to_value(l).unwrap(), s);
            assert_eq!(serde_json::from_value::<AlertLevel>(s.into()).unwrap(), l);
            assert_eq!(
                (l.to_string(), AlertLevel::from_text(s).unwrap()),
                (s.to_string(), l)
            );
            assert_eq!(
                format!("{l:<7}|"),
                format!("{s:<7}|"),
                "padded like the string"
            );
        }
        for (m, s) in [
            (CorrelationMethod::InReplyTo, "in-reply-to"),
            (CorrelationMethod::References, "references"),
            (CorrelationMethod::Token, "token"),
            (CorrelationMethod::ThreadIndex, "thread-index"),
            (CorrelationMethod::Smart, "smart"),
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), s);
            assert_eq!(
                serde_json::from_value::<CorrelationMethod>(s.into()).unwrap(),
                m
            );
            assert_eq!(
                (m.to_string(), CorrelationMethod::from_text(s).unwrap()),
                (s.to_string(), m)
            );
        }
        assert!(serde_json::from_value::<AlertLevel>("fatal".into()).is_err());
    }
}
