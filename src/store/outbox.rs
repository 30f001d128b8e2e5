//! The outbox (DESIGN §5 `outbox` tree): email activities created in the CRM, on their way out
//! through the mailbox's SMTP server.
//!
//! An entry is keyed by its activity id and is the one place that says where the send stands.
//! The activity and its entry are written in one transaction (an activity never exists without
//! its entry, nor the reverse), and every change of state is flushed before anything outside the
//! store happens next: `Sending` is durable before the first SMTP byte, `Sent` before the Sent
//! copy is appended. So a crash leaves an entry in a state that says what may have happened.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Folder name of the pseudo source of an activity created in the CRM (it has no IMAP copy
/// until the Sent copy is appended and tracked). Not a valid IMAP folder name in config form.
pub(crate) const OUTBOX_FOLDER: &str = "@outbox";

/// Where a send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SendState {
    /// Waiting for its (next) attempt at `next_attempt`.
    Queued,
    /// An attempt is under way. Found at start-up, it means a process stopped mid-send.
    Sending,
    /// The server accepted it.
    Sent,
    /// The server refused it for good (5xx), or retries gave up.
    Failed,
    /// A process stopped while the server was taking the message, and its Message-ID is not
    /// in the Sent folder: it may have gone out. Never sent again without `outbox retry`.
    Unknown,
    /// Cancelled by an admin before it went out.
    Cancelled,
}

impl SendState {
    pub(crate) const ALL: [SendState; 6] = [
        SendState::Queued,
        SendState::Sending,
        SendState::Sent,
        SendState::Failed,
        SendState::Unknown,
        SendState::Cancelled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SendState::Queued => "queued",
            SendState::Sending => "sending",
            SendState::Sent => "sent",
            SendState::Failed => "failed",
            SendState::Unknown => "unknown",
            SendState::Cancelled => "cancelled",
        }
    }
}

/// One outgoing email activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub activity: u64,
    pub mailbox: String,
    /// With angle brackets.
    pub message_id: String,
    /// The message as sent (and as appended to Sent), in the blob store.
    pub raw_sha256: String,
    pub raw_size: u64,
    /// SMTP envelope.
    pub from: String,
    pub recipients: Vec<String>,
    pub state: SendState,
    pub attempts: u32,
    /// Unix seconds.
    pub queued_at: i64,
    /// Unix seconds; only meaningful while `Queued`.
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub sent_at: Option<String>,
    /// The server's answer to the message (`250 2.0.0 Ok: queued as …`).
    pub server_reply: Option<String>,
    /// The folder the sent copy is in (appended by us, or found there); `None` until then.
    pub sent_copy: Option<String>,
    /// Why the sent copy could not be appended yet (retried with the queue).
    pub copy_error: Option<String>,
}

/// One mailbox's outbox: entries by state, and whether a queued one waits on a refused login.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OutboxSummary {
    pub counts: BTreeMap<SendState, usize>,
    pub login_stuck: bool,
}

impl OutboxEntry {
    /// Whether the queue has something left to do for it, now or later: a send, an interrupted
    /// send to settle, or the Sent copy.
    pub(crate) fn is_pending(&self) -> bool {
        match self.state {
            SendState::Queued | SendState::Sending => true,
            SendState::Sent => self.sent_copy.is_none(),
            _ => false,
        }
    }

    /// Whether the queue has something to do for it now.
    pub(crate) fn is_due(&self, now: i64) -> bool {
        match self.state {
            SendState::Queued => self.next_attempt <= now,
            SendState::Sent => self.sent_copy.is_none() && self.next_attempt <= now,
            _ => false,
        }
    }
}
