//! `status`: per mailbox its health and folders, then totals and recent alerts, from the store
//! and (when the agent runs) its live task states.

use super::show::table;
use crate::config::Config;
use crate::model::{text_enum, AlertLevel};
use crate::store::{FolderState, MailboxState, Store, StoredAlert};
use anyhow::Result;
use serde::Serialize;

/// `status [--json]`.
pub(crate) fn status(
    config: &Config,
    store: &Store,
    agent: Option<&crate::agent::AgentHandle>,
    json: bool,
) -> Result<String> {
    let st = Status::collect(config, store, agent)?;
    if json {
        return Ok(serde_json::to_string_pretty(&st)? + "\n");
    }
    Ok(st.to_text())
}

/// The `status` report: per mailbox its health and folders, then totals and recent alerts.
///
/// Its JSON form (`status --json`) is for scripts; the shape is documented in the README
/// ("Status") and only grows: fields are added, never renamed or removed.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// Version of this JSON shape.
    pub status_version: u32,
    pub data_dir: String,
    /// `running (pid N)` when a `run` agent answered, else `not running`.
    pub agent: String,
    /// The store's engine: `sled`, or `postgres (host, database, user)`.
    pub store: String,
    pub schema_version: u32,
    pub mailboxes: Vec<MailboxStatus>,
    pub activities: usize,
    pub quarantined: usize,
    /// The most recent stored alerts of every mailbox, newest first.
    pub alerts: Vec<StoredAlert>,
    /// The agents sharing the PostgreSQL store (empty on sled): name, last seen, how many
    /// mailboxes each holds.
    pub agents: Vec<crate::store::pg::lease::AgentRow>,
}

/// Which agent works a mailbox, until when (PostgreSQL; `null` on sled and while free).
#[derive(Debug, Serialize)]
pub(crate) struct LeaseStatus {
    pub agent: String,
    /// The fencing token: bumped at every grant.
    pub epoch: i64,
    /// When the lease lapses unless renewed (RFC 3339 UTC, the database's clock).
    pub until: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MailboxStatus {
    pub name: String,
    pub server: String,
    /// `ok`, `failing`, `disabled` or `never synced` (kept for older scripts; see `incoming`).
    pub state: MailboxHealth,
    /// The incoming (IMAP) side, as Dynamics' mailbox status shows it.
    pub incoming: Incoming,
    /// The outgoing (SMTP) side and its outbox, like Dynamics' "outgoing email status".
    pub outgoing: Outgoing,
    /// Messages on the server not yet processed, over all folders (an upper bound).
    pub lag: u32,
    #[serde(flatten)]
    pub health: MailboxState,
    /// What the running agent's task for this mailbox is doing now (only while `run` is going).
    pub live: Option<crate::worker::LiveState>,
    /// The mailbox's lease (PostgreSQL): which agent works it.
    pub lease: Option<LeaseStatus>,
    pub folders: Vec<FolderStatus>,
    /// This mailbox's alerts, newest first: stored ones, and the ones `status` works out now
    /// (a rule pointing at a missing record; nothing tracked for `quiet_hours`).
    pub mailbox_alerts: Vec<MailboxAlert>,
}

/// The incoming side's state.
#[derive(Debug, Serialize)]
pub(crate) struct Incoming {
    /// `enabled`, `disabled`, `backing off`, `failing` (last pass failed, no agent running) or
    /// `never synced`.
    pub state: IncomingState,
    /// Why it is disabled, backing off or failing.
    pub reason: Option<String>,
    /// While backing off: the next attempt (RFC 3339 UTC).
    pub until: Option<String>,
}

/// The outgoing side's state.
#[derive(Debug, Serialize)]
pub(crate) struct Outgoing {
    /// `not configured`, `enabled`, or `attention` (a send failed, is in doubt, or cannot log in).
    pub state: OutgoingState,
    /// `host:port (tls)` of the SMTP server, when configured.
    pub server: Option<String>,
    /// Outbox entries of this mailbox by state (`queued`, `sent`, `failed`, `unknown`, …).
    pub outbox: std::collections::BTreeMap<String, usize>,
}

impl Outgoing {
    /// One line for the text status.
    pub(crate) fn to_text(&self) -> String {
        let Some(server) = &self.server else {
            return self.state.to_string();
        };
        let counts: Vec<String> = self
            .outbox
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!(
            "{} via {server}; outbox: {}",
            self.state,
            if counts.is_empty() {
                "empty".to_string()
            } else {
                counts.join(", ")
            }
        )
    }
}

text_enum! {
    /// A mailbox's state as `status` summed it up before `incoming` and `outgoing` existed.
    pub(crate) enum MailboxHealth {
        /// The last pass worked.
        Ok = "ok",
        /// The last pass failed.
        Failing = "failing",
        /// The running agent disabled the mailbox after a permanent error.
        Disabled = "disabled",
        /// No pass yet.
        NeverSynced = "never synced",
    }
}

text_enum! {
    /// The incoming (IMAP) side's state, as Dynamics' mailbox status names it.
    pub(crate) enum IncomingState {
        /// Tracking (an agent task runs, or the last pass worked).
        Enabled = "enabled",
        /// Stopped after a permanent error, until the config changes.
        Disabled = "disabled",
        /// Waiting to retry after an error.
        BackingOff = "backing off",
        /// The last pass failed (no agent running).
        Failing = "failing",
        /// No pass yet.
        NeverSynced = "never synced",
    }
}

/// Without a running agent, the incoming side is what the last pass left.
impl From<MailboxHealth> for IncomingState {
    fn from(h: MailboxHealth) -> IncomingState {
        match h {
            MailboxHealth::Ok => IncomingState::Enabled,
            MailboxHealth::Failing => IncomingState::Failing,
            MailboxHealth::Disabled => IncomingState::Disabled,
            MailboxHealth::NeverSynced => IncomingState::NeverSynced,
        }
    }
}

text_enum! {
    /// The outgoing (SMTP) side's state, like Dynamics' "outgoing email status".
    pub(crate) enum OutgoingState {
        /// The mailbox has no `[smtp]`.
        NotConfigured = "not configured",
        /// Sending works as far as is known.
        Enabled = "enabled",
        /// A send failed, is in doubt, or cannot log in.
        Attention = "attention",
    }
}

/// One alert of a mailbox.
#[derive(Debug, Serialize)]
pub(crate) struct MailboxAlert {
    /// How serious it is.
    pub level: AlertLevel,
    pub message: String,
    /// When it was last raised (for derived alerts: now).
    pub at: String,
    pub first_at: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct FolderStatus {
    #[serde(flatten)]
    pub state: FolderState,
    /// Messages the server had that are not yet processed, by UID (an upper bound).
    pub lag: u32,
    /// Seconds the folder has been behind the server (only while `run` is going).
    pub behind_for: Option<u64>,
}

/// The alerts `status` works out from the configuration and the store.
fn derived_alerts(
    config: &Config,
    mb: &crate::config::MailboxConfig,
    store: &Store,
    health: &MailboxState,
    now: &str,
) -> Result<Vec<MailboxAlert>> {
    let mut out = Vec::new();
    let alert = |level: AlertLevel, message: String| MailboxAlert {
        level,
        message,
        at: now.to_string(),
        first_at: now.to_string(),
        count: 1,
    };
    for r in &mb.rules {
        if let crate::config::Regarding::Fixed(x) = &r.regarding {
            if store.record(x)?.is_none() {
                out.push(alert(
                    AlertLevel::Error,
                    format!("rule `{}` points to {x}, which is not in the records: its mail is tracked unlinked (import the record, or fix the rule)", r.folder),
                ));
            }
        }
    }
    if health.last_error.is_none() && health.last_success.is_some() {
        let quiet = config.health.quiet_hours as i64 * 3600;
        let since = health
            .last_tracked
            .as_ref()
            .or(health.first_success.as_ref());
        if let Some(t) = since {
            let hours = (crate::time::parse_date(now) - crate::time::parse_date(t)) / 3600;
            if hours * 3600 >= quiet {
                out.push(alert(
                    AlertLevel::Warning,
                    format!(
                        "synced but nothing tracked for {hours} hours (last tracked: {}); is the folder rule right, or do users still drag mail there?",
                        health.last_tracked.as_deref().unwrap_or("never")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

impl Status {
    pub(crate) fn collect(
        config: &Config,
        store: &Store,
        agent: Option<&crate::agent::AgentHandle>,
    ) -> Result<Status> {
        let folders = store.folder_states()?;
        let outboxes = store.outbox_summary()?;
        let stored_alerts = store.alerts(1000)?;
        let lags = crate::metrics::metrics().folder_lags();
        let now = crate::time::humantime_now();
        let (mut leases, agents) = leases_and_agents(config, store)?;
        let mut mailboxes = Vec::new();
        for mb in &config.mailboxes {
            let mut health = store.mailbox_state(&mb.name)?;
            health.name.clear(); // `name` is already the mailbox's
            let live = agent.and_then(|a| a.live(&mb.name));
            let state = match (&live, &health.last_attempt, &health.last_error) {
                (Some(l), _, _) if l.state.is_disabled() => MailboxHealth::Disabled,
                (_, None, _) => MailboxHealth::NeverSynced,
                (_, Some(_), None) => MailboxHealth::Ok,
                (_, Some(_), Some(_)) => MailboxHealth::Failing,
            };
            use crate::worker::WorkerState;
            let incoming = match live.as_ref().map(|l| &l.state) {
                Some(WorkerState::Disabled { reason }) => Incoming {
                    state: IncomingState::Disabled,
                    reason: Some(reason.clone()),
                    until: None,
                },
                Some(WorkerState::BackingOff { until, error }) => Incoming {
                    state: IncomingState::BackingOff,
                    reason: Some(error.clone()),
                    until: Some(crate::time::rfc3339_utc(*until)),
                },
                Some(_) => Incoming {
                    state: IncomingState::Enabled,
                    reason: None,
                    until: None,
                },
                None => Incoming {
                    state: state.into(),
                    reason: health.last_error.clone(),
                    until: None,
                },
            };
            let folders: Vec<FolderStatus> = folders
                .iter()
                .filter(|f| f.mailbox == mb.name)
                .map(|f| {
                    let live_lag = lags.get(&(f.mailbox.clone(), f.folder.clone()));
                    let covered = f.last_uid.saturating_add(1).max(f.synced_uid_next);
                    FolderStatus {
                        lag: live_lag.map_or(f.uid_next.saturating_sub(covered), |l| l.messages()),
                        behind_for: live_lag
                            .filter(|_| agent.is_some())
                            .and_then(|l| l.behind_since)
                            .map(|s| s.elapsed().as_secs()),
                        state: f.clone(),
                    }
                })
                .collect();
            let mut mailbox_alerts = derived_alerts(config, mb, store, &health, &now)?;
            mailbox_alerts.extend(
                stored_alerts
                    .iter()
                    .filter(|a| a.mailbox == mb.name)
                    .take(10)
                    .map(|a| MailboxAlert {
                        level: a.alert.level,
                        message: a.alert.message.clone(),
                        at: a.at.clone(),
                        first_at: a.first_at.clone(),
                        count: a.count,
                    }),
            );
            mailboxes.push(MailboxStatus {
                name: mb.name.clone(),
                server: format!("{}:{} ({})", mb.host, mb.port, mb.tls),
                state,
                incoming,
                outgoing: super::outbox::outgoing_state(config, &mb.name, outboxes.get(&mb.name)),
                lag: folders.iter().map(|f| f.lag).sum(),
                health,
                live,
                lease: leases.remove(&mb.name),
                folders,
                mailbox_alerts,
            });
        }
        Ok(Status {
            status_version: 1,
            data_dir: config.data_dir.display().to_string(),
            agent: agent.map_or_else(
                || "not running".to_string(),
                |a| format!("running (pid {})", a.pid),
            ),
            store: store.describe(),
            schema_version: store.schema_version()?,
            mailboxes,
            activities: store.activity_count(),
            quarantined: store.quarantine_count(),
            alerts: stored_alerts.into_iter().take(20).collect(),
            agents,
        })
    }

    pub(crate) fn to_text(&self) -> String {
        let mut s = format!(
            "data dir {}; store {} (schema {}); agent {}\n",
            self.data_dir, self.store, self.schema_version, self.agent
        );
        for a in self
            .alerts
            .iter()
            .filter(|a| a.mailbox == crate::store::STORE_ALERTS)
        {
            s.push_str(&format!(
                "  {:<7} {} {}\n",
                a.alert.level, a.at, a.alert.message
            ));
        }
        for a in &self.agents {
            s.push_str(&format!(
                "agent {}: {} mailbox(es), last seen {}{}\n",
                a.name,
                a.mailboxes,
                a.last_seen,
                if a.live { "" } else { " (lapsed)" }
            ));
        }
        for m in &self.mailboxes {
            s.push_str(&m.to_text());
        }
        s.push_str(&format!(
            "\n{} activities, {} quarantined message(s)\n",
            self.activities, self.quarantined
        ));
        s
    }
}

/// The live leases by mailbox, and the agents, from the lease table (none on sled).
type LeasesAndAgents = (
    std::collections::HashMap<String, LeaseStatus>,
    Vec<crate::store::pg::lease::AgentRow>,
);

fn leases_and_agents(config: &Config, store: &Store) -> Result<LeasesAndAgents> {
    let Some(l) = store.leases() else {
        return Ok(Default::default());
    };
    let leases = l
        .list()?
        .into_iter()
        .filter(|r| r.live)
        .filter_map(|r| {
            let agent = r.agent?;
            Some((
                r.mailbox,
                LeaseStatus {
                    agent,
                    epoch: r.epoch,
                    until: r.until,
                },
            ))
        })
        .collect();
    Ok((leases, l.agents(config.agent.lease_ttl.as_secs_f64())?))
}

impl MailboxStatus {
    /// The mailbox's part of the text `status`: its sides, lease, live state, last error,
    /// outages, folders and alerts.
    fn to_text(&self) -> String {
        let m = self;
        let mut s = String::new();
        let incoming = match (&m.incoming.until, &m.incoming.reason) {
            (Some(u), _) => format!("{} until {u}", m.incoming.state),
            (None, Some(r)) if m.incoming.state == IncomingState::Disabled => {
                format!("disabled: {}", r.trim_start_matches("incoming disabled: "))
            }
            _ => m.incoming.state.to_string(),
        };
        s.push_str(&format!(
            "\nmailbox {} on {}: incoming {}; last success {}; lag {}\n  outgoing: {}\n",
            m.name,
            m.server,
            incoming,
            m.health.last_success.as_deref().unwrap_or("never"),
            m.lag,
            m.outgoing.to_text()
        ));
        if let Some(l) = &m.lease {
            s.push_str(&format!(
                "  lease: agent {} (epoch {}, until {})\n",
                l.agent,
                l.epoch,
                l.until.as_deref().unwrap_or("-")
            ));
        }
        if let Some(l) = &m.live {
            s.push_str(&format!(
                "  now: {}{}{} (reconnects {}, last pass {})\n",
                l.state.label(),
                l.mode
                    .map(|m| format!(" [{}]", m.as_str()))
                    .unwrap_or_default(),
                match l.state.detail() {
                    d if d.is_empty() => d,
                    d => format!(": {d}"),
                },
                l.reconnects,
                l.last_pass.as_deref().unwrap_or("-")
            ));
        }
        if let Some(e) = &m.health.last_error {
            s.push_str(&format!(
                "  last error ({} in a row): {e}\n",
                m.health.consecutive_errors
            ));
        }
        for o in m.health.outages.iter().rev().take(3) {
            s.push_str(&format!(
                "  outage {} → {}: {}\n",
                o.from,
                o.to.as_deref().unwrap_or("ongoing"),
                o.error
            ));
        }
        let rows: Vec<Vec<String>> = m
            .folders
            .iter()
            .map(|f| {
                vec![
                    f.state.folder.clone(),
                    f.state.rule.clone().unwrap_or_else(|| "-".into()),
                    f.state.uidvalidity.to_string(),
                    f.state.last_uid.to_string(),
                    f.state.messages.to_string(),
                    f.lag.to_string(),
                    f.state.last_sync.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        if !rows.is_empty() {
            s.push_str(&indent(&table(
                &[
                    "FOLDER",
                    "RULE",
                    "UIDVALIDITY",
                    "LAST UID",
                    "MESSAGES",
                    "LAG",
                    "LAST SYNC",
                ],
                &rows,
            )));
        }
        if !m.mailbox_alerts.is_empty() {
            s.push_str("  alerts:\n");
            for a in &m.mailbox_alerts {
                let times = if a.count > 1 {
                    format!(" ({} times since {})", a.count, a.first_at)
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "    {:<7} {} {}{times}\n",
                    a.level, a.at, a.message
                ));
            }
        }
        s
    }
}

fn indent(t: &str) -> String {
    t.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status --json` and the text keep the strings scripts and the README know.
    #[test]
    fn states_keep_their_strings() {
        fn json(v: impl Serialize) -> serde_json::Value {
            serde_json::to_value(v).unwrap()
        }
        for (h, s, incoming) in [
            (MailboxHealth::Ok, "ok", "enabled"),
            (MailboxHealth::Failing, "failing", "failing"),
            (MailboxHealth::Disabled, "disabled", "disabled"),
            (MailboxHealth::NeverSynced, "never synced", "never synced"),
        ] {
            assert_eq!(json(h), s);
            let i = IncomingState::from(h);
            assert_eq!((json(i), i.to_string()), (incoming.into(), incoming.into()));
        }
        let b = IncomingState::BackingOff;
        assert_eq!(
            (json(b), b.to_string()),
            ("backing off".into(), "backing off".into())
        );
        for (o, s) in [
            (OutgoingState::NotConfigured, "not configured"),
            (OutgoingState::Enabled, "enabled"),
            (OutgoingState::Attention, "attention"),
        ] {
            assert_eq!((json(o), o.to_string()), (s.into(), s.into()));
        }
    }

    #[test]
    fn quiet_mailbox_alert_after_quiet_hours_without_tracking() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::parse(
            &dir.path().join("f.toml"),
            "[health]\nquiet_hours = 24\n[[mailbox]]\nname = \"a\"\nowner = \"systemuser:a\"\nhost = \"h\"\nuser = \"a\"\npassword_env = \"X\"\n",
        )
        .unwrap();
        let store = Store::open(&dir.path().join("data"), 1 << 20).unwrap();
        let now = "2026-11-28T12:00:00Z";
        let mut h = MailboxState {
            last_success: Some(now.into()),
            first_success: Some("2026-11-26T12:00:00Z".into()),
            ..Default::default()
        };
        let a = derived_alerts(&cfg, &cfg.mailboxes[0], &store, &h, now).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].level, AlertLevel::Warning);
        assert!(
            a[0].message
                .starts_with("synced but nothing tracked for 48 hours (last tracked: never)"),
            "{}",
            a[0].message
        );
        h.last_tracked = Some("2026-11-28T00:00:00Z".into());
        assert!(derived_alerts(&cfg, &cfg.mailboxes[0], &store, &h, now)
            .unwrap()
            .is_empty());
        h.last_tracked = Some("2026-11-27T11:00:00Z".into());
        assert_eq!(
            derived_alerts(&cfg, &cfg.mailboxes[0], &store, &h, now)
                .unwrap()
                .len(),
            1
        );
        // A failing mailbox has its own error; the quiet alert is for one that syncs fine.
        h.last_error = Some("down".into());
        assert!(derived_alerts(&cfg, &cfg.mailboxes[0], &store, &h, now)
            .unwrap()
            .is_empty());
    }
}
