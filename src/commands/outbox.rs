//! `activities send` and `outbox list | retry | cancel`, plus the outgoing lines of `status`,
//! `check` and `activities show`.

use super::show;
use super::status::{self, OutgoingState};
use crate::config::Config;
use crate::outbox::{self, OutboxError, Outgoing};
use crate::protocol::{PartialFailure, Request, UsageError};
use crate::store::{OutboxEntry, OutboxSummary, SendState, Store};
use anyhow::Result;

fn map_err(e: OutboxError) -> anyhow::Error {
    match e {
        OutboxError::Usage(m) => UsageError(m).into(),
        e => e.into(),
    }
}

/// Queues the message, then tries it once now. Exit 0 when sent or queued for a retry (the
/// queue owns it then), 1 when the server refused it for good.
pub(crate) async fn send(
    config: &Config,
    store: &Store,
    req: &Outgoing,
    agent: Option<&crate::agent::AgentHandle>,
) -> Result<String> {
    let e = outbox::enqueue(config, store, req).map_err(map_err)?;
    if let Some(reply) = sent_elsewhere(config, store, &e, agent)? {
        return Ok(reply);
    }
    let e = outbox::attempt(config, store, e.activity)
        .await
        .map_err(map_err)?;
    if let Some(a) = agent {
        a.wake_outbox();
    }
    let line = describe(&e, agent.is_some());
    if e.state == SendState::Failed {
        return Err(PartialFailure {
            stdout: line,
            message: format!(
                "activity {} was not sent: {}",
                e.activity,
                e.last_error.as_deref().unwrap_or("refused")
            ),
        }
        .into());
    }
    Ok(line)
}

/// With several agents, an entry of a mailbox another agent works is left to it (the claim
/// is fenced: only the lease holder sends): the reply says who sends it.
fn sent_elsewhere(
    config: &Config,
    store: &Store,
    e: &OutboxEntry,
    agent: Option<&crate::agent::AgentHandle>,
) -> Result<Option<String>> {
    let Some(owner) = store.sender_elsewhere(&e.mailbox)? else {
        return Ok(None);
    };
    if let Some(a) = agent {
        a.wake_outbox();
    }
    Ok(Some(format!(
        "activity {} queued: agent {owner}, which works mailbox {}, sends it within {} s\n",
        e.activity,
        e.mailbox,
        config.agent.lease_renew.as_secs()
    )))
}

/// One line on where an entry stands and what happens next.
fn describe(e: &OutboxEntry, agent: bool) -> String {
    match e.state {
        SendState::Sent => format!(
            "activity {} sent to {} ({}){}\n",
            e.activity,
            e.recipients.join(", "),
            e.server_reply.as_deref().unwrap_or("accepted"),
            match (&e.sent_copy, &e.copy_error) {
                (Some(f), _) => format!("; copy in {f}"),
                (None, Some(err)) => format!("; Sent copy not appended yet ({err}), will retry"),
                (None, None) => String::new(),
            }
        ),
        SendState::Queued => format!(
            "activity {} queued, not sent yet: {}; next attempt at {}{}\n",
            e.activity,
            e.last_error.as_deref().unwrap_or("waiting"),
            crate::time::rfc3339_utc(e.next_attempt),
            if agent {
                " by the running agent"
            } else {
                " by `foldertrack run` (or `foldertrack outbox retry` now)"
            }
        ),
        s => format!(
            "activity {} {}: {}\n",
            e.activity,
            s.as_str(),
            e.last_error.as_deref().unwrap_or("-")
        ),
    }
}

pub(crate) fn list(store: &Store, json: bool) -> Result<String> {
    let entries = store.outbox_entries()?;
    if json {
        return Ok(serde_json::to_string_pretty(&entries)? + "\n");
    }
    if entries.is_empty() {
        return Ok("outbox is empty\n".into());
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let subject = store
                .activity(e.activity)
                .ok()
                .flatten()
                .and_then(|a| a.subject)
                .unwrap_or_default();
            vec![
                e.activity.to_string(),
                e.mailbox.clone(),
                e.state.as_str().to_string(),
                e.attempts.to_string(),
                e.recipients.join(", "),
                subject,
                match e.state {
                    SendState::Sent => e
                        .copy_error
                        .as_deref()
                        .map(|c| format!("Sent copy pending: {c}"))
                        .unwrap_or_else(|| e.sent_at.clone().unwrap_or_default()),
                    SendState::Queued => format!(
                        "next {}{}",
                        crate::time::rfc3339_utc(e.next_attempt),
                        e.last_error
                            .as_deref()
                            .map(|x| format!(" ({x})"))
                            .unwrap_or_default()
                    ),
                    _ => e.last_error.clone().unwrap_or_default(),
                },
            ]
        })
        .collect();
    Ok(show::table(
        &["ID", "MAILBOX", "STATE", "TRIES", "TO", "SUBJECT", "DETAIL"],
        &rows,
    ))
}

/// Queues the entry for now; here (no agent) it is also attempted at once.
pub(crate) async fn retry(
    config: &Config,
    store: &Store,
    id: u64,
    agent: Option<&crate::agent::AgentHandle>,
) -> Result<String> {
    let e = outbox::retry(store, id).map_err(map_err)?;
    if let Some(reply) = sent_elsewhere(config, store, &e, agent)? {
        return Ok(reply);
    }
    let e = outbox::attempt(config, store, e.activity)
        .await
        .map_err(map_err)?;
    if let Some(a) = agent {
        a.wake_outbox();
    }
    Ok(describe(&e, agent.is_some()))
}

pub(crate) fn cancel(store: &Store, id: u64) -> Result<String> {
    let e = outbox::cancel(store, id).map_err(map_err)?;
    Ok(format!(
        "activity {} cancelled: it will not be sent\n",
        e.activity
    ))
}

/// The outgoing side of one mailbox for `status`, from its outbox summary.
pub(crate) fn outgoing_state(
    config: &Config,
    mailbox: &str,
    outbox: Option<&OutboxSummary>,
) -> status::Outgoing {
    let smtp = config.mailbox(mailbox).and_then(|m| m.smtp.as_ref());
    let counts = outbox.map(|o| &o.counts);
    let has = |s: SendState| counts.is_some_and(|c| c.contains_key(&s));
    let attention =
        outbox.is_some_and(|o| o.login_stuck) || has(SendState::Failed) || has(SendState::Unknown);
    status::Outgoing {
        state: match smtp {
            None => OutgoingState::NotConfigured,
            Some(_) if attention => OutgoingState::Attention,
            Some(_) => OutgoingState::Enabled,
        },
        server: smtp.map(|s| format!("{}:{} ({})", s.host, s.port, s.tls)),
        outbox: counts
            .into_iter()
            .flatten()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect(),
    }
}

/// Lines for `activities show` of an activity created in the CRM.
pub(crate) fn show_lines(e: &OutboxEntry) -> String {
    let mut s = format!(
        "  send state: {} (attempts {})\n",
        e.state.as_str(),
        e.attempts
    );
    if let Some(at) = &e.sent_at {
        s.push_str(&format!("  sent at:    {at}\n"));
    }
    if let Some(r) = &e.server_reply {
        s.push_str(&format!("  server:     {r}\n"));
    }
    if let Some(err) = &e.last_error {
        s.push_str(&format!("  last error: {err}\n"));
    }
    if e.state == SendState::Queued {
        s.push_str(&format!(
            "  next try:   {}\n",
            crate::time::rfc3339_utc(e.next_attempt)
        ));
    }
    match (&e.sent_copy, &e.copy_error) {
        (Some(f), _) => s.push_str(&format!("  sent copy:  {f}\n")),
        (None, Some(err)) => s.push_str(&format!("  sent copy:  not yet ({err})\n")),
        _ => {}
    }
    s
}

/// The arguments of `activities send`. Files are read by [`send_request`] in the CLI process,
/// so a request served by the running agent carries their bytes, and a missing file is the
/// caller's error (exit 2).
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The mailbox it is sent from (its `[smtp]` server, its Sent folder).
    #[arg(long)]
    pub mailbox: String,
    /// Recipient (repeat for more).
    #[arg(long, required = true)]
    pub to: Vec<String>,
    /// Copy to (repeat for more).
    #[arg(long)]
    pub cc: Vec<String>,
    /// The subject; the tracking token is appended to it.
    #[arg(long)]
    pub subject: String,
    /// Plain-text body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// The plain-text body from a file (UTF-8).
    #[arg(long)]
    pub body_file: Option<std::path::PathBuf>,
    /// An HTML alternative of the body.
    #[arg(long)]
    pub html_file: Option<std::path::PathBuf>,
    /// A file to attach (repeat for more).
    #[arg(long)]
    pub attach: Vec<std::path::PathBuf>,
    /// The record it regards, type:key.
    #[arg(long)]
    pub regarding: String,
}

/// Reads the files `a` names and checks the arguments into a request.
pub fn send_request(a: SendArgs) -> Result<Request> {
    use base64::Engine;
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| UsageError(format!("cannot read {what} {}: {e}", p.display())))
    };
    let text = match (a.body, &a.body_file) {
        (Some(t), None) => t,
        (None, Some(f)) => String::from_utf8(read(f, "--body-file")?)
            .map_err(|_| UsageError(format!("--body-file {} is not UTF-8 text", f.display())))?,
        _ => {
            return Err(
                UsageError("give the text with --body or --body-file (one of them)".into()).into(),
            )
        }
    };
    let html = match &a.html_file {
        Some(f) => Some(
            String::from_utf8(read(f, "--html-file")?)
                .map_err(|_| UsageError(format!("--html-file {} is not UTF-8", f.display())))?,
        ),
        None => None,
    };
    let mut attachments = Vec::new();
    for p in &a.attach {
        let data = read(p, "--attach")?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        attachments.push(outbox::OutgoingAttachment {
            content_type: content_type_of(&name).to_string(),
            name,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        });
    }
    Ok(Request::ActivitiesSend {
        outgoing: Outgoing {
            mailbox: a.mailbox,
            to: a.to,
            cc: a.cc,
            subject: a.subject,
            text,
            html,
            attachments,
            regarding: a.regarding,
        },
    })
}

/// Content type by file extension, for the common office and image types; anything else is
/// sent as `application/octet-stream`, which every client can save.
fn content_type_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "json" => "application/json",
        "ics" => "text/calendar",
        "docx" => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "pptx" => "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        _ => "application/octet-stream",
    }
}
