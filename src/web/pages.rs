//! The pages as HTML (maud escapes every value it is given; nothing here writes raw HTML from
//! data). Bodies are shown as their text: an HTML part is never rendered, so no script runs
//! and no remote content loads.

use super::filter::Filter;
use crate::model::{Activity, AuditEntry, Fields, Record};
use maud::{html, Markup, DOCTYPE};

/// The stylesheet, compiled in (CSP allows only this origin).
pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{background:#243a5e;color:#fff;padding:.6em 1em}header a{color:#fff;margin-right:1em}\
main{padding:1em;max-width:70em}table{border-collapse:collapse;width:100%}\
td,th{border-bottom:1px solid #ddd;padding:.35em;text-align:left;vertical-align:top}\
.muted{color:#666}.preview{color:#555;font-size:.9em}pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}\
.error{color:#a00}ol.timeline{list-style:none;padding:0}li.entry{border-bottom:1px solid #ddd;padding:.4em 0}\
summary{cursor:pointer}.date{color:#666;font-size:.9em}.dir{font-size:.8em;padding:0 .3em;border-radius:3px;background:#e8eef8}\
.dir.outgoing{background:#e8f5e8}.clip{font-size:.8em;padding:0 .3em;border:1px solid #bbb;border-radius:3px}.parties{color:#555;font-size:.9em}form.filters{margin-bottom:1em}";

fn layout(title: &str, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · foldertrack" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header { a href="/" { "Records" } a href="/mailboxes" { "Mailboxes" } a href="/quarantine" { "Quarantine" } }
                main { h1 { (title) } (body) }
            }
        }
    }
    .into_string()
}

/// A short page with one sentence (not found, store down).
pub(crate) fn message(title: &str, text: &str) -> String {
    layout(title, html! { p { (text) } })
}

pub(crate) fn login(failed: bool) -> String {
    layout(
        "Log in",
        html! {
            @if failed { p.error { "That token is not the one configured." } }
            form method="post" action="/login" {
                label { "Token " input type="password" name="token" autofocus; }
                " " button type="submit" { "Log in" }
            }
        },
    )
}

fn record_href(reference: &str) -> String {
    match reference.split_once(':') {
        Some((t, k)) => format!("/records/{}/{}", enc(t), enc(k)),
        None => "/".into(),
    }
}

/// A path segment or query value, percent-encoded.
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn home(q: &str, found: &[Record]) -> String {
    layout(
        "Records",
        html! {
            form method="get" action="/" {
                input type="search" name="q" value=(q) placeholder="name, key or email address";
                " " button type="submit" { "Search" }
            }
            @if !q.trim().is_empty() {
                @if found.is_empty() { p.muted { "No record matches." } }
                ul {
                    @for r in found {
                        li { a href=(record_href(&r.reference().to_string())) { (r.name) } " "
                             span.muted { (r.reference().to_string()) } }
                    }
                }
            }
        },
    )
}

fn one_line(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(140) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// A record's timeline page: one page of activities and the filters that chose them.
pub(crate) struct Timeline<'a> {
    pub record: &'a Record,
    pub acts: &'a [Activity],
    /// Where the next (older) page starts, when there is one.
    pub older: Option<u64>,
    pub filter: &'a Filter,
    /// The mailboxes the reader may filter by.
    pub mailboxes: &'a [String],
}

/// The longest body shown inline on a timeline; the activity's page has all of it.
const INLINE_BODY: usize = 20_000;

fn filter_form(href: &str, f: &Filter, mailboxes: &[String]) -> Markup {
    let dir = f.direction.map(|d| d.as_str());
    html! {
        form.filters method="get" action=(href) {
            select name="direction" aria-label="Direction" {
                option value="" { "Both directions" }
                @for d in ["incoming", "outgoing"] {
                    option value=(d) selected[dir == Some(d)] { (d) }
                }
            }
            " "
            select name="mailbox" aria-label="Mailbox" {
                option value="" { "Every mailbox" }
                @for m in mailboxes {
                    option value=(m) selected[f.mailbox.as_deref() == Some(m.as_str())] { (m) }
                }
            }
            " " label { "From " input type="date" name="since" value=[f.since.as_deref()]; }
            " " label { "to " input type="date" name="until" value=[f.until.as_deref()]; }
            " " label { input type="checkbox" name="attachments" value="1" checked[f.attachments]; " with attachments" }
            " " input type="search" name="q" value=[f.q.as_deref()] placeholder="words in subject or body";
            " " button type="submit" { "Filter" }
            @if f.is_set() { " " a href=(href) { "Clear" } }
        }
    }
}

fn timeline_entry(a: &Activity) -> Markup {
    let from = a
        .from
        .as_ref()
        .and_then(|p| p.address.as_deref())
        .unwrap_or("");
    let to: Vec<&str> = a.to.iter().filter_map(|p| p.address.as_deref()).collect();
    let body = match a.body_text.char_indices().nth(INLINE_BODY) {
        Some((i, _)) => format!("{}…", &a.body_text[..i]),
        None => a.body_text.clone(),
    };
    html! {
        li.entry {
            details {
                summary {
                    span.date { (a.date.as_deref().unwrap_or("")) } " "
                    span class=(format!("dir {}", a.direction.as_str())) { (a.direction.as_str()) } " "
                    a.subject href=(format!("/activities/{}", a.id)) { (a.subject.as_deref().unwrap_or("(no subject)")) }
                    @if !a.attachments.is_empty() {
                        " " span.clip { (a.attachments.len()) @if a.attachments.len() == 1 { " attachment" } @else { " attachments" } }
                    }
                    div.parties { (from) " → " (to.join(", ")) }
                    div.preview { (one_line(&a.body_text)) }
                }
                pre { (body) }
            }
        }
    }
}

pub(crate) fn record(t: &Timeline<'_>) -> String {
    let reference = t.record.reference().to_string();
    let href = record_href(&reference);
    layout(
        &t.record.name,
        html! {
            p.muted { (reference) @if !t.record.emails.is_empty() { " · " (t.record.emails.join(", ")) } }
            h2 { "Timeline" }
            (filter_form(&href, t.filter, t.mailboxes))
            @if t.acts.is_empty() {
                p.muted { @if t.filter.is_set() { "No email activity matches." } @else { "No email activity regards this record." } }
            }
            ol.timeline { @for a in t.acts { (timeline_entry(a)) } }
            @if let Some(before) = t.older {
                p { a.older href=(format!("{href}?before={before}{}", t.filter.query())) { "Older" } }
            }
        },
    )
}

pub(crate) fn activity(a: &Activity, f: &Fields, trail: &[AuditEntry], tracked: bool) -> String {
    let parties = |role: &str, ps: &[crate::model::Party]| -> Markup {
        html! {
            @if !ps.is_empty() {
                tr { th { (role) } td {
                    @for p in ps {
                        @match &p.record {
                            Some(r) => { a href=(record_href(r)) { (p.address.as_deref().unwrap_or(r)) } " " }
                            None => { (p.address.as_deref().unwrap_or("")) " " }
                        }
                    }
                } }
            }
        }
    };
    layout(
        a.subject.as_deref().unwrap_or("(no subject)"),
        html! {
            table {
                tr { th { "Date" } td { (a.date.as_deref().unwrap_or("")) } }
                tr { th { "Direction" } td { (a.direction.as_str()) } }
                (parties("From", a.from.as_slice()))
                (parties("To", &a.to))
                (parties("Cc", &a.cc))
                tr { th { "Regarding" } td {
                    @match &a.regarding { Some(r) => { a href=(record_href(r)) { (r) } } None => { "—" } }
                } }
                @if let Some(c) = &a.correlation {
                    tr { th { "Thread" } td { a href=(format!("/activities/{}", c.activity)) { "activity " (c.activity) } " (" (c.method) ")" } }
                }
                tr { th { "Tracked" } td { (if tracked { "yes" } else { "no (untracked)" }) } }
                tr { th { "Fields" } td { (crate::track::fields::describe(f)) } }
                tr { th { "Sources" } td {
                    @for s in std::iter::once(&a.source).chain(&a.other_sources) {
                        div { (s.mailbox) "/" (s.folder) " UID " (s.uid) }
                    }
                } }
                @if !a.attachments.is_empty() {
                    tr { th { "Attachments" } td {
                        @for (i, m) in a.attachments.iter().enumerate() {
                            div {
                                @if m.skipped.is_none() {
                                    a href=(format!("/activities/{}/attachments/{}", a.id, i + 1)) { (m.name.as_deref().unwrap_or("attachment")) }
                                } @else {
                                    (m.name.as_deref().unwrap_or("attachment")) " (not kept: " (m.skipped.as_deref().unwrap_or("")) ")"
                                }
                                " " span.muted { (m.size) " bytes" }
                            }
                        }
                    } }
                }
            }
            h2 { "Body" }
            pre { (a.body_text) }
            h2 { "History" }
            table {
                @for e in trail {
                    tr { td { (e.at) } td { (e.actor) } td { (e.action.as_str()) }
                         td { (e.field.as_deref().unwrap_or("")) } td { (e.old.as_deref().unwrap_or("")) } td { (e.new.as_deref().unwrap_or("")) } }
                }
            }
        },
    )
}

/// One mailbox on the mailboxes page.
pub(crate) struct MailboxRow {
    pub name: String,
    pub owner: String,
    pub host: String,
    /// The worker's state and a sentence, when known (from the agent in this process).
    pub worker: Option<(String, String)>,
    /// The outbox's messages by state (`2 queued, 5 sent`), when it has any.
    pub outgoing: Option<String>,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_tracked: Option<String>,
}

pub(crate) fn mailboxes(rows: &[MailboxRow]) -> String {
    layout(
        "Mailboxes",
        html! {
            table {
                tr { th { "Mailbox" } th { "Owner" } th { "Server" } th { "Worker" } th { "Last success" } th { "Last tracked" } th { "Outgoing" } th { "Last error" } }
                @for m in rows {
                    tr {
                        td { a href=(format!("/mailboxes/{}", enc(&m.name))) { (m.name) } }
                        td { a href=(record_href(&m.owner)) { (m.owner) } } td { (m.host) }
                        td { (worker(m)) }
                        td { (m.last_success.as_deref().unwrap_or("never")) }
                        td { (m.last_tracked.as_deref().unwrap_or("—")) }
                        td { (m.outgoing.as_deref().unwrap_or("—")) }
                        td.error { (m.last_error.as_deref().unwrap_or("")) }
                    }
                }
            }
        },
    )
}

fn worker(m: &MailboxRow) -> Markup {
    html! {
        @match &m.worker {
            Some((state, detail)) => { span.state { (state) } @if !detail.is_empty() { div.muted { (detail) } } }
            None => { span.muted { "not running" } }
        }
    }
}

/// One mailbox: `lag` says of each folder whether it is caught up or how far behind.
pub(crate) fn mailbox(
    m: &MailboxRow,
    folders: &[crate::model::FolderState],
    lag: &[String],
    alerts: &[crate::store::StoredAlert],
) -> String {
    layout(
        &m.name,
        html! {
            table {
                tr { th { "Owner" } td { a href=(record_href(&m.owner)) { (m.owner) } } }
                tr { th { "Server" } td { (m.host) } }
                tr { th { "Worker" } td { (worker(m)) } }
                tr { th { "Outgoing" } td { (m.outgoing.as_deref().unwrap_or("nothing queued or sent")) } }
                tr { th { "Last success" } td { (m.last_success.as_deref().unwrap_or("never")) } }
                tr { th { "Last tracked" } td { (m.last_tracked.as_deref().unwrap_or("—")) } }
                tr { th { "Last error" } td.error { (m.last_error.as_deref().unwrap_or("")) } }
            }
            h2 { "Folders" }
            table {
                tr { th { "Folder" } th { "Rule" } th { "Regarding" } th { "Last UID" } th { "Server's next UID" } th { "Last sync" } th { "Lag" } }
                @for (f, lag) in folders.iter().zip(lag) {
                    tr {
                        td { (f.folder) } td { (f.rule.as_deref().unwrap_or("")) }
                        td { @if let Some(r) = &f.regarding { a href=(record_href(r)) { (r) } } }
                        td { (f.last_uid) } td { (f.uid_next) } td { (f.last_sync.as_deref().unwrap_or("")) }
                        td { (lag) }
                    }
                }
            }
            h2 { "Alerts" }
            @if alerts.is_empty() { p.muted { "None." } }
            table {
                @for a in alerts {
                    tr { td { (a.at) } td { (a.alert.level.as_str()) } td { (a.alert.message) } td.muted { "×" (a.count) } }
                }
            }
        },
    )
}

pub(crate) fn quarantine(entries: &[crate::model::QuarantineEntry]) -> String {
    layout(
        "Quarantine",
        html! {
            p.muted { "Messages that could not be tracked. `foldertrack quarantine replay ID` tracks one again after the cause is fixed." }
            @if entries.is_empty() { p { "Nothing is in quarantine." } }
            table {
                @for q in entries {
                    tr {
                        td { (q.id) } td { (q.at) }
                        td { (q.source.mailbox) "/" (q.source.folder) " UID " (q.source.uid) }
                        td { (q.reason) } td.muted { (q.size) " bytes" }
                    }
                }
            }
        },
    )
}
