//! The pages' handlers: read the store under the reader's access, hand the values to
//! [`super::pages`]. Every one answers 403 for what the reader may not see and 404 for what
//! does not exist (an unknown record, activity, attachment or mailbox).

use super::access::{Access, Viewer};
use super::filter::TimelineQuery;
use super::{pages, Shared, WebError, PAGE};
use crate::model::RecordRef;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, Response};
use axum::Extension;

/// Runs `f` (a timeline that a filter may make read a whole record) so that it does not hold
/// up the agent's other tasks on this worker thread: on the multi-threaded runtime of `run`
/// and `foldertrack web` they move to another thread meanwhile.
fn off_the_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The configured mailboxes as (name, owner, host).
fn mailbox_list(web: &Shared) -> Vec<(String, String, String)> {
    let c = web.config.read().unwrap_or_else(|p| p.into_inner());
    c.mailboxes
        .iter()
        .map(|m| (m.name.clone(), m.owner.to_string(), m.host.clone()))
        .collect()
}

fn access<'a>(web: &'a Shared, viewer: &'a Viewer) -> Access<'a> {
    let c = web.config.read().unwrap_or_else(|p| p.into_inner());
    Access::new(viewer, &web.store, &c)
}

#[derive(serde::Deserialize)]
pub(super) struct Search {
    q: Option<String>,
}

/// Records by name, key or email address (the first 50 the reader may see).
pub(super) async fn home(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Query(s): Query<Search>,
) -> Result<Html<String>, WebError> {
    let q = s.q.unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let found = if needle.is_empty() {
        Vec::new()
    } else {
        web.store
            .records(None)?
            .into_iter()
            .filter(|r| {
                r.name.to_lowercase().contains(&needle)
                    || r.key.to_lowercase().contains(&needle)
                    || r.emails.iter().any(|e| e.to_lowercase().contains(&needle))
            })
            .filter(|r| viewer.can_read_record(r))
            .take(50)
            .collect()
    };
    Ok(Html(pages::home(&q, &found)))
}

/// A record and a page of its timeline, filtered as the URL says.
pub(super) async fn record(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((rtype, key)): Path<(String, String)>,
    Query(q): Query<TimelineQuery>,
) -> Result<Html<String>, WebError> {
    let (filter, before) = q.parse().map_err(WebError::BadRequest)?;
    let r = RecordRef::new(&rtype, &key);
    let rec = web
        .store
        .record(&r)?
        .ok_or_else(|| WebError::NotFound(format!("no record {r}")))?;
    if !viewer.can_read_record(&rec) {
        return Err(WebError::Forbidden(format!("record {r}")));
    }
    let can = access(&web, &viewer);
    let (acts, older) = off_the_workers(|| {
        web.store
            .timeline(&r, before, PAGE, |a| filter.matches(a) && can.activity(a))
    })?;
    // A page's activities and HTML are freed on every runtime thread's malloc arena in turn:
    // have the trimmer give them back, as after a fetch.
    crate::memory::fetched();
    let mailboxes: Vec<String> = mailbox_list(&web)
        .into_iter()
        .filter(|(_, owner, _)| viewer.owns(owner))
        .map(|(name, ..)| name)
        .collect();
    Ok(Html(pages::record(&pages::Timeline {
        record: &rec,
        acts: &acts,
        older,
        filter: &filter,
        mailboxes: &mailboxes,
    })))
}

/// The activity `id`, if it exists and the reader may see it.
fn readable(web: &Shared, viewer: &Viewer, id: u64) -> Result<crate::model::Activity, WebError> {
    let a = web
        .store
        .activity(id)?
        .ok_or_else(|| WebError::NotFound(format!("no activity {id}")))?;
    if access(web, viewer).activity(&a) {
        Ok(a)
    } else {
        Err(WebError::Forbidden(format!("activity {id}")))
    }
}

pub(super) async fn activity(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<u64>,
) -> Result<Html<String>, WebError> {
    let a = readable(&web, &viewer, id)?;
    let fields = web.store.field_state(id)?.unwrap_or_default().crm;
    let trail = web.store.audit(id)?;
    let tracked = !web.store.untracked_ids()?.contains(&id);
    Ok(Html(pages::activity(&a, &fields, &trail, tracked)))
}

/// An attachment's bytes, always as a download (never rendered by the browser).
pub(super) async fn attachment(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path((id, n)): Path<(u64, usize)>,
) -> Result<Response, WebError> {
    let missing = || WebError::NotFound(format!("no attachment {n} of activity {id}"));
    let a = readable(&web, &viewer, id)?;
    let m = n
        .checked_sub(1)
        .and_then(|i| a.attachments.get(i))
        .ok_or_else(missing)?;
    let bytes = web.store.blob(&m.sha256)?.ok_or_else(missing)?;
    let name: String = m
        .name
        .as_deref()
        .unwrap_or("attachment")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._- ".contains(*c))
        .collect();
    let disposition = format!(
        "attachment; filename=\"{}\"",
        if name.is_empty() { "attachment" } else { &name }
    );
    let mut res = Response::new(Body::from(bytes));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

/// One row of the mailboxes page, from the configuration, the store, and the worker when it
/// runs in this process.
fn mailbox_row(
    web: &Shared,
    outgoing: &std::collections::BTreeMap<String, crate::store::OutboxSummary>,
    (name, owner, host): (String, String, String),
) -> Result<pages::MailboxRow, WebError> {
    let st = web.store.mailbox_state(&name)?;
    let worker = match &web.agent {
        None => Some((
            "not known here".to_string(),
            "this process runs no agent: `foldertrack status` on the agent's host".to_string(),
        )),
        Some(agent) => agent
            .live(&name)
            .map(|l| (l.state.label().to_string(), l.state.detail())),
    };
    let outgoing = outgoing
        .get(&name)
        .map(|o| {
            o.counts
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(state, n)| format!("{n} {}", state.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty());
    Ok(pages::MailboxRow {
        name,
        owner,
        host,
        worker,
        outgoing,
        last_success: st.last_success,
        last_error: st.last_error,
        last_tracked: st.last_tracked,
    })
}

/// The mailboxes the reader may see (an admin: all; a user: their own).
pub(super) async fn mailboxes(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, WebError> {
    let outgoing = web.store.outbox_summary()?;
    let rows = mailbox_list(&web)
        .into_iter()
        .filter(|(_, owner, _)| viewer.owns(owner))
        .map(|m| mailbox_row(&web, &outgoing, m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Html(pages::mailboxes(&rows)))
}

/// One mailbox: its health, its folders with their rules and checkpoints, its alerts.
pub(super) async fn mailbox(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Result<Html<String>, WebError> {
    let known = mailbox_list(&web).into_iter().find(|(n, ..)| *n == name);
    let m = known.ok_or_else(|| WebError::NotFound(format!("no mailbox {name}")))?;
    if !viewer.owns(&m.1) {
        return Err(WebError::Forbidden(format!("mailbox {name}")));
    }
    let folders: Vec<_> = web
        .store
        .folder_states()?
        .into_iter()
        .filter(|f| f.mailbox == name)
        .collect();
    let alerts: Vec<_> = web
        .store
        .alerts(crate::store::MAX_ALERTS)?
        .into_iter()
        .filter(|a| a.mailbox == name)
        .collect();
    let lags = crate::metrics::metrics().folder_lags();
    let lag: Vec<String> = folders
        .iter()
        .map(|f| {
            let l = lags.get(&(f.mailbox.clone(), f.folder.clone()));
            match (
                &web.agent,
                l.and_then(|l| Some((l.messages(), l.behind_since?))),
            ) {
                (None, _) => "—".to_string(),
                (Some(_), Some((n, since))) => {
                    format!("{n} behind for {} s", since.elapsed().as_secs())
                }
                (Some(_), None) => "caught up".to_string(),
            }
        })
        .collect();
    let row = mailbox_row(&web, &web.store.outbox_summary()?, m)?;
    Ok(Html(pages::mailbox(&row, &folders, &lag, &alerts)))
}

/// The messages that could not be tracked, with why (a user: from their own mailboxes).
pub(super) async fn quarantine(
    State(web): State<Shared>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, WebError> {
    let own: Vec<String> = mailbox_list(&web)
        .into_iter()
        .filter(|(_, owner, _)| viewer.owns(owner))
        .map(|(name, ..)| name)
        .collect();
    let entries: Vec<_> = web
        .store
        .quarantine()?
        .into_iter()
        .filter(|q| matches!(viewer, Viewer::Admin) || own.contains(&q.source.mailbox))
        .collect();
    Ok(Html(pages::quarantine(&entries)))
}
