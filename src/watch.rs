//! `run`'s per-mailbox task (DESIGN §3 steps 5–7): connect, pass, wait for new mail with IDLE
//! (plus NOTIFY for the other folders where the server offers it) or by polling, and on any
//! drop reconnect with exponential backoff and jitter, then resync from the checkpoints.
//!
//! Disconnected state (backoff, counters, the persisted health) lives in the loop; the
//! connected session is dropped on any error, never reused after one: async-imap can answer
//! `Ok` on a dead connection (NOTES-crates.md), so only a clean tagged OK counts as alive.

use crate::config::{FetchLimits, MailboxConfig, PollInterval};
use crate::imap::connect::Connected;
use crate::imap::{command_timeout, connect, ImapError};
use crate::store::Store;
use crate::sync::{self, SyncError, Tracked};
use async_imap::extensions::idle::IdleResponse;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// What a mailbox's task is doing now, for `status` while `run` is going.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LiveState {
    /// `connecting`, `syncing`, `idle`, `polling`, `backing off`, `disabled`, `stopped`.
    pub state: String,
    /// A sentence for people: which folder it IDLEs on, the next poll, why it is disabled.
    pub detail: String,
    /// `IDLE+NOTIFY`, `IDLE`, `poll`.
    pub mode: String,
    pub reconnects: u32,
    pub last_pass: Option<String>,
    pub connected_since: Option<String>,
    /// While `backing off`: when the next attempt is due (RFC 3339 UTC).
    pub until: Option<String>,
}

pub type Live = Arc<Mutex<LiveState>>;

fn set(live: &Live, state: &str, detail: String) {
    if let Ok(mut l) = live.lock() {
        if state != "backing off" {
            l.until = None;
        }
        l.state = state.to_string();
        l.detail = detail;
    }
}

/// Exponential backoff with ±20 % jitter: 1 s doubling to `max`, reset after a good login.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            next: Duration::from_secs(1),
            max,
            seed,
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1);
    }
    /// The delay to wait now; the next one doubles.
    pub fn delay(&mut self) -> Duration {
        // xorshift: jitter so that many mailboxes dropped together do not reconnect in step
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.8 + (self.seed % 401) as f64 / 1000.0;
        let d = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// The adaptive schedule of `poll_interval = "auto"`: 5 minutes, 2 while mail keeps arriving,
/// 12 after three quiet polls in a row.
#[derive(Debug, Clone, Default)]
pub struct AutoPoll {
    quiet: u32,
}

impl AutoPoll {
    pub fn next(&mut self, found_mail: bool) -> Duration {
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

/// Why an IDLE wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    NewData,
    Renew,
    Heartbeat,
    Asked,
    Shutdown,
}

/// Everything a mailbox task needs.
pub struct Task {
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
pub async fn watch_mailbox(t: Task) {
    use tracing::Instrument;
    let span = tracing::info_span!("mailbox", mailbox = %t.mb.name);
    watch_mailbox_inner(t).instrument(span).await
}

async fn watch_mailbox_inner(t: Task) {
    let m = crate::metrics::metrics();
    let name = t.mb.name.clone();
    let mut backoff = Backoff::new(Duration::from_secs(80));
    let mut auth_failures = 0;
    let mut first = true;
    'outer: while !t.cancel.is_cancelled() {
        set(
            &t.live,
            "connecting",
            format!("{}:{}", t.mb.host, t.mb.port),
        );
        if !first {
            if let Ok(mut l) = t.live.lock() {
                l.reconnects += 1;
            }
            m.reconnect(&name);
        }
        first = false;
        let connected = {
            let _permit = t.logins.acquire().await;
            tokio::select! {
                r = connect(&t.mb) => r,
                _ = t.cancel.cancelled() => break 'outer,
            }
        };
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                if matches!(e, ImapError::Auth { .. }) {
                    auth_failures += 1;
                }
                let disable = e.is_permanent()
                    && (!matches!(e, ImapError::Auth { .. }) || auth_failures >= 2);
                let err = SyncError::Imap(e);
                record::<()>(&t, &Err(err), disable);
                if disable {
                    break 'outer;
                }
                if !backoff_wait(&t, &mut backoff).await {
                    break 'outer;
                }
                continue;
            }
        };
        auth_failures = 0;
        backoff.reset();
        m.connected(&name, true);
        if let Ok(mut l) = t.live.lock() {
            l.connected_since = Some(crate::store::humantime_now());
        }
        let idle = conn.has("IDLE") && t.mb.watch.idle;
        let mut notify = conn.has("NOTIFY");
        let mut notify_for: Vec<String> = Vec::new();
        let mut auto = AutoPoll::default();
        loop {
            set(&t.live, "syncing", String::new());
            let tracked = match sync::plan(&mut conn, &t.mb, &t.store).await {
                Ok(tr) => tr,
                Err(e) => {
                    record::<()>(&t, &Err(e), false);
                    if !backoff_wait(&t, &mut backoff).await {
                        break 'outer;
                    }
                    continue 'outer;
                }
            };
            let result = sync::pass_planned(
                &mut conn,
                &t.mb,
                &tracked,
                &t.limits,
                &t.store,
                Some(&t.cancel),
                None,
            )
            .await;
            let found = result.as_ref().is_ok_and(|r| r.created() > 0);
            let failed = result.is_err();
            record(&t, &result, false);
            if failed {
                if !backoff_wait(&t, &mut backoff).await {
                    break 'outer;
                }
                continue 'outer;
            }
            if let Ok(mut l) = t.live.lock() {
                l.last_pass = Some(crate::store::humantime_now());
            }
            if t.cancel.is_cancelled() {
                break 'outer;
            }
            if idle && !tracked.is_empty() {
                let names: Vec<String> = tracked
                    .iter()
                    .map(|t| t.folder.server_name.clone())
                    .collect();
                if notify && names != notify_for {
                    notify = set_notify(&mut conn, &names).await;
                    notify_for = names;
                }
                match idle_once(conn, &t, &tracked, notify).await {
                    Ok((c, woke)) => {
                        conn = c;
                        if woke == Woke::Shutdown {
                            break 'outer;
                        }
                    }
                    Err(e) => {
                        // Routine: Dovecot drops busy selected sessions without BYE.
                        tracing::info!(mailbox = %name, error = %e, "connection lost while waiting; reconnecting");
                        record::<()>(&t, &Err(SyncError::Imap(e)), false);
                        if !backoff_wait(&t, &mut backoff).await {
                            break 'outer;
                        }
                        continue 'outer;
                    }
                }
            } else {
                let d = match t.mb.watch.poll {
                    PollInterval::Every(d) => d,
                    PollInterval::Auto => auto.next(found),
                };
                if let Ok(mut l) = t.live.lock() {
                    l.mode = "poll".into();
                }
                m.mode(&name, Some("poll"));
                set(
                    &t.live,
                    "polling",
                    format!("next poll in {} s", d.as_secs()),
                );
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = t.wake.notified() => {}
                    _ = t.cancel.cancelled() => break 'outer,
                }
            }
        }
    }
    m.connected(&name, false);
    m.mode(&name, None);
    if let Ok(l) = t.live.lock() {
        if l.state == "disabled" {
            return;
        }
    }
    set(&t.live, "stopped", String::new());
}

/// Records a pass's (or login's) outcome in the persisted health, and in the live state.
fn record<T: sync::PassResult>(t: &Task, result: &Result<T, SyncError>, disable: bool) {
    let mut state = match t.store.mailbox_state(&t.mb.name) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(mailbox = %t.mb.name, error = %e, "cannot read the mailbox state");
            return;
        }
    };
    state.last_attempt = Some(crate::store::humantime_now());
    if let Err(e) = sync::record_result(&t.store, &mut state, result) {
        tracing::error!(mailbox = %t.mb.name, error = %e, "cannot record the mailbox state");
    }
    if let Err(e) = result {
        tracing::warn!(mailbox = %t.mb.name, error = %e, "pass failed");
        if disable {
            let msg = format!(
                "incoming disabled: {e} (fix it, then restart or reload the agent with SIGHUP)"
            );
            let _ = t.store.add_alert(
                &t.mb.name,
                crate::model::Alert {
                    level: "error".into(),
                    message: msg.clone(),
                },
            );
            set(&t.live, "disabled", msg);
        }
    }
}

/// Waits out the next backoff delay; `false` when shutting down.
async fn backoff_wait(t: &Task, backoff: &mut Backoff) -> bool {
    crate::metrics::metrics().connected(&t.mb.name, false);
    let d = backoff.delay();
    let until = std::time::SystemTime::now() + d;
    let secs = until
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |x| x.as_secs() as i64);
    if let Ok(mut l) = t.live.lock() {
        l.until = Some(crate::store::rfc3339_utc(secs));
    }
    set(
        &t.live,
        "backing off",
        format!(
            "next attempt at {} (in {:.1} s)",
            crate::store::rfc3339_utc(secs),
            d.as_secs_f64()
        ),
    );
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = t.wake.notified() => true,
        _ = t.cancel.cancelled() => false,
    }
}

/// Asks the server to report new mail in every tracked folder during IDLE (RFC 5465), so one
/// connection watches them all. `false` when the server refuses.
async fn set_notify(conn: &mut Connected, names: &[String]) -> bool {
    let list: Vec<String> = names.iter().map(|n| crate::imap::quote(n)).collect();
    let cmd = format!(
        "NOTIFY SET (selected (MessageNew MessageExpunge)) (mailboxes ({}) (MessageNew MessageExpunge))",
        list.join(" ")
    );
    match tokio::time::timeout(
        command_timeout(),
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

/// One IDLE on the first tracked folder, until new data, renewal, a wake-up or shutdown.
/// Returns the connection for the next pass, or an error when it died.
async fn idle_once(
    mut conn: Connected,
    t: &Task,
    tracked: &[Tracked],
    notify: bool,
) -> Result<(Connected, Woke), ImapError> {
    let f = &tracked[0].folder;
    let sel =
        crate::imap::fetch::examine(&mut conn.session, &conn.addr, &f.server_name, &f.name).await?;
    if let Ok(Some(st)) = t.store.folder_state(&t.mb.name, &f.name) {
        if st.uidvalidity != sel.uidvalidity || st.uid_next != sel.uid_next {
            return Ok((conn, Woke::NewData)); // arrived since the pass: no need to wait
        }
    }
    let others = tracked.len() > 1 && !notify;
    let total = if others {
        t.mb.watch.idle_renew.min(t.mb.watch.others_interval)
    } else {
        t.mb.watch.idle_renew
    };
    let mode = if notify { "IDLE+NOTIFY" } else { "IDLE" };
    if let Ok(mut l) = t.live.lock() {
        l.mode = mode.into();
    }
    crate::metrics::metrics().mode(
        &t.mb.name,
        Some(if notify { "idle_notify" } else { "idle" }),
    );
    set(
        &t.live,
        "idle",
        format!(
            "IDLE on {}{}",
            f.name,
            if notify && tracked.len() > 1 {
                format!(", NOTIFY for {} more", tracked.len() - 1)
            } else if others {
                format!(
                    ", STATUS of {} more every {} s",
                    tracked.len() - 1,
                    total.as_secs()
                )
            } else {
                String::new()
            }
        ),
    );
    let Connected {
        session,
        capabilities,
        addr,
        security,
    } = conn;
    let mut handle = session.idle();
    let dead = |what: &str, message: String| ImapError::Protocol {
        addr: addr.clone(),
        what: what.into(),
        message,
    };
    match tokio::time::timeout(command_timeout(), handle.init()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(dead("IDLE", e.to_string())),
        Err(_) => return Err(dead("IDLE", "no answer".into())),
    }
    let woke = {
        let (fut, stop) = handle.wait_with_timeout(t.mb.watch.heartbeat_timeout);
        tokio::pin!(fut);
        let w = tokio::select! {
            r = &mut fut => match r {
                Ok(IdleResponse::NewData(_)) => Ok(Woke::NewData),
                Ok(IdleResponse::Timeout) => Ok(Woke::Heartbeat),
                // We did not interrupt: the stream ended, the server closed the connection.
                Ok(IdleResponse::ManualInterrupt) => Err(dead("IDLE", "the server closed the connection".into())),
                Err(e) => Err(dead("IDLE", e.to_string())),
            },
            _ = tokio::time::sleep(total) => Ok(Woke::Renew),
            _ = t.wake.notified() => Ok(Woke::Asked),
            _ = t.cancel.cancelled() => Ok(Woke::Shutdown),
        };
        drop(stop);
        w?
    };
    let session = match tokio::time::timeout(Duration::from_secs(15), handle.done()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(dead("DONE", e.to_string())),
        Err(_) => return Err(dead("DONE", "no answer within 15 s".into())),
    };
    while session.unsolicited_responses.try_recv().is_ok() {}
    tracing::debug!(mailbox = %t.mb.name, ?woke, "IDLE ended");
    Ok((
        Connected {
            session,
            capabilities,
            addr,
            security,
        },
        woke,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(80));
        let ds: Vec<f64> = (0..10).map(|_| b.delay().as_secs_f64()).collect();
        for (i, d) in ds.iter().enumerate() {
            let base = (1u64 << i.min(7)).min(80) as f64;
            assert!(
                *d >= base * 0.8 - 1e-9 && *d <= base * 1.2 + 1e-9,
                "delay {i} = {d}, base {base}"
            );
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(1200));
    }

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
