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
                put_fields(&mut v, &store.field_state(a.id)?.unwrap_or_default().crm);
                Ok(v)
            })
            .collect::<Result<_>>()?;
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
        put_fields(&mut v, &store.field_state(id)?.unwrap_or_default().crm);
        if let Some(e) = store.outbox_entry(id)? {
            v["send"] = serde_json::to_value(&e)?;
        }
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let mut text = show::activity_text(&a);
    let fields = store.field_state(id)?.unwrap_or_default().crm;
    text.push_str(&format!(
        "  fields:     {}\n",
        crate::track::fields::describe(&fields)
    ));
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

/// The synced fields into an activity's JSON (`read`, `follow_up`, `importance`,
/// `categories`).
fn put_fields(v: &mut serde_json::Value, f: &crate::model::Fields) {
    v["read"] = f.read.into();
    v["follow_up"] = f.follow_up.into();
    v["importance"] = f.importance.as_str().into();
    v["categories"] = f.categories.clone().into();
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
    how: Untrack<'_>,
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
    if how.delete {
        out.push_str(&delete(config, store, &a, user, how.reason)?);
    }
    Ok(out)
}

/// How `activities untrack` untracks: `--delete` also deletes it from the store.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Untrack<'a> {
    pub delete: bool,
    pub reason: Option<&'a str>,
}

/// `activities untrack ID --delete`: the activity, its body and the blobs no other activity
/// uses leave the store; its audit trail stays with the deletion (actor, time, reason). An
/// activity sent from foldertrack keeps its outbox entry, so it is refused.
fn delete(
    config: &crate::config::Config,
    store: &Store,
    a: &crate::model::Activity,
    user: &str,
    reason: Option<&str>,
) -> Result<String> {
    if store.outbox_entry(a.id)?.is_some() {
        return Err(UsageError(format!(
            "activity {} was sent from foldertrack: its outbox entry keeps it (`foldertrack outbox`); it cannot be deleted",
            a.id
        ))
        .into());
    }
    let token = config
        .mailbox(&a.source.mailbox)
        .map(|m| m.crm.token.clone())
        .unwrap_or_default();
    let subject_key = a
        .subject
        .as_deref()
        .map(|s| crate::track::normalise_subject(s, &token));
    let d = store
        .delete_activity(a.id, subject_key.as_deref(), &cli_actor(user), reason)?
        .ok_or_else(|| UsageError(format!("no activity {}", a.id)))?;
    Ok(format!(
        "activity {} deleted from the store: {} blob(s) (body, attachments) deleted, {} kept because other activities use them; its audit trail stays\n",
        a.id, d.blobs_deleted, d.blobs_kept
    ))
}

/// Removes the mailbox's tracked keyword from the message at `s`: the keyword, or `None` when
/// there is none to remove (no keyword configured, a mailbox not in the config, a folder that
/// is gone or has a new UIDVALIDITY). Setting it again is idempotent as is removing it.
async fn drop_keyword(
    config: &crate::config::Config,
    s: &crate::model::Source,
) -> Result<Option<String>, String> {
    let Some(k) = config
        .mailbox(&s.mailbox)
        .and_then(|mb| mb.crm.tracked_keyword.clone())
    else {
        return Ok(None);
    };
    let Some((mut c, _)) = open_copy(config, s).await? else {
        return Ok(None);
    };
    let r = crate::imap::fetch::store_flags(
        &mut c.session,
        &c.peer,
        s.uid,
        &[],
        std::slice::from_ref(&k),
    )
    .await
    .map_err(|e| e.to_string());
    let _ = c.session.logout().await;
    r.map(|()| Some(k))
}

/// Connects to the mailbox of copy `s` and selects its folder read-write: `None` when the
/// copy cannot be reached that way (a mailbox not in the config, the outbox, a folder gone
/// or reset since).
async fn open_copy(
    config: &crate::config::Config,
    s: &crate::model::Source,
) -> Result<Option<(crate::imap::Connected, crate::imap::fetch::Selected)>, String> {
    let Some(mb) = config.mailbox(&s.mailbox) else {
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
    Ok(Some((c, sel)))
}

/// What `activities set` asks for, checked: a category must be `+NAME` or `-NAME` with NAME
/// an IMAP keyword (it is stored as one in the mailbox).
pub(crate) fn field_change(
    read: Option<bool>,
    follow_up: Option<bool>,
    importance: Option<String>,
    categories: &[String],
) -> Result<crate::track::fields::FieldChange> {
    let importance = importance
        .map(|i| {
            crate::model::Importance::from_text(&i)
                .ok_or_else(|| UsageError(format!("--importance {i}: must be high or normal")))
        })
        .transpose()?;
    let mut change = crate::track::fields::FieldChange {
        read,
        follow_up,
        importance,
        ..Default::default()
    };
    for c in categories {
        let (sign, name) = c.split_at(c.chars().next().map_or(0, char::len_utf8));
        let atom = !name.is_empty()
            && !name.starts_with('\\')
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() && !"(){%*\"\\]".contains(c));
        match (sign, atom) {
            ("+", true) => change.add_categories.push(name.to_string()),
            ("-", true) => change.remove_categories.push(name.to_string()),
            _ => {
                return Err(UsageError(format!(
                    "--category {c}: write +NAME to add or -NAME to remove, NAME an IMAP keyword (letters, digits, $ . _ - and the like; no spaces or ( ) {{ % * \" \\ ])"
                ))
                .into())
            }
        }
    }
    if change == crate::track::fields::FieldChange::default() {
        return Err(UsageError(
            "nothing to set: give --read, --follow-up, --importance or --category".into(),
        )
        .into());
    }
    Ok(change)
}

/// `activities set ID …`: changes the fields in the CRM (audited as `cli:USER`), then writes
/// them to every mailbox copy where the field's direction sends CRM changes to the mailbox;
/// a copy that cannot be written is reported and written at its folder's next flag scan.
pub(crate) async fn set(
    config: &crate::config::Config,
    store: &Store,
    id: u64,
    change: &crate::track::fields::FieldChange,
    user: &str,
) -> Result<String> {
    let a = store.activity(id)?.ok_or_else(|| {
        UsageError(format!(
            "no activity {id} (see `foldertrack activities list`)"
        ))
    })?;
    let sync = config
        .mailbox(&a.source.mailbox)
        .map(|m| m.field_sync.clone())
        .unwrap_or_default();
    let pushes = store
        .set_fields(id, change, &sync, &cli_actor(user))?
        .unwrap_or_default();
    let st = store.field_state(id)?.unwrap_or_default();
    let mut out = format!(
        "activity {id}: {}\n",
        crate::track::fields::describe(&st.crm)
    );
    for p in pushes {
        let at = format!(
            "{}/{} UID {}",
            p.source.mailbox, p.source.folder, p.source.uid
        );
        match push_copy(config, &p).await {
            Ok(Some(done)) => {
                let kept = if done == p {
                    ""
                } else {
                    " (no keywords kept in that folder: importance and categories not written)"
                };
                store.record_pushed(std::slice::from_ref(&done))?;
                out.push_str(&format!("  written to {at}{kept}\n"));
            }
            Ok(None) => out.push_str(&format!("  {at}: not reachable (folder gone or reset)\n")),
            Err(e) => out.push_str(&format!(
                "  {at}: not written now ({e}); its next flag scan writes it\n"
            )),
        }
    }
    Ok(out)
}

/// Writes one push to its copy (keywords only where the folder keeps them): what was
/// written, or `None` when the copy cannot be reached.
async fn push_copy(
    config: &crate::config::Config,
    p: &crate::track::fields::Push,
) -> Result<Option<crate::track::fields::Push>, String> {
    let Some((mut c, sel)) = open_copy(config, &p.source).await? else {
        return Ok(None);
    };
    let mut p = p.clone();
    if !sel.keywords {
        p.system_only();
    }
    let r =
        crate::imap::fetch::store_flags(&mut c.session, &c.peer, p.source.uid, &p.add, &p.remove)
            .await
            .map_err(|e| e.to_string());
    let _ = c.session.logout().await;
    r.map(|()| Some(p))
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
