//! Presentation shared by the commands: tables for people, JSON for scripts, and text that is
//! safe on a terminal.

use crate::model::{Activity, Party, Record};

/// Text for a terminal: mail is written by anyone, and an escape sequence in a subject or body
/// (`ESC ]0;…BEL` retitles the window, `ESC [2J` clears the screen, some terminals answer
/// queries into the shell's input) must reach the admin's terminal as visible text, not run.
/// Every control character but newline and tab is shown as `\xNN` (C1 controls as `\u{NN}`);
/// a CR right before a newline is dropped, as a terminal would show nothing of it anyway.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    let is_bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.contains(is_bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            c if is_bad(c) && (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if is_bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

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
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
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

pub(crate) fn activities_table(acts: &[Activity]) -> String {
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
pub(crate) fn activity_json_brief(a: &Activity) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.remove("body_text");
        o.remove("body_blob");
    }
    v
}

pub(crate) fn activity_text(a: &Activity) -> String {
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

pub(crate) fn records_table(recs: &[Record]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_run() {
        assert_eq!(escape_controls("plain\n\ttab"), "plain\n\ttab");
        assert_eq!(
            escape_controls("a\x1b]0;t\x07b\r\nc\rd\0\u{9b}2J\x7f"),
            "a\\x1b]0;t\\x07b\nc\\x0dd\\x00\\u{9b}2J\\x7f"
        );
    }
}
