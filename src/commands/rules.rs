//! `rules`: the folder rules, and their offline check (the record exists and the mailbox
//! owner may write it).

use super::show;
use crate::config::{Config, LookupBy, Regarding};
use crate::store::Store;
use anyhow::Result;

/// `rules list`: every mailbox's folder rules and what each links to.
pub(crate) fn list(config: &Config) -> String {
    let mut rows = Vec::new();
    for mb in &config.mailboxes {
        for r in &mb.rules {
            let regarding = match &r.regarding {
                Regarding::None => "(none: tracked unlinked)".to_string(),
                Regarding::Fixed(x) => x.to_string(),
                Regarding::Lookup { rtype, by } => format!(
                    "{rtype} by {} of `*`",
                    if *by == LookupBy::Name { "name" } else { "key" }
                ),
            };
            rows.push(vec![mb.name.clone(), r.folder.clone(), regarding]);
        }
    }
    show::table(&["MAILBOX", "FOLDER", "REGARDING"], &rows)
}

/// Reports, before anything runs, the rules that would track unlinked: a missing record, or
/// one the mailbox owner may not write (DESIGN §4.11).
pub(crate) fn check(config: &Config, store: &Store) -> Result<(String, bool)> {
    let mut out = String::new();
    let mut ok = true;
    for mb in &config.mailboxes {
        let writer = crate::track::writer_of(mb, store);
        if mb.rules.len() > 25 {
            out.push_str(&format!(
                "[warn] {}: {} rules; Dynamics stops at 25, foldertrack does not\n",
                mb.name,
                mb.rules.len()
            ));
        }
        for r in &mb.rules {
            let (good, text) = match &r.regarding {
                Regarding::None => (true, "no regarding".to_string()),
                Regarding::Fixed(x) => match store.record(x)? {
                    None => (false, format!("{x} is not in the records")),
                    Some(rec) if !writer.can_write(&rec) => (
                        false,
                        format!(
                            "{} may not write {x} (owner {}): mail would be tracked unlinked",
                            writer.user,
                            rec.owner.as_deref().unwrap_or("-")
                        ),
                    ),
                    Some(_) => (true, format!("{x} exists and {} may write it", writer.user)),
                },
                Regarding::Lookup { rtype, .. } => {
                    let n = store.records(Some(rtype))?.len();
                    (
                        n > 0,
                        format!("looks up {rtype} records ({n} in the store)"),
                    )
                }
            };
            ok &= good;
            out.push_str(&format!(
                "[{}] {}: rule `{}`: {text}\n",
                if good { "ok" } else { "FAIL" },
                mb.name,
                r.folder
            ));
        }
    }
    Ok((out, ok))
}
