//! `agents` and `mailbox release`: the agents sharing a PostgreSQL store, which mailboxes each
//! works, and handing one mailbox back for maintenance (DESIGN §5.2).

use super::show::table;
use crate::config::Config;
use crate::store::Store;
use anyhow::{bail, Result};

/// `agents [--json]`: every registered agent, live or lapsed, with the mailboxes it holds.
pub(crate) fn list(config: &Config, store: &Store, json: bool) -> Result<String> {
    let Some(l) = store.leases() else {
        bail!("`agents` is for several agents on one PostgreSQL store; on sled one agent works every mailbox");
    };
    let agents = l.agents(config.agent.lease_ttl.as_secs_f64())?;
    let leases = l.list()?;
    let held = |name: &str| -> Vec<&str> {
        leases
            .iter()
            .filter(|r| r.live && r.agent.as_deref() == Some(name))
            .map(|r| r.mailbox.as_str())
            .collect()
    };
    if json {
        let v: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "last_seen": a.last_seen,
                    "live": a.live,
                    "mailboxes": held(&a.name),
                })
            })
            .collect();
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                if a.live { "live" } else { "lapsed" }.into(),
                a.last_seen.clone(),
                held(&a.name).join(" "),
            ]
        })
        .collect();
    let free = leases.iter().filter(|r| !r.live).count();
    Ok(format!(
        "{}{free} mailbox(es) free or lapsed\n",
        table(&["AGENT", "STATE", "LAST SEEN", "MAILBOXES"], &rows)
    ))
}

/// `mailbox release NAME`: asks the owner to stop working the mailbox and hand it back; some
/// agent (not the same one, for a few seconds) takes it at its next round.
pub(crate) fn release(config: &Config, store: &Store, name: &str) -> Result<String> {
    if config.mailbox(name).is_none() {
        bail!("no mailbox named {name:?} in {}", config.path.display());
    }
    let Some(l) = store.leases() else {
        bail!("`mailbox release` is for several agents on one PostgreSQL store; on sled one agent works every mailbox");
    };
    match l.request_release(name)? {
        Some(owner) => Ok(format!(
            "asked agent {owner} to hand mailbox {name} back; it does at its next lease renewal (within {} s), after the batch in hand\n",
            config.agent.lease_renew.as_secs()
        )),
        None => Ok(format!("no agent holds mailbox {name} now: nothing to release\n")),
    }
}
