//! Outgoing email activities (DESIGN §2 "smtp ◄─ activities send ─► outbox"): compose with
//! lettre, queue, send, append the Sent copy, retry, recover after a crash.
//!
//! The order of durable steps is what makes "nothing lost, nothing sent twice" hold:
//!
//! 1. **enqueue**: the activity (state `queued`) and its outbox entry, with the message bytes
//!    in the blob store, are committed and flushed before any network traffic. A send that
//!    cannot start yet loses nothing.
//! 2. **attempt**: the entry becomes `sending` (flushed), then the SMTP transaction runs.
//!    A 250 makes it `sent` (flushed) before anything else; a 5xx makes it `failed` with the
//!    server's words; anything else re-queues it with exponential backoff.
//! 3. **Sent copy**: appended to the mailbox's Sent folder (`\Seen`) after `sent` is durable;
//!    a failed append is retried with the queue and never re-sends the message.
//! 4. **recovery**: an entry found `sending` when no attempt is running means a process died
//!    mid-send. Its Message-ID is looked up in the Sent folder (servers such as Gmail and
//!    Exchange file a copy themselves; so do we, right after the 250): found, it is `sent`.
//!    Not found, it is `unknown`, because the server may have taken the message just before
//!    the crash, and it is **not** sent again without an admin's `outbox retry`. At most once,
//!    by design: a duplicate to a customer is worse than a question to the admin.
//!
//! The watcher then tracks the Sent copy like any Sent mail; it has the activity's
//! Message-ID, so it merges into the activity (adding its IMAP source) instead of doubling it.

use crate::config::{Config, MailboxConfig};
use crate::imap::fetch::RawMessage;
use crate::model::{Alert, AlertLevel, RecordRef};
use crate::smtp::{self, SmtpError};
use crate::store::{BatchItem, OutboxEntry, SendState, Store, StoreError, OUTBOX_FOLDER};
use crate::track::{self, FolderContext};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::Message;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest message `activities send` composes (all attachments together, before encoding).
pub(crate) const MAX_OUTGOING_BYTES: usize = 25 * 1024 * 1024;

/// One attempt at a time per process: a request served by the agent and the agent's own queue
/// runner must not both work on an entry, and an entry seen `sending` while this is held is
/// one whose process died.
static SEND_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What `activities send` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The mailbox it is sent from.
    pub mailbox: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// The subject, before the tracking token is appended.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// An HTML alternative of the body.
    #[serde(default)]
    pub html: Option<String>,
    /// Files to attach.
    #[serde(default)]
    pub attachments: Vec<OutgoingAttachment>,
    /// The record the activity regards (`type:key`).
    pub regarding: String,
}

/// A file to attach; read by the CLI so that a request served by the agent carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingAttachment {
    /// The file name the recipient sees.
    pub name: String,
    /// MIME type, from the file's extension.
    pub content_type: String,
    /// Standard base64.
    pub data: String,
}

/// Why a send could not be queued or changed. `Usage` ones are the caller's mistakes (exit 2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("composing the message: {0}")]
    Compose(String),
}

fn usage(m: impl Into<String>) -> OutboxError {
    OutboxError::Usage(m.into())
}

/// Checks the request, composes the message (token in the subject, Message-ID, Date) and
/// writes the queued activity with its outbox entry. Nothing is sent yet.
pub(crate) fn enqueue(
    config: &Config,
    store: &Store,
    req: &Outgoing,
) -> Result<OutboxEntry, OutboxError> {
    let mb = config.mailbox(&req.mailbox).ok_or_else(|| {
        usage(format!(
            "no mailbox named `{}` in {}",
            req.mailbox,
            config.path.display()
        ))
    })?;
    if mb.smtp.is_none() {
        return Err(usage(format!(
            "mailbox `{}` has no SMTP settings: add an [smtp] table (or [mailbox.smtp]) to {}",
            mb.name,
            config.path.display()
        )));
    }
    let address = mb.address.clone().ok_or_else(|| {
        usage(format!(
            "mailbox `{}` has no address to send from: set address = \"…\"",
            mb.name
        ))
    })?;
    if req.to.is_empty() {
        return Err(usage("give at least one recipient with --to"));
    }
    let regarding: RecordRef = req.regarding.parse().map_err(usage)?;
    let writer = track::writer_of(mb, store);
    match store.record(&regarding)? {
        None => {
            return Err(usage(format!(
                "no record {regarding}: import or add it first (`records add`)"
            )))
        }
        Some(r) if !writer.can_write(&r) => {
            return Err(usage(format!(
                "{} may not write {regarding} (owner {}): share it or give it a team of the user's",
                writer.user,
                r.owner.as_deref().unwrap_or("-")
            )))
        }
        Some(_) => {}
    }
    let owner_name = store.record(&mb.owner)?.map(|r| r.name);
    let (user_no, n) = store.next_token_numbers(&mb.owner.to_string())?;
    let token = mb.crm.token.make(user_no, n);
    let subject = mb.crm.token.append(&req.subject, &token);
    let message_id = new_message_id(&address);
    let msg = compose(req, owner_name, &address, &subject, &message_id)?;
    let raw = msg.formatted();
    let envelope = msg.envelope();
    let recipients: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();

    // Track the composed bytes exactly as the watcher will track their Sent copy: same parser,
    // same parties, same token and dedup key, so the copy merges into this activity.
    let ctx = FolderContext {
        mailbox: mb,
        folder: OUTBOX_FOLDER.to_string(),
        is_sent: true,
        rule: None,
        other: None,
        writer,
    };
    let source = store.outbox_source(&mb.name)?;
    let size = raw.len() as u64;
    let item = crate::sync::track_one(
        &RawMessage {
            uid: source.uid,
            size,
            raw: raw.clone(),
            flags: None,
        },
        &ctx,
        source,
        store,
        store,
    );
    let mut draft = match item {
        BatchItem::Tracked(d) => d,
        BatchItem::Quarantined { reason, .. } => {
            return Err(OutboxError::Compose(format!(
                "the composed message does not track: {reason}"
            )))
        }
    };
    draft.activity.regarding = Some(regarding.to_string());
    draft.keep = true;
    draft.inherit = false;
    draft.only_if_correlated = false;
    draft.create_sender = None;

    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw));
    store.put_blob(&sha, &raw)?;
    let now = unix_now();
    let mut entry = OutboxEntry {
        activity: 0,
        mailbox: mb.name.clone(),
        message_id: message_id.clone(),
        raw_sha256: sha,
        raw_size: size,
        from: address,
        recipients,
        state: SendState::Queued,
        attempts: 0,
        queued_at: now,
        next_attempt: now,
        last_error: None,
        sent_at: None,
        server_reply: None,
        sent_copy: None,
        copy_error: None,
    };
    entry.activity = store.enqueue_outgoing(&draft, &entry)?;
    tracing::info!(mailbox = %mb.name, activity = entry.activity, %message_id, "outgoing email queued");
    Ok(entry)
}

/// `<hex.hex@domain>`: unique without a random-number crate (time, pid and a counter, hashed).
fn new_message_id(address: &str) -> String {
    use sha2::Digest;
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let h = sha2::Sha256::digest(format!("{nanos}.{}.{seq}.{address}", std::process::id()));
    let domain = address.rsplit_once('@').map_or("localhost", |(_, d)| d);
    format!("<{}.ft@{domain}>", hex::encode(&h[..12]))
}

fn compose(
    req: &Outgoing,
    from_name: Option<String>,
    address: &str,
    subject: &str,
    message_id: &str,
) -> Result<Message, OutboxError> {
    let mailbox = |s: &str, what: &str| -> Result<Mailbox, OutboxError> {
        s.parse::<Mailbox>()
            .map_err(|e| usage(format!("{what} `{s}` is not an email address: {e}")))
    };
    let from = Mailbox::new(
        from_name,
        address
            .parse()
            .map_err(|e| usage(format!("mailbox address `{address}`: {e}")))?,
    );
    let mut b = Message::builder()
        .from(from)
        .subject(subject)
        .message_id(Some(message_id.to_string()))
        .date_now()
        .user_agent(format!("foldertrack/{}", env!("CARGO_PKG_VERSION")));
    for t in &req.to {
        b = b.to(mailbox(t, "--to")?);
    }
    for c in &req.cc {
        b = b.cc(mailbox(c, "--cc")?);
    }
    // The text alone, or text and HTML as alternatives; with attachments, that first in a mixed.
    let text = SinglePart::plain(req.text.clone());
    let alternative = req
        .html
        .as_ref()
        .map(|html| MultiPart::alternative_plain_html(req.text.clone(), html.clone()));
    let mut total = req.text.len() + req.html.as_ref().map_or(0, String::len);
    let msg = if req.attachments.is_empty() {
        match alternative {
            Some(alt) => b.multipart(alt),
            None => b.singlepart(text),
        }
    } else {
        let mut mixed = match alternative {
            Some(alt) => MultiPart::mixed().multipart(alt),
            None => MultiPart::mixed().singlepart(text),
        };
        for a in &req.attachments {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&a.data)
                .map_err(|e| usage(format!("attachment {}: bad base64: {e}", a.name)))?;
            total += data.len();
            let ct = ContentType::parse(&a.content_type).map_err(|e| {
                usage(format!(
                    "attachment {}: content type `{}`: {e}",
                    a.name, a.content_type
                ))
            })?;
            mixed = mixed.singlepart(Attachment::new(a.name.clone()).body(data, ct));
        }
        b.multipart(mixed)
    };
    if total > MAX_OUTGOING_BYTES {
        return Err(usage(format!(
            "the message is {total} bytes; at most {MAX_OUTGOING_BYTES} can be sent"
        )));
    }
    msg.map_err(|e| OutboxError::Compose(e.to_string()))
}

fn unix_now() -> i64 {
    crate::time::unix_now()
}

/// Backoff before attempt `attempts + 1`: `initial · 2^(attempts-1)` up to `max`, ±20 %.
fn backoff(policy: &crate::config::RetryPolicy, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = policy
        .initial
        .saturating_mul(1u32 << exp)
        .min(policy.max)
        .as_secs_f64();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    Duration::from_secs_f64((base * jitter).max(1.0))
}

/// Sends one entry now if it is queued (or completes its Sent copy), under the process's send
/// lock. Returns the entry as it ends up.
pub(crate) async fn attempt(
    config: &Config,
    store: &Store,
    id: u64,
) -> Result<OutboxEntry, OutboxError> {
    let _one = SEND_LOCK.lock().await;
    attempt_locked(config, store, id).await
}

async fn attempt_locked(
    config: &Config,
    store: &Store,
    id: u64,
) -> Result<OutboxEntry, OutboxError> {
    let mut e = store
        .outbox_entry(id)?
        .ok_or_else(|| usage(format!("activity {id} is not in the outbox")))?;
    let Some(mb) = config.mailbox(&e.mailbox) else {
        return Ok(e);
    };
    let Some(cfg) = &mb.smtp else {
        return Ok(e);
    };
    match e.state {
        SendState::Queued => {}
        SendState::Sent if e.sent_copy.is_none() => {
            let raw = load_raw(store, &e)?;
            sent_copy(mb, store, &mut e, &raw).await?;
            return Ok(e);
        }
        _ => return Ok(e),
    }
    let raw = load_raw(store, &e)?;
    let envelope = envelope(&e).map_err(OutboxError::Compose)?;
    e.state = SendState::Sending;
    e.attempts += 1;
    store.put_outbox_entry(&e)?;
    let result = smtp::send(cfg, &envelope, &raw).await;
    match result {
        Ok(reply) => {
            #[cfg(feature = "failpoints")]
            if std::env::var_os("FOLDERTRACK_FAIL_AFTER_DATA").is_some() {
                // The reliability test's crash: the server has the message, we have not
                // recorded it.
                eprintln!("failpoint FOLDERTRACK_FAIL_AFTER_DATA: aborting after the SMTP 250");
                std::process::abort();
            }
            e.state = SendState::Sent;
            e.sent_at = Some(crate::time::humantime_now());
            e.server_reply = Some(reply);
            e.last_error = None;
            store.put_outbox_entry(&e)?;
            tracing::info!(mailbox = %e.mailbox, activity = e.activity, "email sent");
            sent_copy(mb, store, &mut e, &raw).await?;
        }
        Err(err) => {
            let now = unix_now();
            let gave_up = now - e.queued_at >= cfg.retry.give_up_after.as_secs() as i64;
            if err.is_final() || gave_up {
                e.state = SendState::Failed;
                e.last_error = Some(if err.is_final() {
                    err.to_string()
                } else {
                    format!(
                        "gave up after {} attempts over {} s (give_up_after): {err}",
                        e.attempts,
                        now - e.queued_at
                    )
                });
                store.add_alert(
                    &e.mailbox,
                    Alert {
                        level: AlertLevel::Error,
                        message: format!("email activity {} was not sent: {err}", e.activity),
                    },
                )?;
                tracing::warn!(mailbox = %e.mailbox, activity = e.activity, error = %err, "send failed for good");
            } else {
                e.state = SendState::Queued;
                e.next_attempt = now + backoff(&cfg.retry, e.attempts).as_secs() as i64;
                e.last_error = Some(err.to_string());
                if let SmtpError::Auth { .. } | SmtpError::Config { .. } = err {
                    store.add_alert(
                        &e.mailbox,
                        Alert {
                            level: AlertLevel::Error,
                            message: format!("outgoing mail is stuck: {err}"),
                        },
                    )?;
                }
                tracing::warn!(mailbox = %e.mailbox, activity = e.activity, error = %err, retry_in_s = e.next_attempt - now, "send deferred");
            }
            store.put_outbox_entry(&e)?;
        }
    }
    Ok(e)
}

fn load_raw(store: &Store, e: &OutboxEntry) -> Result<Vec<u8>, OutboxError> {
    store.blob(&e.raw_sha256)?.ok_or_else(|| {
        OutboxError::Store(StoreError::NotFound(format!(
            "the message of activity {} is missing from the blob store",
            e.activity
        )))
    })
}

fn envelope(e: &OutboxEntry) -> Result<lettre::address::Envelope, String> {
    let from = e
        .from
        .parse()
        .map_err(|err| format!("sender {}: {err}", e.from))?;
    let to = e
        .recipients
        .iter()
        .map(|r| r.parse().map_err(|err| format!("recipient {r}: {err}")))
        .collect::<Result<Vec<_>, _>>()?;
    lettre::address::Envelope::new(Some(from), to).map_err(|err| err.to_string())
}

/// Appends the sent message to the mailbox's Sent folder, `\Seen`. A failure is kept on the
/// entry and retried with the queue (after a backoff); the message itself is never re-sent.
async fn sent_copy(
    mb: &MailboxConfig,
    store: &Store,
    e: &mut OutboxEntry,
    raw: &[u8],
) -> Result<(), OutboxError> {
    match append_to_sent(mb, raw, &e.message_id).await {
        Ok(folder) => {
            e.sent_copy = Some(folder);
            e.copy_error = None;
        }
        Err(err) => {
            tracing::warn!(mailbox = %mb.name, activity = e.activity, error = %err, "could not append the Sent copy; will retry");
            e.copy_error = Some(err);
            e.next_attempt = unix_now() + 60;
        }
    }
    store.put_outbox_entry(e)?;
    Ok(())
}

/// Appends the Sent copy unless the Sent folder has a message of this Message-ID already, so
/// that running it twice (a retry, or an old owner of the mailbox that woke up late, DESIGN
/// §5.2) leaves one copy.
async fn append_to_sent(
    mb: &MailboxConfig,
    raw: &[u8],
    message_id: &str,
) -> Result<String, String> {
    let mut c = crate::imap::connect(mb).await.map_err(|e| e.to_string())?;
    let sent = sent_folder(mb, &mut c)
        .await?
        .ok_or("the mailbox has no Sent folder (no SPECIAL-USE \\Sent, no folder called Sent; set sent_folder)")?;
    if !search_sent(&mut c, &sent, message_id).await? {
        crate::imap::timed(
            &c.peer,
            "APPEND to Sent",
            c.session
                .append(&sent.server_name, Some("(\\Seen)"), None, raw),
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let _ = c.session.logout().await;
    Ok(sent.name)
}

/// The mailbox's Sent folder (SPECIAL-USE `\Sent`, a folder called Sent, or `sent_folder`).
async fn sent_folder(
    mb: &MailboxConfig,
    c: &mut crate::imap::Connected,
) -> Result<Option<crate::imap::folders::Folder>, String> {
    let folders = crate::imap::folders::list(&mut c.session, &c.peer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(crate::imap::folders::find_sent(&folders, mb.sent_folder.as_deref()).cloned())
}

/// Whether `sent` holds a message of this Message-ID.
async fn search_sent(
    c: &mut crate::imap::Connected,
    sent: &crate::imap::folders::Folder,
    message_id: &str,
) -> Result<bool, String> {
    crate::imap::fetch::examine(&mut c.session, &c.peer, &sent.server_name, &sent.name)
        .await
        .map_err(|e| e.to_string())?;
    let query = format!(
        "HEADER Message-ID {}",
        crate::imap::quote_checked(message_id.trim()).map_err(|e| e.to_string())?
    );
    let found = crate::imap::timed(&c.peer, "UID SEARCH", c.session.uid_search(&query))
        .await
        .map_err(|e| e.to_string())?;
    Ok(!found.is_empty())
}

/// Looks for `message_id` in the Sent folder: the folder's name when a copy is there.
async fn find_in_sent(mb: &MailboxConfig, message_id: &str) -> Result<Option<String>, String> {
    let mut c = crate::imap::connect(mb).await.map_err(|e| e.to_string())?;
    let Some(sent) = sent_folder(mb, &mut c).await? else {
        return Ok(None);
    };
    let found = search_sent(&mut c, &sent, message_id).await?;
    let _ = c.session.logout().await;
    Ok(found.then_some(sent.name))
}

/// Settles an entry left `sending` by a process that died mid-send (see the module doc); any
/// other entry comes back as it is. Call with no attempt running in this process; [`run_due`]
/// does.
async fn settle_interrupted(
    config: &Config,
    store: &Store,
    mut e: OutboxEntry,
) -> Result<OutboxEntry, OutboxError> {
    if e.state != SendState::Sending {
        return Ok(e);
    }
    let Some(mb) = config.mailbox(&e.mailbox) else {
        return Ok(e);
    };
    match find_in_sent(mb, &e.message_id).await {
        Ok(Some(folder)) => {
            e.state = SendState::Sent;
            e.sent_copy = Some(folder.clone());
            e.server_reply = Some(format!("found in {folder} after a restart"));
            e.sent_at.get_or_insert_with(crate::time::humantime_now);
            tracing::info!(activity = e.activity, %folder, "interrupted send found in Sent: marked sent");
        }
        Ok(None) => {
            e.state = SendState::Unknown;
            e.last_error = Some(
                "foldertrack stopped while the SMTP server was taking this message and its \
                 Message-ID is not in the Sent folder: it may have been delivered. It is not \
                 sent again automatically; check with the recipient, then `outbox retry` \
                 or `outbox cancel`"
                    .into(),
            );
            store.add_alert(
                &e.mailbox,
                Alert {
                    level: AlertLevel::Warning,
                    message: format!(
                        "email activity {} may or may not have been sent (interrupted); see `outbox list`",
                        e.activity
                    ),
                },
            )?;
            tracing::warn!(
                activity = e.activity,
                "interrupted send not found in Sent: state unknown, not re-sent"
            );
        }
        Err(err) => {
            // Cannot look now (IMAP down): leave it `sending`, look again next round.
            tracing::warn!(activity = e.activity, error = %err, "cannot check the Sent folder for an interrupted send yet");
            return Ok(e);
        }
    }
    store.put_outbox_entry(&e)?;
    Ok(e)
}

/// One round of the queue, in one pass over the entries: settle interrupted sends, attempt
/// every due entry. Returns when the next entry will be due (unix seconds), if any.
pub(crate) async fn run_due(config: &Config, store: &Store) -> Result<Option<i64>, OutboxError> {
    let _one = SEND_LOCK.lock().await;
    let now = unix_now();
    let mut next: Option<i64> = None;
    for e in store.outbox_entries()? {
        // With several agents, each sends its own mailboxes' mail (the claim is fenced too).
        if !store.holds(&e.mailbox) {
            continue;
        }
        let mut e = settle_interrupted(config, store, e).await?;
        if e.is_due(now) {
            e = attempt_locked(config, store, e.activity).await?;
        }
        if e.is_pending() {
            next = Some(next.map_or(e.next_attempt, |n| n.min(e.next_attempt)));
        }
    }
    Ok(next)
}

/// `outbox retry ID`: queue a failed, unknown or waiting entry for an attempt now.
pub(crate) fn retry(store: &Store, id: u64) -> Result<OutboxEntry, OutboxError> {
    let mut e = store
        .outbox_entry(id)?
        .ok_or_else(|| usage(format!("activity {id} is not in the outbox")))?;
    match e.state {
        SendState::Queued | SendState::Failed | SendState::Unknown | SendState::Cancelled => {
            e.state = SendState::Queued;
            e.next_attempt = unix_now();
            store.put_outbox_entry(&e)?;
            Ok(e)
        }
        SendState::Sent if e.sent_copy.is_none() => {
            e.next_attempt = unix_now();
            store.put_outbox_entry(&e)?;
            Ok(e)
        }
        s => Err(usage(format!(
            "activity {id} is {}: nothing to retry",
            s.as_str()
        ))),
    }
}

/// `outbox cancel ID`: an entry that has not gone out is never sent.
pub(crate) fn cancel(store: &Store, id: u64) -> Result<OutboxEntry, OutboxError> {
    let mut e = store
        .outbox_entry(id)?
        .ok_or_else(|| usage(format!("activity {id} is not in the outbox")))?;
    match e.state {
        SendState::Queued | SendState::Failed | SendState::Unknown => {
            e.state = SendState::Cancelled;
            store.put_outbox_entry(&e)?;
            Ok(e)
        }
        s => Err(usage(format!(
            "activity {id} is {}: it cannot be cancelled",
            s.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = crate::config::RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3600),
        };
        let d1 = backoff(&p, 1).as_secs_f64();
        let d3 = backoff(&p, 3).as_secs_f64();
        let d9 = backoff(&p, 9).as_secs_f64();
        assert!((8.0..=12.0).contains(&d1), "{d1}");
        assert!((32.0..=48.0).contains(&d3), "{d3}");
        assert!((48.0..=72.0).contains(&d9), "{d9}");
    }

    #[test]
    fn composed_messages_parse_back_to_their_text_html_and_files() {
        use base64::Engine;
        for html in [None, Some("<p>Hello</p>".to_string())] {
            let req = Outgoing {
                mailbox: "alice".into(),
                to: vec!["carol@globex.com".into()],
                cc: vec![],
                subject: "Quote".into(),
                text: "Hello Carol".into(),
                html: html.clone(),
                attachments: vec![OutgoingAttachment {
                    name: "quote.pdf".into(),
                    content_type: "application/pdf".into(),
                    data: base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 q"),
                }],
                regarding: "account:globex".into(),
            };
            let msg = compose(
                &req,
                Some("Alice".into()),
                "alice@example.com",
                "Quote CRM:0001001",
                "<x@example.com>",
            )
            .unwrap();
            let p = crate::parse::parse_message(&msg.formatted()).unwrap();
            assert_eq!(p.body_text.trim(), "Hello Carol", "{html:?}");
            assert_eq!(p.attachments.len(), 1, "{html:?}");
            assert_eq!(p.attachments[0].name.as_deref(), Some("quote.pdf"));
            assert_eq!(p.attachments[0].size, 10);
        }
    }

    #[test]
    fn message_ids_are_unique_and_use_the_senders_domain() {
        let a = new_message_id("alice@example.com");
        let b = new_message_id("alice@example.com");
        assert_ne!(a, b);
        assert!(a.starts_with('<') && a.ends_with("@example.com>"), "{a}");
    }

    #[test]
    fn due_means_queued_and_time_or_a_missing_sent_copy() {
        let mut e = OutboxEntry {
            activity: 1,
            mailbox: "m".into(),
            message_id: "<x@y>".into(),
            raw_sha256: String::new(),
            raw_size: 0,
            from: "a@b".into(),
            recipients: vec![],
            state: SendState::Queued,
            attempts: 0,
            queued_at: 0,
            next_attempt: 100,
            last_error: None,
            sent_at: None,
            server_reply: None,
            sent_copy: None,
            copy_error: None,
        };
        assert!(!e.is_due(99));
        assert!(e.is_due(100));
        e.state = SendState::Sent;
        assert!(e.is_due(100), "Sent without its copy is due for the append");
        e.sent_copy = Some("Sent".into());
        assert!(!e.is_due(1000));
        for s in [
            SendState::Failed,
            SendState::Unknown,
            SendState::Cancelled,
            SendState::Sending,
        ] {
            e.state = s;
            e.sent_copy = None;
            assert!(!e.is_due(1000), "{s:?} is never picked up by the queue");
        }
    }
}
