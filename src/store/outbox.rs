//! The outbox (DESIGN §5 `outbox` tree): email activities created in the CRM, on their way out
//! through the mailbox's SMTP server.
//!
//! An entry is keyed by its activity id and is the one place that says where the send stands.
//! The activity and its entry are written in one transaction (an activity never exists without
//! its entry, nor the reverse), and every change of state is flushed before anything outside the
//! store happens next: `Sending` is durable before the first SMTP byte, `Sent` before the Sent
//! copy is appended. So a crash leaves an entry in a state that says what may have happened.

use super::{dec, enc, keys, next_id, now, BatchOutcome, Result, Store, StoreError};
use crate::model::{Draft, Source};
use crate::track::batch::apply_activity;
use crate::track::tx::Engine;
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

impl Store {
    /// Writes a new outgoing activity and its outbox entry in one transaction, then flushes.
    /// The activity gets a pseudo source in [`OUTBOX_FOLDER`]; the Sent copy, once tracked,
    /// merges into it by Message-ID like any other copy. Returns the activity id, which the
    /// stored entry's `activity` holds.
    pub(crate) fn enqueue_outgoing(&self, draft: &Draft, entry: &OutboxEntry) -> Result<u64> {
        self.ensure_space(draft.activity.body_text.len() as u64 + 8192)?;
        self.sync_pack()?;
        let at = now();
        let id = Engine::transaction(self, |tx| {
            let mut out = BatchOutcome::default();
            let mut created = Vec::new();
            apply_activity(tx, draft, &at, &entry.mailbox, &mut out, &mut created)?;
            let Some(a) = created.first() else {
                return Err(StoreError::NotFound(format!(
                    "message {} is already tracked: nothing queued",
                    entry.message_id
                )));
            };
            let mut e = entry.clone();
            e.activity = a.id;
            tx.put_outbox(&e)?;
            Ok(a.id)
        })?;
        self.flush()?;
        Ok(id)
    }

    /// A fresh pseudo source for an activity created in the CRM.
    pub(crate) fn outbox_source(&self, mailbox: &str) -> Result<Source> {
        let n = self
            .t
            .meta
            .update_and_fetch("next_outbox_uid", |v| {
                let cur = v.map(keys::u64_of).unwrap_or(0);
                Some((cur + 1).to_be_bytes().to_vec())
            })?
            .map(|v| keys::u64_of(&v))
            .unwrap_or(1);
        Ok(Source {
            mailbox: mailbox.to_string(),
            folder: OUTBOX_FOLDER.to_string(),
            uidvalidity: 0,
            uid: u32::try_from(n % u64::from(u32::MAX)).unwrap_or(u32::MAX),
        })
    }

    /// The next tracking token number for `user` (a `systemuser:key`): its user number
    /// (assigned on its first send, then fixed, as Dynamics numbers users) and its counter.
    /// Durable before it is used, so a token is never handed out twice by a crash.
    pub(crate) fn next_token_numbers(&self, user: &str) -> Result<(u32, u64)> {
        let ukey = format!("token_user:{user}");
        let ckey = format!("token_counter:{user}");
        let (u, c) = Engine::transaction(self, |tx| {
            let u = match tx.meta.get(ukey.as_bytes())? {
                Some(v) => keys::u64_of(&v),
                None => {
                    let u = next_id(tx.meta, "token_users")?;
                    tx.meta.insert(ukey.as_bytes(), &u.to_be_bytes())?;
                    u
                }
            };
            Ok((u, next_id(tx.meta, &ckey)?))
        })?;
        self.flush()?;
        Ok((u32::try_from(u).unwrap_or(u32::MAX), c))
    }

    pub(crate) fn outbox_entry(&self, activity: u64) -> Result<Option<OutboxEntry>> {
        self.t
            .outbox
            .get(activity.to_be_bytes())?
            .map(|v| dec("outbox", &v))
            .transpose()
    }

    /// Every entry, oldest first.
    pub(crate) fn outbox_entries(&self) -> Result<Vec<OutboxEntry>> {
        self.t
            .outbox
            .iter()
            .map(|kv| {
                let (_, v) = kv?;
                dec("outbox", &v)
            })
            .collect()
    }

    /// Each mailbox's outbox at a glance, in one pass over the entries (for `status` and the
    /// metrics).
    pub(crate) fn outbox_summary(&self) -> Result<BTreeMap<String, OutboxSummary>> {
        let mut out: BTreeMap<String, OutboxSummary> = BTreeMap::new();
        for e in self.outbox_entries()? {
            let s = out.entry(e.mailbox.clone()).or_default();
            *s.counts.entry(e.state).or_default() += 1;
            // Authentication failures keep a message queued (smtp::SmtpError::Auth).
            s.login_stuck |= e.state == SendState::Queued
                && e.last_error.as_deref().is_some_and(|m| m.contains("login"));
        }
        Ok(out)
    }

    /// Replaces an entry (it must exist) and flushes: every state change is durable before the
    /// caller acts on it.
    pub(crate) fn put_outbox_entry(&self, e: &OutboxEntry) -> Result<()> {
        if !self.t.outbox.contains_key(e.activity.to_be_bytes())? {
            return Err(StoreError::NotFound(format!(
                "activity {} is not in the outbox",
                e.activity
            )));
        }
        self.t.outbox.insert(e.activity.to_be_bytes(), enc(e))?;
        self.flush()
    }
}
