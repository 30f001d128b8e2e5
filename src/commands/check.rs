//! `check`: Dynamics' "Test & Enable mailbox". Connects, verifies TLS and login, lists the
//! capabilities that matter, and checks that every rule's folder exists and every regarding
//! record is there, before any mail is tracked.

use crate::config::{Config, MailboxConfig, Regarding};
use crate::imap::{connect, folders};
use crate::store::Store;
use crate::track::rules;
use anyhow::Result;

/// Capabilities foldertrack uses or will use, in the order `check` prints them.
const CAPS: [&str; 9] = [
    "IDLE",
    "CONDSTORE",
    "QRESYNC",
    "OBJECTID",
    "SPECIAL-USE",
    "MOVE",
    "UIDPLUS",
    "NOTIFY",
    "LIST-STATUS",
];

/// Checks the mailboxes (or `only`); returns the report and whether everything passed.
pub async fn check(config: &Config, store: &Store, only: Option<&str>) -> Result<(String, bool)> {
    let mut out = String::new();
    let mut ok = true;
    for mb in config
        .mailboxes
        .iter()
        .filter(|m| only.is_none_or(|o| o == m.name))
    {
        let (text, good) = check_mailbox(mb, store).await;
        out.push_str(&text);
        ok &= good;
    }
    Ok((out, ok))
}

async fn check_mailbox(mb: &MailboxConfig, store: &Store) -> (String, bool) {
    let mut s = format!(
        "mailbox {} ({} at {}:{})\n",
        mb.name, mb.user, mb.host, mb.port
    );
    let mut ok = true;
    let mut line = |good: bool, text: String| {
        s.push_str(&format!(
            "  [{}] {text}\n",
            if good { "ok" } else { "FAIL" }
        ));
        good
    };
    let owner_ok = store.record(&mb.owner).ok().flatten().is_some();
    ok &= line(
        owner_ok,
        format!(
            "owner {} {}",
            mb.owner,
            if owner_ok {
                "is a known user"
            } else {
                "is not in the records (import it)"
            }
        ),
    );
    // Outgoing first, so that it is reported even when the IMAP side fails.
    match &mb.smtp {
        None => {
            line(
                true,
                "outgoing: not configured (no [smtp]); `activities send` is off".into(),
            );
        }
        Some(cfg) => {
            ok &= match crate::smtp::test(cfg).await {
                Ok(what) => line(true, format!("outgoing: SMTP {what}")),
                Err(e) => line(false, format!("outgoing: {e}")),
            };
        }
    }
    let mut conn = match connect(mb).await {
        Ok(c) => c,
        Err(e) => {
            line(false, format!("connect and login: {e}"));
            return (s, false);
        }
    };
    line(
        true,
        format!("connected, {}, logged in as {}", conn.security, mb.user),
    );
    let caps: Vec<String> = CAPS
        .iter()
        .map(|c| format!("{c} {}", if conn.has(c) { "yes" } else { "no" }))
        .collect();
    line(true, format!("capabilities: {}", caps.join(", ")));
    let identity = if conn.has("OBJECTID") {
        "folder identity: MAILBOXID (RFC 8474)"
    } else {
        "folder identity: name + UIDVALIDITY (the server has no OBJECTID)"
    };
    line(true, identity.to_string());
    let all = match folders::list(&mut conn.session, &conn.peer).await {
        Ok(f) => f,
        Err(e) => {
            line(false, format!("LIST: {e}"));
            return (s, false);
        }
    };
    let sep = all
        .iter()
        .find_map(|f| f.separator)
        .map(|c| c.to_string())
        .unwrap_or_else(|| "(none)".into());
    line(
        true,
        format!("{} folders, hierarchy separator `{sep}`", all.len()),
    );
    match folders::find_sent(&all, mb.sent_folder.as_deref()) {
        Some(f) => line(
            true,
            format!("Sent folder: {} (mail there is outgoing)", f.name),
        ),
        None => line(
            mb.sent_folder.is_none(),
            match &mb.sent_folder {
                Some(n) => format!("sent_folder `{n}` does not exist"),
                None => "no Sent folder found (no SPECIAL-USE \\Sent): set sent_folder".into(),
            },
        ),
    };
    if mb.rules.is_empty() {
        line(false, "no [[mailbox.rule]]: nothing is tracked".into());
        ok = false;
    }
    for rule in &mb.rules {
        let matched: Vec<&folders::Folder> = all
            .iter()
            .filter(|f| {
                f.selectable && rules::match_folder(std::slice::from_ref(rule), &f.name).is_some()
            })
            .collect();
        if !rule.folder.contains('*') {
            ok &= line(
                !matched.is_empty(),
                format!(
                    "rule `{}`: folder {}",
                    rule.folder,
                    if matched.is_empty() {
                        "does not exist on the server"
                    } else {
                        "exists"
                    }
                ),
            );
        } else {
            line(
                true,
                format!("rule `{}`: {} folder(s) match", rule.folder, matched.len()),
            );
        }
        match &rule.regarding {
            Regarding::None => {
                line(
                    true,
                    format!("rule `{}`: no regarding (tracked unlinked)", rule.folder),
                );
            }
            Regarding::Fixed(r) => {
                let there = store.record(r).ok().flatten().is_some();
                ok &= line(
                    there,
                    format!(
                        "rule `{}`: regarding {r} {}",
                        rule.folder,
                        if there {
                            "exists"
                        } else {
                            "is not in the records"
                        }
                    ),
                );
            }
            Regarding::Lookup { .. } => {
                for f in &matched {
                    if let Some(m) = rules::match_folder(std::slice::from_ref(rule), &f.name) {
                        match rules::resolve_regarding(&m, store) {
                            Ok(r) => line(
                                true,
                                format!(
                                    "  {} → {}",
                                    f.name,
                                    r.map(|r| r.to_string()).unwrap_or_default()
                                ),
                            ),
                            Err(a) => line(false, format!("  {}", a.message)),
                        };
                    }
                }
            }
        }
    }
    if let Some(k) = &mb.crm.tracked_keyword {
        // Write-back needs keywords: PERMANENTFLAGS with \* on a read-write SELECT.
        let probe = all
            .iter()
            .find(|f| f.selectable && f.name.eq_ignore_ascii_case("INBOX"))
            .or_else(|| all.iter().find(|f| f.selectable));
        if let Some(f) = probe {
            match crate::imap::fetch::open(&mut conn.session, &conn.peer, &f.server_name, &f.name, true).await {
                Ok(sel) if sel.keywords => line(true, format!("write-back: the server stores keywords; tracked mail gets {k}")),
                Ok(_) => line(true, format!("write-back: the server does not store keywords (PERMANENTFLAGS lacks \\*); {k} is skipped")),
                Err(e) => line(false, format!("write-back: cannot SELECT {}: {e}", f.name)),
            };
        }
    } else {
        line(true, "write-back: off (tracked_keyword = false)".into());
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.session.logout()).await;
    (s, ok)
}
