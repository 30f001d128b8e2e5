//! Presentation: tables for people, JSON for scripts, and the `status` report.

use crate::config::Config;
use crate::model::{Activity, Party, Record};
use crate::store::{FolderState, MailboxState, Store, StoredAlert};
use anyhow::Result;
use serde::Serialize;

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Renders rows as a left-aligned text table with a header.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn party_short(p: &Party) -> String {
    let who = p
        .address
        .clone()
        .or_else(|| p.name.clone())
        .unwrap_or_default();
    match &p.record {
        Some(r) => format!("{who} ({r})"),
        None => who,
    }
}

pub fn activities_table(acts: &[Activity]) -> String {
    if acts.is_empty() {
        return "no activities\n".into();
    }
    let rows: Vec<Vec<String>> = acts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.date
                    .as_deref()
                    .map(|d| d.chars().take(16).collect())
                    .unwrap_or_else(|| "-".into()),
                a.direction.as_str().chars().take(3).collect(),
                cut(
                    &a.from
                        .as_ref()
                        .map(party_short)
                        .unwrap_or_else(|| "-".into()),
                    38,
                ),
                cut(a.subject.as_deref().unwrap_or("(no subject)"), 40),
                a.regarding.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", a.source.mailbox, a.source.folder),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "DATE",
            "DIR",
            "FROM",
            "SUBJECT",
            "REGARDING",
            "SOURCE",
        ],
        &rows,
    ) + &format!(
        "{} activit{}\n",
        acts.len(),
        if acts.len() == 1 { "y" } else { "ies" }
    )
}

/// The list form of an activity in `--json`: everything but the body.
pub fn activity_json_brief(a: &Activity) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("body_text");
        o.remove("body_blob");
    }
    v
}

pub fn activity_text(a: &Activity) -> String {
    let parties = |ps: &[Party]| ps.iter().map(party_short).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "activity {}\n  subject:    {}\n  direction:  {}\n  regarding:  {}\n  from:       {}\n  to:         {}\n",
        a.id,
        a.subject.as_deref().unwrap_or("(no subject)"),
        a.direction.as_str(),
        a.regarding.as_deref().unwrap_or("(none)"),
        a.from.as_ref().map(party_short).unwrap_or_else(|| "-".into()),
        parties(&a.to),
    );
    if !a.cc.is_empty() {
        s.push_str(&format!("  cc:         {}\n", parties(&a.cc)));
    }
    if !a.bcc.is_empty() {
        s.push_str(&format!("  bcc:        {}\n", parties(&a.bcc)));
    }
    s.push_str(&format!(
        "  date:       {}\n  message-id: {}\n",
        a.date.as_deref().unwrap_or("-"),
        a.message_id
            .as_deref()
            .unwrap_or("(none; dedup by content hash)")
    ));
    if let Some(r) = &a.in_reply_to {
        s.push_str(&format!("  in-reply-to: {r}\n"));
    }
    if let Some(t) = &a.thread_index {
        s.push_str(&format!("  thread-index: {t}\n"));
    }
    s.push_str(&format!(
        "  source:     {}/{} (uidvalidity {}, uid {})\n",
        a.source.mailbox, a.source.folder, a.source.uidvalidity, a.source.uid
    ));
    for o in &a.other_sources {
        s.push_str(&format!(
            "  also in:    {}/{} (uid {})\n",
            o.mailbox, o.folder, o.uid
        ));
    }
    s.push_str(&format!("  tracked at: {}\n", a.tracked_at));
    if let Some(t) = &a.token {
        s.push_str(&format!("  token:      {t}\n"));
    }
    if let Some(c) = &a.correlation {
        s.push_str(&format!(
            "  correlated: to activity {} by {}\n",
            c.activity, c.method
        ));
    }
    for at in &a.attachments {
        s.push_str(&format!(
            "  attachment: {} ({}, {} bytes, sha256 {})\n",
            at.name.as_deref().unwrap_or("(unnamed)"),
            at.mime_type,
            at.size,
            &at.sha256[..12.min(at.sha256.len())]
        ));
    }
    for al in &a.alerts {
        s.push_str(&format!("  {}: {}\n", al.level, al.message));
    }
    s.push('\n');
    s.push_str(&a.body_text);
    if !a.body_text.ends_with('\n') {
        s.push('\n');
    }
    s
}

pub fn records_table(recs: &[Record]) -> String {
    if recs.is_empty() {
        return "no records (import some with `foldertrack records import FILE`)\n".into();
    }
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            vec![
                r.reference().to_string(),
                cut(&r.name, 30),
                cut(&r.emails.join(";"), 50),
                r.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(&["RECORD", "NAME", "EMAILS", "OWNER"], &rows)
}

/// The `status` report: per mailbox its health and folders, then totals and recent alerts.
#[derive(Debug, Serialize)]
pub struct Status {
    pub data_dir: String,
    /// `running (pid N)` when a `run` agent answered, else `not running`.
    pub agent: String,
    pub schema_version: u32,
    pub mailboxes: Vec<MailboxStatus>,
    pub activities: usize,
    pub quarantined: usize,
    pub alerts: Vec<StoredAlert>,
}

#[derive(Debug, Serialize)]
pub struct MailboxStatus {
    pub name: String,
    pub server: String,
    /// `ok`, `failing`, or `never synced`.
    pub state: String,
    #[serde(flatten)]
    pub health: MailboxState,
    /// What the running agent's task for this mailbox is doing now (only while `run` is going).
    pub live: Option<crate::watch::LiveState>,
    pub folders: Vec<FolderStatus>,
}

#[derive(Debug, Serialize)]
pub struct FolderStatus {
    #[serde(flatten)]
    pub state: FolderState,
    /// Messages the server had that are not yet processed, by UID (an upper bound).
    pub lag: u32,
}

impl Status {
    pub fn collect(
        config: &Config,
        store: &Store,
        agent: Option<&crate::supervisor::AgentHandle>,
    ) -> Result<Status> {
        let folders = store.folder_states()?;
        let mut mailboxes = Vec::new();
        for mb in &config.mailboxes {
            let mut health = store.mailbox_state(&mb.name)?;
            health.name.clear(); // `name` is already the mailbox's
            let live = agent.and_then(|a| a.live(&mb.name));
            let state = match (&live, &health.last_attempt, &health.last_error) {
                (Some(l), _, _) if l.state == "disabled" => "disabled",
                (_, None, _) => "never synced",
                (_, Some(_), None) => "ok",
                (_, Some(_), Some(_)) => "failing",
            }
            .to_string();
            mailboxes.push(MailboxStatus {
                name: mb.name.clone(),
                server: format!("{}:{} ({})", mb.host, mb.port, mb.tls),
                state,
                health,
                live,
                folders: folders
                    .iter()
                    .filter(|f| f.mailbox == mb.name)
                    .map(|f| FolderStatus {
                        lag: f.uid_next.saturating_sub(1).saturating_sub(f.last_uid),
                        state: f.clone(),
                    })
                    .collect(),
            });
        }
        Ok(Status {
            data_dir: config.data_dir.display().to_string(),
            agent: agent.map_or_else(
                || "not running".to_string(),
                |a| format!("running (pid {})", a.pid),
            ),
            schema_version: store.schema_version()?,
            mailboxes,
            activities: store.activity_count(),
            quarantined: store.quarantine_count(),
            alerts: store.alerts(20)?,
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "data dir {} (schema {}); agent {}\n",
            self.data_dir, self.schema_version, self.agent
        );
        for m in &self.mailboxes {
            s.push_str(&format!(
                "\nmailbox {} on {}: incoming {}; last success {}\n",
                m.name,
                m.server,
                m.state,
                m.health.last_success.as_deref().unwrap_or("never")
            ));
            if let Some(l) = &m.live {
                s.push_str(&format!(
                    "  now: {}{}{} (reconnects {}, last pass {})\n",
                    l.state,
                    if l.mode.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", l.mode)
                    },
                    if l.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", l.detail)
                    },
                    l.reconnects,
                    l.last_pass.as_deref().unwrap_or("-")
                ));
            }
            if let Some(e) = &m.health.last_error {
                s.push_str(&format!(
                    "  last error ({} in a row): {e}\n",
                    m.health.consecutive_errors
                ));
            }
            for o in m.health.outages.iter().rev().take(3) {
                s.push_str(&format!(
                    "  outage {} → {}: {}\n",
                    o.from,
                    o.to.as_deref().unwrap_or("ongoing"),
                    o.error
                ));
            }
            let rows: Vec<Vec<String>> = m
                .folders
                .iter()
                .map(|f| {
                    vec![
                        f.state.folder.clone(),
                        f.state.rule.clone().unwrap_or_else(|| "-".into()),
                        f.state.uidvalidity.to_string(),
                        f.state.last_uid.to_string(),
                        f.state.messages.to_string(),
                        f.lag.to_string(),
                        f.state.last_sync.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                s.push_str(&indent(&table(
                    &[
                        "FOLDER",
                        "RULE",
                        "UIDVALIDITY",
                        "LAST UID",
                        "MESSAGES",
                        "LAG",
                        "LAST SYNC",
                    ],
                    &rows,
                )));
            }
        }
        s.push_str(&format!(
            "\n{} activities, {} quarantined message(s)\n",
            self.activities, self.quarantined
        ));
        if !self.alerts.is_empty() {
            s.push_str("recent alerts (newest first):\n");
            for a in &self.alerts {
                let times = if a.count > 1 {
                    format!(" ({} times since {})", a.count, a.first_at)
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "  {} {} [{}] {}{times}\n",
                    a.at, a.alert.level, a.mailbox, a.alert.message
                ));
            }
        }
        s
    }
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("  {l}\n")).collect()
}
