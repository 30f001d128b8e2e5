//! `activities`: list, show, link by hand, and one attachment's bytes. (`send` is in
//! [`super::outbox`], `export` in [`crate::export`].)

use super::{outbox, show};
use crate::model::RecordRef;
use crate::protocol::{Reply, UsageError};
use crate::store::Store;
use anyhow::Result;

/// `activities list [--regarding R] [--json]`.
pub(crate) fn list(store: &Store, regarding: Option<&str>, json: bool) -> Result<String> {
    let r = regarding
        .map(|r| r.parse::<RecordRef>().map_err(UsageError))
        .transpose()?;
    let acts = store.activities(r.as_ref())?;
    if json {
        let untracked: std::collections::HashSet<u64> =
            store.untracked_ids()?.into_iter().collect();
        let list: Vec<serde_json::Value> = acts
            .iter()
            .map(|a| {
                let mut v = show::activity_json_brief(a);
                v["tracked"] = (!untracked.contains(&a.id)).into();
                v
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&list)? + "\n");
    }
    Ok(show::activities_table(&acts))
}

/// `activities show ID [--json]`: the activity, its send state if it was sent from here, and
/// its counterpart in the other direction.
pub(crate) fn show(store: &Store, id: u64, json: bool) -> Result<String> {
    let a = store.activity(id)?.ok_or_else(|| {
        UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
    })?;
    // The sent copy and the received copy of one message are two activities (DESIGN §4.7),
    // linked by their Message-ID.
    let counterpart = store.counterpart(&a)?;
    if json {
        let mut v = serde_json::to_value(&a)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("body_blob");
        }
        v["counterpart"] = serde_json::json!(counterpart);
        v["tracked"] = (!store.untracked_ids()?.contains(&id)).into();
        if let Some(e) = store.outbox_entry(id)? {
            v["send"] = serde_json::to_value(&e)?;
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut text = show::activity_text(&a);
    if store.untracked_ids()?.contains(&id) {
        text.push_str("  tracked:    no (untracked; `activities history` says by whom)\n");
    }
    if let Some(e) = store.outbox_entry(id)? {
        text.push_str(&outbox::show_lines(&e));
    }
    if let Some(c) = counterpart {
        text = text.replacen(
            "\n",
            &format!("\n  other direction: activity {c} (same Message-ID)\n"),
            1,
        );
    }
    Ok(text)
}

/// `activities link ID TYPE:KEY`: sets the regarding by hand, as `user` (the audit trail's
/// actor `cli:USER`).
pub(crate) fn link(store: &Store, id: u64, regarding: &str, user: &str) -> Result<String> {
    let r: RecordRef = regarding.parse().map_err(UsageError)?;
    if store.record(&r)?.is_none() {
        return Err(UsageError(format!("no record {r} (import it first)")).into());
    }
    if !store.link_by_hand(id, &r, &cli_actor(user))? {
        return Err(UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
        .into());
    }
    Ok(format!("activity {id} now regards {r}; a folder rule with a regarding resets it at the folder's next pass, as in Dynamics\n"))
}

/// The audit trail's actor for a command run by Unix user `user`.
fn cli_actor(user: &str) -> String {
    match user {
        "" => "cli".to_string(),
        u => format!("cli:{u}"),
    }
}

/// `activities untrack ID`: the activity stays in the CRM, marked untracked; its message
/// loses the tracked keyword in every mailbox copy foldertrack can reach, and later passes
/// leave it where it is (its sources are recorded). A copy dragged into a tracked folder later
/// tracks it again. Idempotent; an unknown id is a usage error (exit 2).
pub(crate) async fn untrack(
    config: &crate::config::Config,
    store: &Store,
    id: u64,
    user: &str,
) -> Result<String> {
    let no = || {
        UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
    };
    let changed = store.untrack(id, &cli_actor(user))?.ok_or_else(no)?;
    let a = store.activity(id)?.ok_or_else(no)?;
    let mut out = format!(
        "activity {id} untracked{}: it stays in the CRM; its message is not tracked again where it is\n",
        if changed { "" } else { " (it was already)" }
    );
    for s in std::iter::once(&a.source).chain(&a.other_sources) {
        let at = format!("{}/{} UID {}", s.mailbox, s.folder, s.uid);
        match drop_keyword(config, s).await {
            Ok(Some(k)) => out.push_str(&format!("  {k} removed in {at}\n")),
            Ok(None) => out.push_str(&format!(
                "  {at}: no keyword to remove (none configured, or the folder is gone or was reset)\n"
            )),
            Err(e) => out.push_str(&format!("  {at}: could not remove the keyword: {e}\n")),
        }
    }
    Ok(out)
}

/// Removes the mailbox's tracked keyword from the message at `s`: the keyword, or `None` when
/// there is none to remove (no keyword configured, a mailbox not in the config, a folder that
/// is gone or has a new UIDVALIDITY). Setting it again is idempotent as is removing it.
async fn drop_keyword(
    config: &crate::config::Config,
    s: &crate::model::Source,
) -> Result<Option<String>, String> {
    let Some(mb) = config.mailbox(&s.mailbox) else {
        return Ok(None);
    };
    let Some(k) = mb.crm.tracked_keyword.as_deref() else {
        return Ok(None);
    };
    if s.folder == crate::store::OUTBOX_FOLDER {
        return Ok(None);
    }
    let mut c = crate::imap::connect(mb).await.map_err(|e| e.to_string())?;
    let folders = crate::imap::folders::list(&mut c.session, &c.peer)
        .await
        .map_err(|e| e.to_string())?;
    let Some(f) = folders.iter().find(|f| f.name == s.folder) else {
        return Ok(None);
    };
    let sel = crate::imap::fetch::open(&mut c.session, &c.peer, &f.server_name, &f.name, true)
        .await
        .map_err(|e| e.to_string())?;
    if sel.uidvalidity != s.uidvalidity {
        return Ok(None);
    }
    let cmd = format!("UID STORE {} -FLAGS.SILENT ({k})", s.uid);
    crate::imap::timed(
        &c.peer,
        "UID STORE",
        c.session.run_command_and_check_ok(&cmd),
    )
    .await
    .map_err(|e| e.to_string())?;
    let _ = c.session.logout().await;
    Ok(Some(k.to_string()))
}

/// `activities history ID [--json]`: the activity's audit trail, newest first; it outlives
/// the activity. An id that never had one is a usage error.
pub(crate) fn history(store: &Store, id: u64, json: bool) -> Result<String> {
    let trail = store.audit(id)?;
    if trail.is_empty() {
        return Err(UsageError(format!(
            "activity {id} has no history (see `foldertrack activities list`)"
        ))
        .into());
    }
    if json {
        let v: Vec<serde_json::Value> = trail
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at": e.at, "actor": e.actor, "action": e.action,
                    "field": e.field, "old": e.old, "new": e.new,
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = trail
        .iter()
        .map(|e| {
            vec![
                e.at.clone(),
                e.actor.clone(),
                e.action.to_string(),
                dash(&e.field),
                dash(&e.old),
                dash(&e.new),
            ]
        })
        .collect();
    Ok(super::show::table(
        &["AT", "ACTOR", "ACTION", "FIELD", "OLD", "NEW"],
        &rows,
    ))
}

/// The Unix user running this process, for the audit trail (`cli:USER`).
pub fn invoking_user() -> String {
    // SAFETY: getuid cannot fail; getpwuid returns null or a pointer to a static record,
    // read here at once, before anything else could call it again.
    let uid = unsafe { libc::getuid() };
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return format!("uid{uid}");
    }
    // SAFETY: pw is not null, and pw_name a NUL-terminated string in that record.
    let name = unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) };
    name.to_string_lossy().into_owned()
}

/// `activities attachment ID N`: the attachment's bytes, as the reply's binary output.
pub(crate) fn attachment(store: &Store, id: u64, n: usize) -> Reply {
    match attachment_bytes(store, id, n) {
        Ok(bytes) => {
            use base64::Engine;
            Reply {
                stdout: String::new(),
                binary: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                stderr: String::new(),
                code: 0,
            }
        }
        Err(e) => Reply::from_result(Err(e)),
    }
}

fn attachment_bytes(store: &Store, id: u64, n: usize) -> Result<Vec<u8>> {
    let a = store
        .activity(id)?
        .ok_or_else(|| UsageError(format!("no activity {id}")))?;
    let count = a.attachments.len();
    let att = n
        .checked_sub(1)
        .and_then(|i| a.attachments.get(i))
        .ok_or_else(|| {
            UsageError(format!(
                "activity {id} has {count} attachment(s); N counts from 1"
            ))
        })?;
    if let Some(why) = &att.skipped {
        return Err(UsageError(format!(
            "attachment {n} of activity {id} was not stored: {why}"
        ))
        .into());
    }
    store.blob(&att.sha256)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the blob {} of attachment {n} is missing from the data dir",
            att.sha256
        )
    })
}
