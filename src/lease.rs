//! Several agents on one PostgreSQL store (DESIGN §5.2): the agent's lease manager. It
//! registers the agent, takes its fair share of the configured mailboxes from the lease
//! table, starts a mailbox worker for each lease it is granted, renews them, and stops a
//! worker the moment its lease is released, lost, or about to lapse unrenewed. The writes of
//! a leased mailbox are fenced in the store ([`crate::store::pg::lease`]); this module only
//! decides which mailboxes this agent works.
//!
//! Balance: with `n` live agents and `m` mailboxes each agent aims at `ceil(m / n)`. Below
//! it, an agent takes free or lapsed mailboxes (up to [`GRANT_AT_ONCE`] a round, so 1,000
//! mailboxes start within seconds while the login semaphore spreads the IMAP logins); above
//! it, it hands back up to [`RELEASE_AT_ONCE`] at a time, each after its worker finished its
//! batch, so a joining agent takes its share without an IDLE storm.

use crate::config::AgentSettings;
use crate::store::pg::lease::{Grant, Leases};
use crate::store::{Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most mailboxes granted in one round.
pub(crate) const GRANT_AT_ONCE: i64 = 64;

/// The most mailboxes being handed back at once (as many as an agent logs in to at once).
pub(crate) const RELEASE_AT_ONCE: i64 = 16;

/// Starts the worker of one mailbox; it stops when the token is cancelled.
pub(crate) type Spawn = Box<dyn Fn(&str, CancellationToken) -> JoinHandle<()> + Send>;

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live process uses this agent's name.
    #[error("another agent named {name:?} is running (it renewed its registration within the last {ttl_s} s); give each agent its own [agent] name, or run one per --data-dir")]
    NameInUse { name: String, ttl_s: u64 },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn not_postgres() -> StoreError {
    StoreError::Config("mailbox leases need [store] engine = \"postgres\"".into())
}

/// A lease this agent holds, and its mailbox's worker.
struct Held {
    epoch: i64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Past this instant the lease may have lapsed: the worker is stopped before.
    valid_until: Instant,
    /// Being handed back: the worker was told to stop, the lease goes when it has.
    releasing: bool,
}

/// The lease manager of one agent.
pub(crate) struct Manager {
    store: Arc<Store>,
    settings: AgentSettings,
    /// This process among all agents ever named alike.
    instance: String,
    mailboxes: Vec<String>,
    spawn: Spawn,
    held: BTreeMap<String, Held>,
    /// Mailboxes this agent handed back, not taken again before the instant.
    cooldown: HashMap<String, Instant>,
    next_renew: Instant,
    /// The last renewal failed (logged once per outage).
    renew_failing: bool,
    /// A lease statement that outlived its time limit and still runs: no other is started
    /// until it ends.
    stuck: Option<tokio::task::AbortHandle>,
}

impl Manager {
    pub(crate) fn new(
        store: Arc<Store>,
        settings: AgentSettings,
        mailboxes: Vec<String>,
        spawn: Spawn,
    ) -> Manager {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let instance = format!("{}-{nanos}", std::process::id());
        Manager {
            store,
            settings,
            instance,
            mailboxes,
            spawn,
            held: BTreeMap::new(),
            cooldown: HashMap::new(),
            next_renew: Instant::now(),
            renew_failing: false,
            stuck: None,
        }
    }

    fn leases(&self) -> Result<Leases<'_>, StoreError> {
        self.store.leases().ok_or_else(not_postgres)
    }

    /// Runs `f` on the lease table off the runtime, for at most `lease_renew`: a database that
    /// stops answering (a partition leaves a statement waiting on its socket) must not keep the
    /// manager from stopping the workers whose leases are about to lapse. `None`: an earlier
    /// statement is still stuck, nothing was run.
    async fn sql<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(Leases<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<Result<T, StoreError>> {
        if let Some(h) = &self.stuck {
            if !h.is_finished() {
                return None;
            }
            self.stuck = None;
        }
        let store = self.store.clone();
        let mut job =
            tokio::task::spawn_blocking(move || f(store.leases().ok_or_else(not_postgres)?));
        let limit = Instant::now() + self.settings.lease_renew;
        loop {
            // While it runs, leases about to lapse still stop their workers on time.
            let lapse = self
                .held
                .values()
                .map(|h| h.valid_until - self.margin())
                .min()
                .map_or(limit, |t| t.min(limit));
            tokio::select! {
                r = &mut job => {
                    return Some(r.unwrap_or_else(|e| {
                        Err(StoreError::Config(format!("lease statement failed: {e}")))
                    }))
                }
                _ = tokio::time::sleep_until(lapse) => {
                    self.expire();
                    if Instant::now() >= limit {
                        self.stuck = Some(job.abort_handle());
                        return Some(Err(StoreError::Config(format!(
                            "the database did not answer a lease statement within {} s",
                            self.settings.lease_renew.as_secs()
                        ))));
                    }
                }
            }
        }
    }

    fn ttl(&self) -> f64 {
        self.settings.lease_ttl.as_secs_f64()
    }

    /// How long before a lease's end its worker is stopped: the renewal round may be late by
    /// a tick, the database's clock runs a little apart from ours, and a worker takes a moment
    /// to end its IDLE (a fifth of the TTL, at least 1 s: 4 s of the default 20).
    fn margin(&self) -> Duration {
        (self.settings.lease_ttl / 5).max(Duration::from_secs(1))
    }

    /// The pause between rounds.
    fn tick(&self) -> Duration {
        (self.settings.lease_renew / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Registers the agent and takes its first share; while another live process has its name,
    /// waits for that one's registration to lapse (an agent restarted right after a crash), up
    /// to twice the TTL.
    ///
    /// # Errors
    /// [`LeaseError::NameInUse`] when the name stays in use; store errors.
    pub(crate) async fn register(&mut self, cancel: &CancellationToken) -> Result<(), LeaseError> {
        let give_up = Instant::now() + self.settings.lease_ttl * 2;
        let name = self.settings.name.clone();
        loop {
            if self.leases()?.register(&name, &self.instance, self.ttl())? {
                self.leases()?.ensure(&self.mailboxes)?;
                if let Some(f) = self.store.fences() {
                    f.enable(&name);
                }
                tracing::info!(agent = %name, mailboxes = self.mailboxes.len(), "agent registered: taking a share of the mailboxes");
                // The first share is taken before the agent says it runs: a command sent to
                // it right after finds its mailboxes held.
                self.round().await;
                return Ok(());
            }
            if Instant::now() >= give_up || cancel.is_cancelled() {
                return Err(LeaseError::NameInUse {
                    name: name.clone(),
                    ttl_s: self.settings.lease_ttl.as_secs(),
                });
            }
            tracing::warn!(agent = %name, "an agent of this name was seen within the lease TTL: waiting for it to lapse");
            tokio::time::sleep(self.tick()).await;
        }
    }

    /// The database failed the first registration (down, full, refusing writes): the agent
    /// runs on, tries again with backoff (1 s doubling to 30 s), shows the error as every
    /// mailbox's state meanwhile, and once registered records the outage and an alert for
    /// each mailbox, then works as usual. Gives up only when the name is in use.
    pub(crate) async fn register_then_run(
        mut self,
        cancel: CancellationToken,
        lives: Vec<crate::worker::Live>,
        first: StoreError,
    ) {
        let since = crate::time::humantime_now();
        let error = first.to_string();
        let mut backoff = crate::worker::Backoff::new(Duration::from_secs(30));
        let mut attempts = 1;
        tracing::warn!(error = %error, "cannot register this agent in the database; trying again with backoff");
        loop {
            let d = backoff.delay();
            let until = crate::worker::unix_now() + d.as_secs_f64().ceil() as i64;
            for l in &lives {
                l.set(crate::worker::WorkerState::BackingOff {
                    until,
                    error: format!("cannot register this agent in the database: {error}"),
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = cancel.cancelled() => return,
            }
            attempts += 1;
            match self.register(&cancel).await {
                Ok(()) => break,
                Err(LeaseError::Store(e)) => {
                    tracing::debug!(error = %e, "registration failed again");
                }
                Err(e) => {
                    tracing::error!(error = %e, "the agent works no mailbox");
                    return;
                }
            }
        }
        for l in &lives {
            l.update(|s| {
                if matches!(s.state, crate::worker::WorkerState::BackingOff { .. }) {
                    s.state = crate::worker::WorkerState::Elsewhere;
                }
            });
        }
        self.record_outage(&since, &error, attempts);
        self.run(cancel).await;
    }

    /// Writes, for each mailbox, the outage the failed registration was and an alert (the
    /// store could not take them while it failed).
    fn record_outage(&self, since: &str, error: &str, attempts: u32) {
        let now = crate::time::humantime_now();
        let store = &self.store;
        let written = self.mailboxes.iter().try_for_each(|m| {
            let mut st = store.mailbox_state(m)?;
            st.failed_since(since, error, attempts);
            store.put_mailbox_state(&st)?;
            store.add_alert(
                m,
                crate::store::late_outage_alert(since, &now, attempts, error),
            )
        });
        match written {
            Ok(()) => tracing::info!(since, "the store answers again: its outage is recorded"),
            Err(e) => tracing::warn!(error = %e, "cannot record the registration outage"),
        }
    }

    /// Works until `cancel`: renews, balances, starts and stops workers. Then stops every
    /// worker (each finishes its batch), hands every lease back and leaves.
    pub(crate) async fn run(mut self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            self.round().await;
            tokio::select! {
                _ = tokio::time::sleep(self.tick()) => {}
                _ = cancel.cancelled() => {}
            }
        }
        self.stop_all().await;
    }

    /// One round: renew when due, drop what lapsed, finish hand-backs, balance.
    async fn round(&mut self) {
        self.expire();
        if Instant::now() >= self.next_renew {
            self.renew().await;
            self.expire();
        }
        self.finish_releases().await;
        if let Some(Err(e)) = self.balance().await {
            tracing::debug!(error = %e, "lease balance round failed; next round tries again");
        }
    }

    /// Renews every held lease: those not renewed were lost (another agent was granted them
    /// while this one could not renew) and their workers stop now.
    async fn renew(&mut self) {
        let sent = Instant::now();
        let held: Vec<(String, i64)> = self
            .held
            .iter()
            .map(|(m, h)| (m.clone(), h.epoch))
            .collect();
        let n = held.len();
        let (name, instance, ttl) = (
            self.settings.name.clone(),
            self.instance.clone(),
            self.ttl(),
        );
        let renewed = self
            .sql(move |l| {
                let (kept, me) = l.renew(&name, &instance, &held, ttl)?;
                if !me {
                    // Counted out as dead (a pause past the TTL): register again.
                    tracing::warn!(agent = %name, "this agent's registration lapsed; registering again");
                    l.register(&name, &instance, ttl)?;
                }
                Ok(kept)
            })
            .await;
        match renewed {
            Some(Ok(kept)) => {
                tracing::debug!(
                    ms = sent.elapsed().as_millis() as u64,
                    held = n,
                    "leases renewed"
                );
                if self.renew_failing {
                    tracing::info!("lease renewals work again");
                }
                self.renew_failing = false;
                self.next_renew = sent + self.settings.lease_renew;
                self.renewed(kept.into_iter().collect(), sent + self.settings.lease_ttl);
            }
            Some(Err(e)) => {
                if !self.renew_failing {
                    tracing::warn!(error = %e, "cannot renew the mailbox leases; the mailboxes stop before their leases lapse unless the database answers");
                }
                self.renew_failing = true;
                self.next_renew = Instant::now() + self.tick();
            }
            None => self.next_renew = Instant::now() + self.tick(),
        }
    }

    /// What a renewal returned: the leases `kept` (with whether someone asked for them back)
    /// are good until `until`; the others were lost.
    fn renewed(&mut self, kept: HashMap<String, bool>, until: Instant) {
        let lost: Vec<String> = self
            .held
            .keys()
            .filter(|m| !kept.contains_key(*m))
            .cloned()
            .collect();
        for m in lost {
            self.lose(&m, "another agent holds it now");
        }
        for (m, asked) in kept {
            if let Some(h) = self.held.get_mut(&m) {
                h.valid_until = until;
                if asked && !h.releasing {
                    tracing::info!(mailbox = %m, "handing the mailbox back, as asked (mailbox release)");
                    self.start_release(&m);
                }
            }
        }
    }

    /// Stops the workers of leases about to lapse unrenewed.
    fn expire(&mut self) {
        let now = Instant::now() + self.margin();
        let lapsing: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.valid_until <= now)
            .map(|(m, _)| m.clone())
            .collect();
        for m in lapsing {
            self.lose(&m, "its lease could not be renewed in time");
        }
    }

    /// The lease of `mailbox` is gone: its writes are refused from now on and its worker
    /// stops (a batch in hand is refused at commit).
    fn lose(&mut self, mailbox: &str, why: &str) {
        if let Some(h) = self.held.remove(mailbox) {
            if let Some(f) = self.store.fences() {
                f.lapse(mailbox);
            }
            h.cancel.cancel();
            tracing::warn!(
                mailbox,
                epoch = h.epoch,
                reason = why,
                "mailbox lease lost: its worker stops"
            );
        }
    }

    /// Tells the worker of `mailbox` to stop; the lease goes back once it has.
    fn start_release(&mut self, mailbox: &str) {
        if let Some(h) = self.held.get_mut(mailbox) {
            h.releasing = true;
            h.cancel.cancel();
        }
    }

    /// Hands back the leases whose workers have stopped.
    async fn finish_releases(&mut self) {
        let done: Vec<(String, i64)> = self
            .held
            .iter()
            .filter(|(_, h)| h.releasing && h.task.is_finished())
            .map(|(m, h)| (m.clone(), h.epoch))
            .collect();
        if done.is_empty() {
            return;
        }
        for (m, _) in &done {
            self.held.remove(m);
            if let Some(f) = self.store.fences() {
                f.drop_lease(m);
            }
            self.cooldown
                .insert(m.clone(), Instant::now() + self.settings.lease_renew * 2);
        }
        let name = self.settings.name.clone();
        let back = done.clone();
        let released = self
            .sql(move |l| {
                for (m, epoch) in &back {
                    l.release(&name, m, *epoch)?;
                }
                Ok(())
            })
            .await;
        match released {
            Some(Ok(())) => {
                for (m, epoch) in done {
                    tracing::info!(mailbox = %m, epoch, "mailbox handed back");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot hand mailboxes back; their leases lapse on their own")
            }
            None => tracing::warn!(
                "the database is stuck; the mailboxes handed back lapse on their own"
            ),
        }
    }

    /// Takes free mailboxes up to the fair share, or hands some back above it. `None` when
    /// the round did not run (renewals failing, or a statement stuck).
    async fn balance(&mut self) -> Option<Result<(), StoreError>> {
        if self.renew_failing {
            return None;
        }
        let (mailboxes, ttl) = (self.mailboxes.clone(), self.ttl());
        let survey = match self.sql(move |l| l.survey(&mailboxes, ttl)).await? {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let agents = survey.live_agents.max(1);
        let share = (self.mailboxes.len() as i64 + agents - 1) / agents;
        let working = self.held.values().filter(|h| !h.releasing).count() as i64;
        if working < share && survey.free > 0 {
            let now = Instant::now();
            self.cooldown.retain(|_, until| *until > now);
            let except: Vec<String> = self.cooldown.keys().cloned().collect();
            let n = (share - working).min(GRANT_AT_ONCE);
            let (name, mailboxes) = (self.settings.name.clone(), self.mailboxes.clone());
            let grants = match self
                .sql(move |l| l.grant(&name, &mailboxes, &except, n, ttl))
                .await?
            {
                Ok(g) => g,
                Err(e) => return Some(Err(e)),
            };
            for g in grants {
                self.start(g, now);
            }
        } else if working > share {
            self.hand_back(working - share, share);
        }
        Some(Ok(()))
    }

    /// Starts handing back `surplus` mailboxes, at most [`RELEASE_AT_ONCE`] in flight: the
    /// taker logs in to each (16 at a time), so there is no storm, and 1,000 move in about a
    /// minute.
    fn hand_back(&mut self, surplus: i64, share: i64) {
        let releasing = self.held.values().filter(|h| h.releasing).count() as i64;
        let n = surplus.min(RELEASE_AT_ONCE - releasing).max(0);
        let give: Vec<String> = self
            .held
            .iter()
            .rev()
            .filter(|(_, h)| !h.releasing)
            .take(n as usize)
            .map(|(m, _)| m.clone())
            .collect();
        for m in give {
            tracing::info!(mailbox = %m, share, "handing a mailbox back to balance the agents");
            self.start_release(&m);
        }
    }

    /// A lease was granted at `at`: fence its writes at the new epoch and start its worker.
    fn start(&mut self, g: Grant, at: Instant) {
        if let Some(p) = g.previous.as_deref() {
            crate::metrics::metrics().takeover();
            tracing::info!(mailbox = %g.mailbox, epoch = g.epoch, from = p, "mailbox taken over: its lease had lapsed");
        } else {
            tracing::info!(mailbox = %g.mailbox, epoch = g.epoch, "mailbox lease granted");
        }
        if let Some(f) = self.store.fences() {
            f.hold(&g.mailbox, g.epoch);
        }
        let cancel = CancellationToken::new();
        let task = (self.spawn)(&g.mailbox, cancel.clone());
        self.held.insert(
            g.mailbox,
            Held {
                epoch: g.epoch,
                cancel,
                task,
                valid_until: at + self.settings.lease_ttl,
                releasing: false,
            },
        );
    }

    /// Shutdown: every worker finishes its batch (up to 60 s), then every lease goes back
    /// and the agent's row goes, so that the others take the mailboxes at their next round.
    async fn stop_all(mut self) {
        for h in self.held.values() {
            h.cancel.cancel();
        }
        let held = std::mem::take(&mut self.held);
        let aborts: Vec<_> = held.values().map(|h| h.task.abort_handle()).collect();
        let mut back = Vec::new();
        let mut tasks = Vec::new();
        for (m, h) in held {
            back.push((m, h.epoch));
            tasks.push(h.task);
        }
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .is_err()
        {
            tracing::warn!("mailbox workers did not stop within 60 s; aborting them");
            for a in aborts {
                a.abort();
            }
        }
        if let Some(f) = self.store.fences() {
            for (m, _) in &back {
                f.drop_lease(m);
            }
        }
        let (name, instance) = (self.settings.name.clone(), self.instance.clone());
        let left = self
            .sql(move |l| {
                for (m, epoch) in &back {
                    l.release(&name, m, *epoch)?;
                }
                l.leave(&name, &instance)
            })
            .await;
        if !matches!(left, Some(Ok(()))) {
            tracing::warn!("cannot hand the mailboxes back; their leases lapse on their own, and the others count this agent out when its registration lapses");
        }
        tracing::info!(agent = %self.settings.name, "mailboxes handed back");
    }
}
