//! `run`'s per-mailbox worker (DESIGN §3 steps 5–7): connect, catch up, then wait for new mail
//! with IDLE (plus NOTIFY for the other folders where the server offers it) or by polling.
//! The [`crate::worker::Runner`] around it owns backoff, shutdown and the published state.
//!
//! **No missed wake-ups** (DESIGN §3.7). NOTIFY is set once per connection, *before* the first
//! pass, and the worker only waits after a round (the IDLE folder selected first, then every
//! tracked folder's STATUS against its checkpoint) that found nothing and saw no new-mail event:
//! a change before a folder's STATUS is seen by that STATUS, a change after it produces a NOTIFY
//! event (or, for the IDLE folder, an EXISTS). Events that arrive between commands are not
//! dropped: they are counted when the pass ends and again right after IDLE starts, and either
//! one ends the wait at once.
//!
//! The connected session is dropped on any error, never reused after one: async-imap can
//! answer `Ok` on a dead connection (NOTES-crates.md), so only a clean tagged OK counts.

use crate::config::{FetchLimits, MailboxConfig, PollInterval};
use crate::imap::{connect, Connected, ImapError};
use crate::model::{Alert, AlertLevel};
use crate::store::Store;
use crate::sync::{self, SyncError, Tracked};
use crate::worker::{Live, Runner, Signals, WatchMode, WorkError, Worker, WorkerState};
use async_imap::extensions::idle::IdleResponse;
use async_imap::types::UnsolicitedResponse;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// Passes in a row before the worker waits anyway (mail arriving faster than it is tracked);
/// a pending event then ends the wait at once, so nothing is left behind.
const MAX_ROUNDS: u32 = 50;

/// The adaptive schedule of `poll_interval = "auto"`: 5 minutes, 2 while mail keeps arriving,
/// 12 after three quiet polls in a row.
#[derive(Debug, Clone, Default)]
pub(crate) struct AutoPoll {
    quiet: u32,
}

impl AutoPoll {
    pub(crate) fn next(&mut self, found_mail: bool) -> Duration {
        if found_mail {
            self.quiet = 0;
            Duration::from_secs(120)
        } else {
            self.quiet += 1;
            if self.quiet >= 3 {
                Duration::from_secs(12 * 60)
            } else {
                Duration::from_secs(5 * 60)
            }
        }
    }
}

/// Everything a mailbox task needs.
pub(crate) struct Task {
    pub mb: Arc<MailboxConfig>,
    pub limits: FetchLimits,
    pub store: Arc<Store>,
    pub live: Live,
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
    /// Bounds how many mailboxes log in at the same moment.
    pub logins: Arc<Semaphore>,
}

/// Runs one mailbox until `cancel`, or until a permanent error disables its incoming side.
pub(crate) async fn watch_mailbox(t: Task) {
    use tracing::Instrument;
    let span = tracing::info_span!("mailbox", mailbox = %t.mb.name);
    let name = t.mb.name.clone();
    let runner = Runner {
        live: t.live.clone(),
        wake: t.wake.clone(),
        cancel: t.cancel.clone(),
        backoff_max: Duration::from_secs(80),
        name: name.clone(),
    };
    let worker = MailboxWorker {
        mb: t.mb,
        limits: t.limits,
        store: t.store,
        live: t.live,
        logins: t.logins,
        session: None,
        auth_failures: 0,
        connects: 0,
        auto: AutoPoll::default(),
        found: false,
        unrecorded: None,
    };
    runner.run(worker).instrument(span).await;
    let m = crate::metrics::metrics();
    m.connected(&name, false);
    m.mode(&name, None);
}

/// The disconnected state of a mailbox (config, counters) and its session when connected.
struct MailboxWorker {
    mb: Arc<MailboxConfig>,
    limits: FetchLimits,
    store: Arc<Store>,
    live: Live,
    logins: Arc<Semaphore>,
    session: Option<Session>,
    /// Authentication failures in a row: the second disables the mailbox.
    auth_failures: u32,
    connects: u32,
    auto: AutoPoll,
    /// Whether the last catch-up tracked something (for `poll_interval = "auto"`).
    found: bool,
    /// A failure the store could not record (it was failing itself), written when it can.
    unrecorded: Option<Unrecorded>,
}

/// What exists only while connected.
struct Session {
    conn: Connected,
    tracked: Vec<Tracked>,
    /// The server offers IDLE and the config allows it.
    idle: bool,
    /// The server offers NOTIFY and has not refused our NOTIFY SET.
    notify: bool,
    /// The folders NOTIFY is set for, when it is.
    notify_for: Option<Vec<String>>,
    /// The IDLE folder is selected and was checked after it was selected, with every other
    /// folder: IDLE may start on it without another look.
    ready: bool,
    /// A catch-up just ended: the next IDLE begins with a short settle (see [`SETTLE`]).
    settle: bool,
}

impl Worker for MailboxWorker {
    /// Connects if needed, then passes until one finds every tracked folder unchanged.
    async fn work(&mut self, cancel: &CancellationToken) -> Result<(), WorkError> {
        if self.session.is_none() {
            self.connect(cancel).await?;
            if self.session.is_none() {
                return Ok(()); // cancelled while connecting
            }
        }
        let result = self.catch_up(cancel).await;
        if let Err(e) = result {
            self.disconnect();
            return Err(WorkError::transient(e));
        }
        if self.found {
            crate::memory::fetched();
        }
        Ok(())
    }

    async fn wait_for_work(&mut self, signals: Signals<'_>) -> Result<(), WorkError> {
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        if s.idle && !s.tracked.is_empty() {
            return self.idle(signals).await.map_err(|e| {
                // Routine: Dovecot drops busy selected sessions without BYE.
                tracing::info!(error = %e, "connection lost while waiting; reconnecting");
                self.disconnect();
                let e = SyncError::Imap(e);
                let w = WorkError::transient(&e);
                record(
                    &self.store,
                    &self.mb,
                    &mut self.unrecorded,
                    &Err::<(), _>(e),
                );
                w
            });
        }
        self.poll(signals).await;
        Ok(())
    }
}

impl MailboxWorker {
    async fn connect(&mut self, cancel: &CancellationToken) -> Result<(), WorkError> {
        let m = crate::metrics::metrics();
        self.live.set(WorkerState::Connecting {
            server: format!("{}:{}", self.mb.host, self.mb.port),
        });
        if self.connects > 0 {
            self.live.update(|l| l.reconnects += 1);
            m.reconnect(&self.mb.name);
        }
        self.connects += 1;
        let connected = {
            let _permit = self.logins.acquire().await;
            tokio::select! {
                r = connect(&self.mb) => r,
                _ = cancel.cancelled() => return Ok(()),
            }
        };
        let conn = match connected {
            Ok(c) => c,
            Err(e) => return Err(self.login_failed(e)),
        };
        self.auth_failures = 0;
        m.connected(&self.mb.name, true);
        self.live
            .update(|l| l.connected_since = Some(crate::time::humantime_now()));
        let idle = conn.has("IDLE") && self.mb.watch.idle;
        // How it will wait, known from the capabilities (a refused NOTIFY changes it later).
        self.set_mode(match (idle, conn.has("NOTIFY")) {
            (true, true) => WatchMode::IdleNotify,
            (true, false) => WatchMode::Idle,
            (false, _) => WatchMode::Poll,
        });
        self.session = Some(Session {
            notify: idle && conn.has("NOTIFY"),
            idle,
            conn,
            tracked: Vec::new(),
            notify_for: None,
            ready: false,
            settle: false,
        });
        Ok(())
    }

    /// A failed login: permanent errors disable the mailbox (a refused password only the
    /// second time in a row: servers sometimes refuse a good one once).
    fn login_failed(&mut self, e: ImapError) -> WorkError {
        let auth = matches!(e, ImapError::Auth { .. });
        if auth {
            self.auth_failures += 1;
        }
        let permanent = e.is_permanent() && (!auth || self.auth_failures >= 2);
        let e = SyncError::Imap(e);
        let message = if permanent {
            format!("incoming disabled: {e} (fix it, then restart or reload the agent with SIGHUP)")
        } else {
            e.to_string()
        };
        record(
            &self.store,
            &self.mb,
            &mut self.unrecorded,
            &Err::<(), _>(e),
        );
        if !permanent {
            return WorkError::transient(message);
        }
        let _ = self.store.add_alert(
            &self.mb.name,
            Alert {
                level: AlertLevel::Error,
                message: message.clone(),
            },
        );
        WorkError {
            message,
            permanent: true,
        }
    }

    fn disconnect(&mut self) {
        self.session = None;
        crate::metrics::metrics().connected(&self.mb.name, false);
    }

    /// Plans the folders and sets NOTIFY for them (once per connection: Dovecot 2.3 stops
    /// reporting every other time NOTIFY is set again), then passes until a pass finds every
    /// folder's STATUS at its checkpoint and no event came in meanwhile. Each round first
    /// selects the IDLE folder: Dovecot's NOTIFY ignores changes of the selected folder (they
    /// come as EXISTS), so a change of a folder that was selected while the change happened
    /// must be seen by the round's STATUS, after that folder is no longer selected.
    async fn catch_up(&mut self, cancel: &CancellationToken) -> Result<(), SyncError> {
        let s = self.session.as_mut().expect("connected");
        self.live.set(WorkerState::Syncing);
        s.tracked = sync::plan(&mut s.conn, &self.mb, &self.store).await?;
        if s.notify {
            let names: Vec<String> = s
                .tracked
                .iter()
                .map(|t| t.folder.server_name.clone())
                .collect();
            if s.notify_for.as_ref() != Some(&names) {
                s.notify = set_notify(&mut s.conn, &names).await;
                s.notify_for = s.notify.then_some(names);
            }
        }
        self.found = false;
        s.ready = false;
        let idle_folder = (s.idle && !s.tracked.is_empty()).then(|| s.tracked[0].folder.clone());
        for round in 1..=MAX_ROUNDS {
            // The IDLE folder is selected *before* the others are checked, so that mail
            // arriving in it after its check comes as EXISTS.
            if let Some(f) = &idle_folder {
                crate::imap::fetch::examine(
                    &mut s.conn.session,
                    &s.conn.peer,
                    &f.server_name,
                    &f.name,
                )
                .await?;
            }
            // Events from here on are news: the pass below reads every folder's STATUS after it.
            pending_events(&s.conn);
            let result = sync::pass_planned(
                &mut s.conn,
                &self.mb,
                &s.tracked,
                &self.limits,
                &self.store,
                Some(cancel),
                None,
            )
            .await;
            record(&self.store, &self.mb, &mut self.unrecorded, &result);
            let report = result?;
            self.found |= report.created() > 0;
            self.live
                .update(|l| l.last_pass = Some(crate::time::humantime_now()));
            if cancel.is_cancelled() {
                break;
            }
            if report.folders.is_empty() && pending_events(&s.conn) == 0 {
                tracing::debug!(round, "caught up");
                s.ready = idle_folder.is_some();
                s.settle = true;
                break;
            }
            tracing::debug!(round, "more arrived during the pass; passing again");
        }
        Ok(())
    }

    /// Sleeps until the next poll, a wake-up or shutdown.
    async fn poll(&mut self, signals: Signals<'_>) {
        let d = match self.mb.watch.poll {
            PollInterval::Every(d) => d,
            PollInterval::Auto => self.auto.next(self.found),
        };
        self.set_mode(WatchMode::Poll);
        self.live.set(WorkerState::Polling {
            next: crate::worker::unix_now() + d.as_secs() as i64,
        });
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = signals.wake.notified() => {}
            _ = signals.cancel.cancelled() => {}
        }
    }

    fn set_mode(&self, mode: WatchMode) {
        self.live.update(|l| l.mode = Some(mode));
        crate::metrics::metrics().mode(&self.mb.name, Some(mode.metric_label()));
    }

    /// One IDLE on the first tracked folder, until new data, renewal, a wake-up or shutdown.
    async fn idle(&mut self, signals: Signals<'_>) -> Result<(), ImapError> {
        let mut s = self.session.take().expect("connected");
        let notify = s.notify_for.is_some();
        let f = s.tracked[0].folder.clone();
        let others = s.tracked.len() - 1;
        let mut behind = false;
        if !s.ready {
            // Catching up stopped early (MAX_ROUNDS): select and compare the IDLE folder now.
            let sel = crate::imap::fetch::examine(
                &mut s.conn.session,
                &s.conn.peer,
                &f.server_name,
                &f.name,
            )
            .await?;
            behind = self
                .store
                .folder_state(&self.mb.name, &f.name)
                .ok()
                .flatten()
                .is_none_or(|st| !st.synced_at(Some(sel.uidvalidity), Some(sel.uid_next)));
        }
        s.ready = false;
        if behind || pending_events(&s.conn) > 0 {
            tracing::debug!(behind, "new mail before IDLE: no wait");
            self.session = Some(s);
            return Ok(());
        }
        let watch = &self.mb.watch;
        // With NOTIFY too: a server may lose an event (Dovecot drops those of a folder that was
        // selected when they happened), and the renewal's pass bounds how long that can last.
        let renew = if others > 0 {
            watch.idle_renew.min(watch.others_interval)
        } else {
            watch.idle_renew
        };
        let mode = if notify {
            WatchMode::IdleNotify
        } else {
            WatchMode::Idle
        };
        self.set_mode(mode);
        let detail = match (others, notify) {
            (0, _) => format!("IDLE on {}", f.name),
            (n, true) => format!(
                "IDLE on {}, NOTIFY for {n} more (all checked every {} s)",
                f.name,
                renew.as_secs()
            ),
            (n, false) => format!(
                "IDLE on {}, STATUS of {n} more every {} s",
                f.name,
                renew.as_secs()
            ),
        };
        self.live.set(WorkerState::Idle { mode, detail });
        let mut conn = s.conn;
        if std::mem::take(&mut s.settle) && others > 0 {
            // Dovecot can lose the NOTIFY event of a change made while the session was busy
            // with the pass's commands: after a short quiet IDLE, the other folders are
            // checked once more (a few STATUS), then the long IDLE begins.
            let (c, woke) = idle_until(conn, &self.mb, SETTLE.min(renew), signals).await?;
            conn = c;
            if woke != Woke::Renew
                || self.others_moved(&mut conn, &s.tracked).await?
                || pending_events(&conn) > 0
            {
                s.conn = conn;
                self.session = Some(s);
                return Ok(());
            }
        }
        let (conn, _) = idle_until(conn, &self.mb, renew, signals).await?;
        s.conn = conn;
        self.session = Some(s);
        Ok(())
    }

    /// Whether a tracked folder other than the IDLE one is no longer at its checkpoint.
    async fn others_moved(
        &self,
        conn: &mut Connected,
        tracked: &[Tracked],
    ) -> Result<bool, ImapError> {
        for t in &tracked[1..] {
            let cp = self
                .store
                .folder_state(&self.mb.name, &t.folder.name)
                .ok()
                .flatten();
            // A folder whose scan saw a HIGHESTMODSEQ: a flag change moved it too.
            let items = match cp.as_ref().is_some_and(|p| p.highest_modseq > 0) {
                true => "(UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
                false => "(UIDNEXT UIDVALIDITY)",
            };
            let st = crate::imap::timed(
                &conn.peer,
                "STATUS",
                conn.session.status(&t.folder.server_name, items),
            )
            .await?;
            let at_checkpoint = cp.is_some_and(|p| {
                p.synced_at(st.uid_validity, st.uid_next)
                    && st.highest_modseq.is_none_or(|m| m == p.highest_modseq)
            });
            if !at_checkpoint {
                tracing::debug!(folder = %t.folder.name, "moved after the catch-up: no wait");
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The short IDLE after a catch-up before the other folders are checked once more.
const SETTLE: Duration = Duration::from_millis(1200);

/// Why an IDLE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    NewData,
    /// Events were waiting when IDLE began.
    Pending,
    Renew,
    Heartbeat,
    Asked,
    Shutdown,
}

/// IDLE on the selected folder until something happens; the connection comes back after DONE.
async fn idle_until(
    conn: Connected,
    mb: &MailboxConfig,
    renew: Duration,
    signals: Signals<'_>,
) -> Result<(Connected, Woke), ImapError> {
    let Connected {
        session,
        capabilities,
        peer,
        security,
    } = conn;
    // A second handle on the session's queue of untagged answers, read while IDLE holds it.
    let queue = session.unsolicited_responses.clone();
    let mut handle = session.idle();
    let dead = |what: &str, message: String| ImapError::Protocol {
        addr: peer.addr.clone(),
        what: what.into(),
        message,
    };
    match tokio::time::timeout(peer.timeout, handle.init()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(dead("IDLE", e.to_string())),
        Err(_) => return Err(dead("IDLE", "no answer".into())),
    }
    let woke = {
        let (fut, stop) = handle.wait_with_timeout(mb.watch.heartbeat_timeout);
        tokio::pin!(fut);
        // What arrived while IDLE was being started (a NOTIFY STATUS read with its `+`) is in
        // the unsolicited queue, not in the stream IDLE waits on.
        let pending = count_events(|| queue.try_recv().ok());
        tracing::debug!(pending, "IDLE started");
        let w = if pending > 0 {
            Ok(Woke::Pending)
        } else {
            tokio::select! {
                r = &mut fut => match r {
                    Ok(IdleResponse::NewData(_)) => Ok(Woke::NewData),
                    Ok(IdleResponse::Timeout) => Ok(Woke::Heartbeat),
                    // We did not interrupt: the stream ended, the server closed the connection.
                    Ok(IdleResponse::ManualInterrupt) => Err(dead("IDLE", "the server closed the connection".into())),
                    Err(e) => Err(dead("IDLE", e.to_string())),
                },
                _ = tokio::time::sleep(renew) => Ok(Woke::Renew),
                _ = signals.wake.notified() => Ok(Woke::Asked),
                _ = signals.cancel.cancelled() => Ok(Woke::Shutdown),
            }
        };
        drop(stop);
        w?
    };
    let session = match tokio::time::timeout(Duration::from_secs(15), handle.done()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(dead("DONE", e.to_string())),
        Err(_) => return Err(dead("DONE", "no answer within 15 s".into())),
    };
    tracing::debug!(mailbox = %mb.name, ?woke, "IDLE ended");
    Ok((
        Connected {
            session,
            capabilities,
            peer,
            security,
        },
        woke,
    ))
}

/// Takes the new-mail events (NOTIFY's STATUS of another folder, EXISTS of the selected one)
/// queued since the last call, and says how many there were. The rest of the queue (flag
/// changes, our own commands' side answers) is dropped with them: async-imap's queue is
/// bounded and would drop *new* events once full.
fn pending_events(conn: &Connected) -> usize {
    count_events(|| conn.session.unsolicited_responses.try_recv().ok())
}

fn count_events(mut next: impl FnMut() -> Option<UnsolicitedResponse>) -> usize {
    let mut n = 0;
    while let Some(r) = next() {
        if matches!(
            r,
            UnsolicitedResponse::Status { .. } | UnsolicitedResponse::Exists(_)
        ) {
            n += 1;
        }
    }
    n
}

/// Asks the server to report new mail in every tracked folder (RFC 5465), so one connection
/// watches them all. `false` when the server refuses.
async fn set_notify(conn: &mut Connected, names: &[String]) -> bool {
    // A name with a control character cannot be sent quoted (and is never tracked: the folder
    // listing refuses it); leave it out rather than send a broken command.
    let list: Vec<String> = names
        .iter()
        .filter_map(|n| match crate::imap::quote_checked(n) {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(error = %e, "folder left out of NOTIFY");
                None
            }
        })
        .collect();
    // With CONDSTORE, a flag change is something to sync too (DESIGN §4.15): the folder's
    // HIGHESTMODSEQ tells the pass what to read. Without it, flags are scanned by interval,
    // and waking on every flag change would only cost passes.
    let events = match conn.has("CONDSTORE") {
        true => "MessageNew MessageExpunge FlagChange",
        false => "MessageNew MessageExpunge",
    };
    let cmd = format!(
        "NOTIFY SET (selected ({events})) (mailboxes ({}) ({events}))",
        list.join(" ")
    );
    match tokio::time::timeout(
        conn.peer.timeout,
        conn.session.run_command_and_check_ok(&cmd),
    )
    .await
    {
        Ok(Ok(())) => true,
        other => {
            tracing::info!(
                ?other,
                "NOTIFY refused; other folders are checked every others_interval"
            );
            false
        }
    }
}

/// A failed pass whose outcome the store could not take because the store itself failed
/// (PostgreSQL down or restarting, its disk full): kept in memory, and written as an outage
/// from `since` and an alert once the store answers again. Nothing else needs keeping: the
/// folder's checkpoint did not move either, so the next pass fetches the same messages again.
#[derive(Debug)]
struct Unrecorded {
    since: String,
    error: String,
    attempts: u32,
}

/// Records a pass's (or login's) outcome in the persisted health, after what `unrecorded` kept
/// while the store could not take it. When the store still cannot, a failure is kept there
/// (the first one's time and text, and how many) for the next time.
fn record<T: sync::PassResult>(
    store: &Store,
    mb: &MailboxConfig,
    unrecorded: &mut Option<Unrecorded>,
    result: &Result<T, SyncError>,
) {
    if let Err(e) = result {
        if matches!(e, SyncError::Store(s) if s.is_fenced()) {
            // The mailbox is another agent's now: its health is that agent's to write.
            tracing::warn!(error = %e, "batch refused: the lease moved to another agent");
            return;
        }
        tracing::warn!(error = %e, "pass failed");
    }
    let now = crate::time::humantime_now();
    let written = store.mailbox_state(&mb.name).and_then(|mut state| {
        state.last_attempt = Some(now.clone());
        if let Some(u) = unrecorded.as_ref() {
            record_late(store, mb, &mut state, u, &now)?;
        }
        sync::record_result(store, &mut state, result)
    });
    match written {
        Ok(()) => {
            if let Some(u) = unrecorded.take() {
                tracing::info!(since = %u.since, "the store answers again: its outage is recorded");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record the pass's outcome in the store; kept until the store answers again");
            if let Err(failure) = result {
                let u = unrecorded.get_or_insert_with(|| Unrecorded {
                    since: now,
                    error: failure.to_string(),
                    attempts: 0,
                });
                u.attempts += 1;
            }
        }
    }
}

/// Writes what [`Unrecorded`] kept: the outage (opened at `u.since` unless one is open) and an
/// alert naming when the store could not be used and why.
fn record_late(
    store: &Store,
    mb: &MailboxConfig,
    state: &mut crate::store::MailboxState,
    u: &Unrecorded,
    now: &str,
) -> Result<(), crate::store::StoreError> {
    state.failed_since(&u.since, &u.error, u.attempts);
    store.add_alert(
        &mb.name,
        crate::store::late_outage_alert(&u.since, now, u.attempts, &u.error),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_poll_shortens_while_mail_arrives_and_lengthens_when_quiet() {
        let mut a = AutoPoll::default();
        assert_eq!(a.next(false), Duration::from_secs(300));
        assert_eq!(a.next(true), Duration::from_secs(120));
        assert_eq!(a.next(false), Duration::from_secs(300));
        assert_eq!(a.next(false), Duration::from_secs(300));
        assert_eq!(a.next(false), Duration::from_secs(720));
        assert_eq!(a.next(true), Duration::from_secs(120));
    }
}
