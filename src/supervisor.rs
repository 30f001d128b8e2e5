//! `run`: one supervised task per mailbox, the control socket, and the signals. SIGINT and
//! SIGTERM stop the tasks after the batch in hand is committed; SIGHUP reloads the config
//! (a changed rule re-links its folder at the next pass) and restarts the mailbox tasks.

use crate::agent::AgentHandle;
use crate::config::Config;
use crate::model::{Alert, AlertLevel};
use crate::protocol::Reply;
use crate::store::Store;
use crate::watch;
use crate::worker::{Live, Runner, Signals, WorkError, Worker};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken as Cancel;
use tokio_util::sync::CancellationToken;

/// How many mailboxes may be logging in at once (1,000 mailboxes must not hit the server at the
/// same instant).
pub(crate) const LOGIN_CONCURRENCY: usize = 16;

/// How long a worker told to stop (its lease lost or handed back) has to end on its own.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Waits for `worker` to end; once `cancel` fires it has [`STOP_GRACE`], then it is aborted.
/// A worker waits on IMAP at await points and stops at once; but one inside a database call
/// when the database stops answering (a partition) is blocked in that call, and its lease's
/// time runs out meanwhile. Aborted, it ends at its next await whenever the call returns, and
/// a write it attempts before that is refused by its fence. Returns whether it was aborted.
async fn stop_on_cancel(
    mut worker: tokio::task::JoinHandle<()>,
    cancel: CancellationToken,
) -> bool {
    tokio::select! {
        _ = &mut worker => return false,
        _ = cancel.cancelled() => {}
    }
    if tokio::time::timeout(STOP_GRACE, &mut worker).await.is_ok() {
        return false;
    }
    worker.abort();
    true
}

/// `foldertrack web`: the web pages alone, until `shutdown` resolves.
///
/// # Errors
/// No `[web]` table, the store cannot be opened (a sled store an agent holds: that agent
/// serves the pages itself when `[web]` is set), the token is missing, the port is taken.
pub async fn web(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    if config.web.is_none() {
        anyhow::bail!(
            "{} has no [web] table: add `[web] listen = \"127.0.0.1:8080\"` (README \"Web pages\")",
            config.path.display()
        );
    }
    let store = Store::open_config(&config).with_context(|| {
        "cannot open the store (on sled, a running agent holds it and serves the pages itself when [web] is set)"
    })?;
    let stop = CancellationToken::new();
    let shared = Arc::new(RwLock::new(config.clone()));
    crate::web::start(&config, shared, Arc::new(store), None, stop.clone()).await?;
    tokio::spawn(crate::memory::trimmer(stop.clone()));
    shutdown.await;
    stop.cancel();
    Ok(())
}

/// Runs the agent until `shutdown` resolves.
///
/// # Errors
/// The store cannot be opened (held by another process: exit 2), or the config cannot be read.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let store = Arc::new(open_store_waiting(&config).await?);
    if store.is_postgres() {
        // The data dir holds only the control socket then (sled's open makes it otherwise).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
        // No lock keeps a second agent out: an agent whose control socket answers is one.
        let socket = crate::control::socket_path(&config.data_dir);
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            return Err(crate::store::StoreError::AgentRunning {
                dir: config.data_dir.clone(),
            }
            .into());
        }
    }
    let agent = AgentHandle::new(std::process::id());
    let stop = CancellationToken::new();
    let shared = Arc::new(RwLock::new(config.clone()));
    match crate::control::bind(&config.data_dir) {
        Ok(l) => {
            let handler = command_handler(shared.clone(), store.clone(), agent.clone());
            tokio::spawn(crate::control::serve(l, handler, stop.clone()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: other commands cannot reach this agent")
        }
    }
    if let Some(addr) = config.metrics_listen {
        let l = crate::http::bind(addr).await.with_context(|| {
            format!("cannot serve metrics on {addr} ([metrics] listen in the config): is another process using it?")
        })?;
        // The bound address, not the configured one: `listen = "127.0.0.1:0"` takes a free port,
        // and this line is how an operator (or a test) learns which.
        let addr = l.local_addr().unwrap_or(addr);
        tracing::info!(%addr, "serving /metrics and /healthz");
        if let Some(w) = crate::http::exposure_warning(addr) {
            tracing::warn!("{w}");
            let _ = store.add_alert(
                crate::store::STORE_ALERTS,
                Alert {
                    level: AlertLevel::Warning,
                    message: w,
                },
            );
        }
        tokio::spawn(crate::http::serve(
            l,
            crate::http::Shared {
                config: shared.clone(),
                store: store.clone(),
                agent: agent.clone(),
            },
            stop.clone(),
        ));
    }
    crate::web::start(
        &config,
        shared.clone(),
        store.clone(),
        Some(agent.clone()),
        stop.clone(),
    )
    .await?;
    tokio::spawn(crate::memory::trimmer(stop.clone()));
    if let Some(days) = config.audit_retention_days {
        tokio::spawn(prune_audit(store.clone(), days, stop.clone()));
    }
    tokio::pin!(shutdown);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut config = config;
    loop {
        let generation = stop.child_token();
        let tasks = start(&config, &store, &agent, &generation).await?;
        tracing::info!(mailboxes = config.mailboxes.len(), "agent running");
        #[cfg(unix)]
        let hup_signal = hup.recv();
        #[cfg(not(unix))]
        let hup_signal = std::future::pending::<Option<()>>();
        let reload_now = tokio::select! {
            _ = &mut shutdown => false,
            _ = hup_signal => true,
        };
        generation.cancel();
        finish(tasks).await;
        if !reload_now {
            break;
        }
        config = reload(&config_path, config, &shared, &store);
    }
    stop.cancel();
    store.flush()?;
    tracing::info!("agent stopped");
    Ok(())
}

/// SIGHUP: the config file read again and put in force (the running data dir and agent name
/// kept), or, when it does not load, the old one kept and an alert raised per mailbox.
fn reload(
    config_path: &std::path::Path,
    config: Config,
    shared: &RwLock<Config>,
    store: &Store,
) -> Config {
    match Config::load(config_path) {
        Ok(c) => {
            tracing::info!("configuration reloaded");
            // A changed token_command must not go on serving the old command's token.
            for m in &config.mailboxes {
                crate::oauth::forget(&m.name);
            }
            let mut c = c;
            // The control socket is bound in the running data dir, and the leases are held in
            // the running agent's name: both stay until a restart.
            c.data_dir = config.data_dir.clone();
            if c.agent.name != config.agent.name {
                tracing::warn!("[agent] name changed: it takes effect at the next restart");
                c.agent.name = config.agent.name.clone();
            }
            if c.metrics_listen != config.metrics_listen {
                tracing::warn!("[metrics] listen changed: it takes effect at the next restart");
            }
            if let Ok(mut w) = shared.write() {
                *w = c.clone();
            }
            c
        }
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the previous configuration");
            for m in &config.mailboxes {
                let _ = store.add_alert(
                    &m.name,
                    Alert {
                        level: AlertLevel::Error,
                        message: format!("configuration reload failed: {e}"),
                    },
                );
            }
            config
        }
    }
}

/// `[audit] retention_days`: at start and then daily, audit entries older than `days` go.
async fn prune_audit(store: Arc<Store>, days: u64, stop: CancellationToken) {
    loop {
        let before = crate::time::rfc3339_utc(crate::time::unix_now() - days as i64 * 86_400);
        match store.prune_audit(&before) {
            Ok(n) => {
                tracing::info!(pruned = n, %before, "audit entries past retention_days removed")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune the audit trail; trying again tomorrow")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The control socket's answers: each request runs as a command against the running agent's
/// store, with the configuration in force when it arrives.
fn command_handler(
    config: Arc<RwLock<Config>>,
    store: Arc<Store>,
    agent: AgentHandle,
) -> crate::control::Handler {
    Arc::new(move |req| {
        let config = config.read().ok().map(|c| c.clone());
        let (store, agent) = (store.clone(), agent.clone());
        Box::pin(async move {
            match config {
                Some(config) => crate::commands::execute(req, &config, &store, Some(&agent)).await,
                None => Reply::failed(anyhow::anyhow!("agent state is poisoned")),
            }
        })
    })
}

/// Opens the store; while another *command* (not an agent: no control socket answers) holds it
/// for a moment, waits up to 10 s for it.
async fn open_store_waiting(config: &Config) -> Result<Store> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open_config(config) {
            Err(crate::store::StoreError::Locked { .. })
                if tokio::time::Instant::now() < deadline
                    && tokio::net::UnixStream::connect(crate::control::socket_path(
                        &config.data_dir,
                    ))
                    .await
                    .is_err() =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Starts the agent's tasks: every mailbox's worker on sled; on PostgreSQL the lease manager,
/// which starts the worker of each mailbox this agent is granted ([`crate::lease`]). Then the
/// outbox runner.
///
/// # Errors
/// On PostgreSQL, the agent cannot register (its name is in use, the database fails).
async fn start(
    config: &Config,
    store: &Arc<Store>,
    agent: &AgentHandle,
    cancel: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let logins = Arc::new(Semaphore::new(LOGIN_CONCURRENCY));
    let mut handles = Vec::new();
    let mut map = BTreeMap::new();
    let leased = store.leases().is_some();
    for mb in &config.mailboxes {
        let live = Live::default();
        if leased {
            live.set(crate::worker::WorkerState::Elsewhere);
        }
        map.insert(mb.name.clone(), (live, Arc::new(Notify::new())));
    }
    let task = {
        let (config, store, map) = (config.clone(), store.clone(), map.clone());
        move |name: &str, cancel: CancellationToken| {
            let (live, wake) = map[name].clone();
            let mb = config.mailbox(name).expect("a configured mailbox").clone();
            watch::Task {
                mb: Arc::new(mb),
                limits: config.fetch,
                store: store.clone(),
                live,
                wake,
                cancel,
                logins: logins.clone(),
            }
        }
    };
    if leased {
        let bell = agent.outbox_bell();
        let spawn: crate::lease::Spawn = Box::new(move |name, cancel| {
            // A mailbox taken over may have mail queued for sending: look now.
            bell.notify_one();
            let t = task(name, cancel.clone());
            let live = t.live.clone();
            let name = t.mb.name.clone();
            tokio::spawn(async move {
                let aborted = stop_on_cancel(tokio::spawn(watch::watch_mailbox(t)), cancel).await;
                live.set(crate::worker::WorkerState::Elsewhere);
                tracing::info!(mailbox = %name, aborted, "mailbox worker stopped");
            })
        });
        let names = config.mailboxes.iter().map(|m| m.name.clone()).collect();
        let mut manager =
            crate::lease::Manager::new(store.clone(), config.agent.clone(), names, spawn);
        match manager.register(cancel).await {
            Ok(()) => handles.push(tokio::spawn(manager.run(cancel.clone()))),
            Err(crate::lease::LeaseError::Store(e)) => {
                let lives = map.values().map(|(l, _)| l.clone()).collect();
                let run = manager.register_then_run(cancel.clone(), lives, e);
                handles.push(tokio::spawn(run));
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        for mb in &config.mailboxes {
            handles.push(tokio::spawn(watch::watch_mailbox(task(
                &mb.name,
                cancel.clone(),
            ))));
        }
    }
    if config.mailboxes.iter().any(|m| m.smtp.is_some()) {
        let runner = Runner {
            live: Live::default(),
            wake: agent.outbox_bell(),
            cancel: cancel.clone(),
            backoff_max: Duration::from_secs(60),
            name: "outbox".into(),
        };
        let worker = OutboxWorker {
            config: config.clone(),
            store: store.clone(),
            next: None,
            // With several agents a send may be queued through another one: each looks at the
            // queue as often as it renews its leases.
            max_wait: match leased {
                true => config.agent.lease_renew,
                false => Duration::from_secs(60),
            },
        };
        handles.push(tokio::spawn(runner.run(worker)));
    }
    agent.set_tasks(map);
    Ok(handles)
}

/// The outbox worker: a round settles interrupted sends and sends what is due; then it sleeps
/// until the next entry is due (at most a minute) or a command wakes it. A failed round is
/// retried by the runner with backoff.
struct OutboxWorker {
    config: Config,
    store: Arc<Store>,
    /// When the next queued entry is due (Unix seconds), from the last round.
    next: Option<i64>,
    /// The longest sleep between two rounds.
    max_wait: Duration,
}

impl Worker for OutboxWorker {
    /// Not cut off by shutdown: an SMTP transaction cut short is a send in doubt.
    async fn work(&mut self, _: &Cancel) -> Result<(), WorkError> {
        let next = crate::outbox::run_due(&self.config, &self.store).await;
        // `pending = false`: nothing left to send or retry (tests wait for this, not a time).
        tracing::debug!(pending = matches!(next, Ok(Some(_))), "outbox round done");
        match next {
            Ok(next) => {
                self.next = next;
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox round failed");
                Err(WorkError::transient(e))
            }
        }
    }

    async fn wait_for_work(&mut self, s: Signals<'_>) -> Result<(), WorkError> {
        let wait =
            match self.next {
                Some(at) => Duration::from_secs(
                    at.saturating_sub(crate::worker::unix_now()).clamp(1, 60) as u64,
                ),
                None => self.max_wait,
            }
            .min(self.max_wait);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = s.wake.notified() => {}
            _ = s.cancel.cancelled() => {}
        }
        Ok(())
    }
}

/// Waits for the tasks to finish their batch; aborts what is still running after 60 s.
async fn finish(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .is_err()
    {
        tracing::warn!("mailbox tasks did not stop within 60 s; aborting them");
        for a in aborts {
            a.abort();
        }
    }
}
