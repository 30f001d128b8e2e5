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

/// A mailbox's report: one `[ok]` or `[FAIL]` line per check, and whether all that count
/// passed (informational lines are printed `[ok]` and do not count).
struct Report {
    text: String,
    ok: bool,
}

impl Report {
    /// A check that counts.
    fn check(&mut self, good: bool, text: impl AsRef<str>) {
        self.line(good, text);
        self.ok &= good;
    }

    /// A line that does not change the verdict.
    fn line(&mut self, good: bool, text: impl AsRef<str>) {
        let mark = if good { "ok" } else { "FAIL" };
        self.text
            .push_str(&format!("  [{mark}] {}\n", text.as_ref()));
    }
}

/// The steps of one mailbox's check, in order; the IMAP ones stop at the first that fails.
async fn check_mailbox(mb: &MailboxConfig, store: &Store) -> (String, bool) {
    let mut r = Report {
        text: format!(
            "mailbox {} ({} at {}:{})\n",
            mb.name, mb.user, mb.host, mb.port
        ),
        ok: true,
    };
    owner(&mut r, mb, store);
    // Outgoing first, so that it is reported even when the IMAP side fails.
    outgoing(&mut r, mb).await;
    let mut conn = match connect(mb).await {
        Ok(c) => c,
        Err(e) => {
            r.check(false, format!("connect and login: {e}"));
            return (r.text, false);
        }
    };
    capabilities(&mut r, mb, &conn);
    let all = match folders::list(&mut conn.session, &conn.peer).await {
        Ok(f) => f,
        Err(e) => {
            r.check(false, format!("LIST: {e}"));
            return (r.text, false);
        }
    };
    folder_overview(&mut r, mb, &all);
    if mb.rules.is_empty() {
        r.check(false, "no [[mailbox.rule]]: nothing is tracked");
    }
    for rule in &mb.rules {
        check_rule(&mut r, rule, &all, store);
    }
    write_back(&mut r, mb, &mut conn, &all).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn.session.logout()).await;
    (r.text, r.ok)
}

fn owner(r: &mut Report, mb: &MailboxConfig, store: &Store) {
    let known = store.record(&mb.owner).ok().flatten().is_some();
    let what = if known {
        "is a known user"
    } else {
        "is not in the records (import it)"
    };
    r.check(known, format!("owner {} {what}", mb.owner));
}

async fn outgoing(r: &mut Report, mb: &MailboxConfig) {
    match &mb.smtp {
        None => r.line(
            true,
            "outgoing: not configured (no [smtp]); `activities send` is off",
        ),
        Some(cfg) => match crate::smtp::test(cfg).await {
            Ok(what) => r.line(true, format!("outgoing: SMTP {what}")),
            Err(e) => r.check(false, format!("outgoing: {e}")),
        },
    }
}

fn capabilities(r: &mut Report, mb: &MailboxConfig, conn: &crate::imap::Connected) {
    r.line(
        true,
        format!("connected, {}, logged in as {}", conn.security, mb.user),
    );
    let caps: Vec<String> = CAPS
        .iter()
        .map(|c| format!("{c} {}", if conn.has(c) { "yes" } else { "no" }))
        .collect();
    r.line(true, format!("capabilities: {}", caps.join(", ")));
    r.line(
        true,
        if conn.has("OBJECTID") {
            "folder identity: MAILBOXID (RFC 8474)"
        } else {
            "folder identity: name + UIDVALIDITY (the server has no OBJECTID)"
        },
    );
}

/// How many folders, the separator, and the Sent folder (a configured one must exist).
fn folder_overview(r: &mut Report, mb: &MailboxConfig, all: &[folders::Folder]) {
    let sep = all
        .iter()
        .find_map(|f| f.separator)
        .map(|c| c.to_string())
        .unwrap_or_else(|| "(none)".into());
    r.line(
        true,
        format!("{} folders, hierarchy separator `{sep}`", all.len()),
    );
    match (
        folders::find_sent(all, mb.sent_folder.as_deref()),
        &mb.sent_folder,
    ) {
        (Some(f), _) => r.line(
            true,
            format!("Sent folder: {} (mail there is outgoing)", f.name),
        ),
        (None, Some(n)) => r.line(false, format!("sent_folder `{n}` does not exist")),
        (None, None) => r.line(
            true,
            "no Sent folder found (no SPECIAL-USE \\Sent): set sent_folder",
        ),
    }
}

/// A rule's folder exists (or, for a pattern, how many match) and its regarding resolves.
fn check_rule(r: &mut Report, rule: &crate::config::Rule, all: &[folders::Folder], store: &Store) {
    let one = std::slice::from_ref(rule);
    let matched: Vec<&folders::Folder> = all
        .iter()
        .filter(|f| f.selectable && rules::match_folder(one, &f.name).is_some())
        .collect();
    if rule.folder.contains('*') {
        r.line(
            true,
            format!("rule `{}`: {} folder(s) match", rule.folder, matched.len()),
        );
    } else {
        let what = if matched.is_empty() {
            "does not exist on the server"
        } else {
            "exists"
        };
        r.check(
            !matched.is_empty(),
            format!("rule `{}`: folder {what}", rule.folder),
        );
    }
    match &rule.regarding {
        Regarding::None => r.line(
            true,
            format!("rule `{}`: no regarding (tracked unlinked)", rule.folder),
        ),
        Regarding::Fixed(rec) => {
            let there = store.record(rec).ok().flatten().is_some();
            let what = if there {
                "exists"
            } else {
                "is not in the records"
            };
            r.check(
                there,
                format!("rule `{}`: regarding {rec} {what}", rule.folder),
            );
        }
        Regarding::Lookup { .. } => {
            for f in &matched {
                let Some(m) = rules::match_folder(one, &f.name) else {
                    continue;
                };
                match rules::resolve_regarding(&m, store) {
                    Ok(rec) => r.line(
                        true,
                        format!(
                            "  {} → {}",
                            f.name,
                            rec.map(|x| x.to_string()).unwrap_or_default()
                        ),
                    ),
                    Err(a) => r.line(false, format!("  {}", a.message)),
                }
            }
        }
    }
}

/// Write-back needs keywords: PERMANENTFLAGS with `\*` on a read-write SELECT.
async fn write_back(
    r: &mut Report,
    mb: &MailboxConfig,
    conn: &mut crate::imap::Connected,
    all: &[folders::Folder],
) {
    let Some(k) = &mb.crm.tracked_keyword else {
        r.line(true, "write-back: off (tracked_keyword = false)");
        return;
    };
    let probe = all
        .iter()
        .find(|f| f.selectable && f.name.eq_ignore_ascii_case("INBOX"))
        .or_else(|| all.iter().find(|f| f.selectable));
    let Some(f) = probe else {
        return;
    };
    match crate::imap::fetch::open(&mut conn.session, &conn.peer, &f.server_name, &f.name, true).await {
        Ok(sel) if sel.keywords => r.line(true, format!("write-back: the server stores keywords; tracked mail gets {k}")),
        Ok(_) => r.line(true, format!("write-back: the server does not store keywords (PERMANENTFLAGS lacks \\*); {k} is skipped")),
        Err(e) => r.line(false, format!("write-back: cannot SELECT {}: {e}", f.name)),
    }
}
