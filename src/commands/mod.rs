//! What each CLI command does, as library functions that return text or JSON, so that
//! `main.rs` only parses arguments and maps errors to exit codes, and tests can call them.
//!
//! This file routes a [`Request`] (here, or to the running agent); each group of commands has
//! its own file.

// `activities::invoking_user`, which `main.rs` names the audit trail's `cli:USER` with.
pub mod activities;
pub(crate) mod agents;
pub(crate) mod check;
#[cfg(feature = "demo")]
pub mod demo;
pub mod outbox;
pub(crate) mod progress;
pub(crate) mod quarantine;
pub mod records;
pub(crate) mod rules;
pub mod show;
pub(crate) mod status;
pub mod store;
pub(crate) mod sync;

use crate::agent::AgentHandle;
use crate::config::{Config, StoreEngine};
use crate::protocol::{PartialFailure, Reply, Request};
use crate::store::{Store, StoreError};
use anyhow::Result;
use std::sync::Arc;

/// Runs `req`: against the store here when it is free, else through the running agent. On
/// PostgreSQL the store is never held by one process: see [`dispatch_shared`].
pub async fn dispatch(req: Request, config: &Config) -> Reply {
    if config.store != StoreEngine::Sled {
        return dispatch_shared(req, config).await;
    }
    match Store::open_config(config) {
        Ok(store) => {
            let store = Arc::new(store);
            execute(req, config, &store, None).await
        }
        Err(StoreError::Locked { dir, pid }) => match crate::control::call(&config.data_dir, &req)
            .await
        {
            Ok(reply) => reply,
            Err(e) => Reply::from_result(Err(anyhow::Error::new(StoreError::Locked { dir, pid })
                .context(format!("and its control socket did not answer ({e})")))),
        },
        Err(e) => Reply::from_result(Err(e.into())),
    }
}

/// A command on a PostgreSQL store: it reads and writes the database directly, with or without
/// an agent. Only the requests that are about the running agent itself go to it when its
/// control socket answers: `sync` (wakes its tasks instead of syncing beside them), `status`
/// (its live task states), and sending (its queue sends, so a message is never sent by two
/// processes at once).
async fn dispatch_shared(req: Request, config: &Config) -> Reply {
    let about_agent = matches!(
        req,
        Request::Sync { .. }
            | Request::Status { .. }
            | Request::ActivitiesSend { .. }
            | Request::OutboxRetry { .. }
    );
    if about_agent {
        // No agent (no socket, or a stale one): the connect fails at once and we go on here.
        if let Ok(reply) = crate::control::call(&config.data_dir, &req).await {
            return reply;
        }
    }
    match Store::open_config(config) {
        Ok(store) => execute(req, config, &Arc::new(store), None).await,
        Err(e) => Reply::from_result(Err(e.into())),
    }
}

/// Runs an export request: streamed row by row to `out` when the store is free here (always
/// on PostgreSQL), else answered by the running agent (buffered there, then printed).
pub async fn export(req: Request, config: &Config, out: &mut dyn std::io::Write) -> Reply {
    match Store::open_config(config) {
        Ok(store) => {
            let r = match &req {
                Request::ActivitiesExport { filter, format } => {
                    crate::export::activities(&store, filter, *format, out)
                }
                Request::RecordsExport { rtype, format } => {
                    crate::export::records(&store, rtype.as_deref(), *format, out)
                }
                _ => Err(anyhow::anyhow!("not an export request")),
            };
            Reply::from_result(r.map(|_| String::new()))
        }
        Err(StoreError::Locked { .. }) => dispatch(req, config).await,
        Err(e) => Reply::from_result(Err(e.into())),
    }
}

/// Runs `req` against an open store. `agent` is set when a running agent serves the request.
pub(crate) async fn execute(
    req: Request,
    config: &Config,
    store: &Arc<Store>,
    agent: Option<&AgentHandle>,
) -> Reply {
    let r = match req {
        Request::Sync { mailbox, progress } => match agent {
            Some(a) => Ok(a.wake(mailbox.as_deref())),
            None => sync::sync(config, store, mailbox.as_deref(), progress).await,
        },
        Request::ActivitiesExport { filter, format } => {
            buffered(|out| crate::export::activities(store, &filter, format, out))
        }
        Request::RecordsExport { rtype, format } => {
            buffered(|out| crate::export::records(store, rtype.as_deref(), format, out))
        }
        Request::Check { mailbox } => verdict(
            check::check(config, store, mailbox.as_deref()).await,
            "check",
        ),
        Request::RecordsPut { records, from } => records::put(store, records, &from),
        Request::RecordsList { rtype, json } => records::list(store, rtype.as_deref(), json),
        Request::RecordsShow { record, json } => records::show(store, &record, json),
        Request::ActivitiesList { regarding, json } => {
            activities::list(store, regarding.as_deref(), json)
        }
        Request::ActivitiesShow { id, json } => activities::show(store, id, json),
        Request::ActivitiesLink {
            id,
            regarding,
            user,
        } => activities::link(store, id, &regarding, &user),
        Request::ActivitiesHistory { id, json } => activities::history(store, id, json),
        Request::ActivitiesUntrack {
            id,
            delete,
            reason,
            user,
        } => {
            let how = activities::Untrack {
                delete,
                reason: reason.as_deref(),
            };
            activities::untrack(config, store, id, &user, how).await
        }
        Request::ActivitiesSet {
            id,
            read,
            follow_up,
            importance,
            categories,
            user,
        } => match activities::field_change(read, follow_up, importance, &categories) {
            Ok(change) => activities::set(config, store, id, &change, &user).await,
            Err(e) => Err(e),
        },
        Request::ActivitiesAttachment { id, n } => return activities::attachment(store, id, n),
        Request::ActivitiesSend { outgoing } => outbox::send(config, store, &outgoing, agent).await,
        Request::Status { json } => status::status(config, store, agent, json),
        Request::Agents { json } => agents::list(config, store, json),
        Request::MailboxRelease { name } => agents::release(config, store, &name),
        Request::QuarantineList { json } => quarantine::list(store, json),
        Request::QuarantineShow { id } => quarantine::show(store, id),
        Request::QuarantineReplay { id } => quarantine::replay(config, store, id),
        Request::QuarantineDrop { id } => quarantine::drop_entry(store, id),
        Request::RulesList => Ok(rules::list(config)),
        Request::RulesCheck => verdict(rules::check(config, store), "rules check"),
        Request::OutboxList { json } => outbox::list(store, json),
        Request::OutboxRetry { id } => outbox::retry(config, store, id, agent).await,
        Request::OutboxCancel { id } => outbox::cancel(store, id),
    };
    Reply::from_result(r)
}

/// An export answered by the agent: buffered whole, as one reply carries it.
fn buffered(export: impl FnOnce(&mut dyn std::io::Write) -> Result<u64>) -> Result<String> {
    let mut buf = Vec::new();
    export(&mut buf).map(|_| String::from_utf8_lossy(&buf).into_owned())
}

/// A check's report (`check`, `rules check`): printed either way, and exit code 1 when it
/// found problems.
fn verdict(r: Result<(String, bool)>, what: &str) -> Result<String> {
    match r {
        Ok((text, true)) => Ok(text),
        Ok((text, false)) => Err(PartialFailure {
            stdout: text,
            message: format!("{what} found problems (marked FAIL above)"),
        }
        .into()),
        Err(e) => Err(e),
    }
}
