//! A long-running worker and the runner that drives it (the shape of garage's background
//! `Worker`). The worker knows its job: [`Worker::work`] does one unit (a mailbox's passes, an
//! outbox round) and is never cut off in the middle; [`Worker::wait_for_work`] waits until
//! there is more (IDLE, a poll timer) and ends early when woken or cancelled. The runner owns
//! what every worker needs the same way: backoff after a failure, shutdown, and the state it
//! publishes, a typed [`WorkerState`] that `status`, `/healthz` and the metrics read.

use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How a mailbox waits for new mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchMode {
    /// IDLE on one folder, NOTIFY (RFC 5465) for the others on the same connection.
    IdleNotify,
    /// IDLE on one folder, STATUS of the others every `others_interval`.
    Idle,
    /// No IDLE (or `idle = false`): a pass every `poll_interval`.
    Poll,
}

impl WatchMode {
    /// As `status` shows it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WatchMode::IdleNotify => "IDLE+NOTIFY",
            WatchMode::Idle => "IDLE",
            WatchMode::Poll => "poll",
        }
    }

    /// The `mode` label of `foldertrack_watch_mode`.
    pub(crate) fn metric_label(self) -> &'static str {
        match self {
            WatchMode::IdleNotify => "idle_notify",
            WatchMode::Idle => "idle",
            WatchMode::Poll => "poll",
        }
    }
}

/// What a worker is doing now. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) enum WorkerState {
    #[default]
    Starting,
    /// Opening a connection to `server`.
    Connecting {
        server: String,
    },
    /// Doing its work (a pass, an outbox round).
    Syncing,
    /// Waiting for the server to say there is new mail.
    Idle {
        mode: WatchMode,
        detail: String,
    },
    /// Waiting for the next poll.
    Polling {
        next: i64,
    },
    /// The last attempt failed; the next one is at `until`.
    BackingOff {
        until: i64,
        error: String,
    },
    /// Stopped for good until the configuration changes (a permanent error).
    Disabled {
        reason: String,
    },
    Stopped,
    /// Another agent holds the mailbox's lease (PostgreSQL with several agents).
    Elsewhere,
}

impl WorkerState {
    /// The one-word label `status` and scripts compare with.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            WorkerState::Starting | WorkerState::Connecting { .. } => "connecting",
            WorkerState::Syncing => "syncing",
            WorkerState::Idle { .. } => "idle",
            WorkerState::Polling { .. } => "polling",
            WorkerState::BackingOff { .. } => "backing off",
            WorkerState::Disabled { .. } => "disabled",
            WorkerState::Stopped => "stopped",
            WorkerState::Elsewhere => "elsewhere",
        }
    }

    /// A sentence for people.
    pub(crate) fn detail(&self) -> String {
        match self {
            WorkerState::Starting | WorkerState::Syncing | WorkerState::Stopped => String::new(),
            WorkerState::Elsewhere => "worked by another agent (see `foldertrack agents`)".into(),
            WorkerState::Connecting { server } => server.clone(),
            WorkerState::Idle { detail, .. } => detail.clone(),
            WorkerState::Polling { next } => format!(
                "next poll at {} (in {} s)",
                crate::time::rfc3339_utc(*next),
                (*next - unix_now()).max(0)
            ),
            WorkerState::BackingOff { until, error } => format!(
                "next attempt at {} (in {} s) after: {error}",
                crate::time::rfc3339_utc(*until),
                (*until - unix_now()).max(0)
            ),
            WorkerState::Disabled { reason } => reason.clone(),
        }
    }

    pub(crate) fn is_disabled(&self) -> bool {
        matches!(self, WorkerState::Disabled { .. })
    }
}

/// A worker's published state and counters, read by `status`. Serialised with the state as
/// its label plus a sentence (`state`, `detail`, `until`), the shape `status --json` has had.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LiveState {
    pub state: WorkerState,
    /// How the worker waits when it waits (`None` before its first wait).
    pub mode: Option<WatchMode>,
    pub reconnects: u32,
    pub last_pass: Option<String>,
    pub connected_since: Option<String>,
}

impl Serialize for LiveState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            state: &'a str,
            detail: String,
            mode: &'a str,
            reconnects: u32,
            last_pass: &'a Option<String>,
            connected_since: &'a Option<String>,
            until: Option<String>,
        }
        Wire {
            state: self.state.label(),
            detail: self.state.detail(),
            mode: self.mode.map_or("", WatchMode::as_str),
            reconnects: self.reconnects,
            last_pass: &self.last_pass,
            connected_since: &self.connected_since,
            until: match &self.state {
                WorkerState::BackingOff { until, .. } => Some(crate::time::rfc3339_utc(*until)),
                _ => None,
            },
        }
        .serialize(s)
    }
}

/// The shared handle on a worker's [`LiveState`]: the worker and runner write it, the
/// control socket and `/healthz` read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live(Arc<Mutex<LiveState>>);

impl Live {
    pub(crate) fn set(&self, state: WorkerState) {
        self.update(|l| l.state = state);
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut LiveState)) {
        if let Ok(mut l) = self.0.lock() {
            f(&mut l);
        }
    }

    pub(crate) fn get(&self) -> LiveState {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Why a unit of work failed, and whether trying again can help.
#[derive(Debug, Clone)]
pub(crate) struct WorkError {
    pub message: String,
    /// Retrying will not help (wrong password twice, TLS refused): the worker is disabled.
    pub permanent: bool,
}

impl WorkError {
    pub(crate) fn transient(e: impl std::fmt::Display) -> WorkError {
        WorkError {
            message: e.to_string(),
            permanent: false,
        }
    }
}

/// What the runner lends the worker while it waits: the bell that asks for work now, and the
/// shutdown token.
#[derive(Clone, Copy)]
pub(crate) struct Signals<'a> {
    pub wake: &'a Notify,
    pub cancel: &'a CancellationToken,
}

/// A long-running job.
pub(crate) trait Worker: Send {
    /// One unit of work, run to its end; it may look at `cancel` between batches, never in
    /// the middle of one.
    fn work(
        &mut self,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<(), WorkError>> + Send;

    /// Waits until there is work again. It must end soon after `wake` rings or `cancel` fires,
    /// leaving the worker able to go on (an IDLE is ended with DONE, not dropped).
    fn wait_for_work(
        &mut self,
        signals: Signals<'_>,
    ) -> impl Future<Output = Result<(), WorkError>> + Send;
}

/// What the runner needs besides the worker.
pub(crate) struct Runner {
    pub live: Live,
    pub wake: Arc<Notify>,
    pub cancel: CancellationToken,
    /// The longest wait between two failed attempts.
    pub backoff_max: Duration,
    /// For the log lines.
    pub name: String,
}

impl Runner {
    /// Runs `worker` until `cancel`, or until it fails permanently (then its state stays
    /// `Disabled` with the reason).
    pub(crate) async fn run<W: Worker>(self, mut worker: W) {
        let mut backoff = Backoff::new(self.backoff_max);
        while !self.cancel.is_cancelled() {
            let failed = match worker.work(&self.cancel).await {
                Ok(()) => {
                    backoff.reset();
                    if self.cancel.is_cancelled() {
                        break;
                    }
                    let signals = Signals {
                        wake: &self.wake,
                        cancel: &self.cancel,
                    };
                    worker.wait_for_work(signals).await.err()
                }
                Err(e) => Some(e),
            };
            let Some(e) = failed else { continue };
            if e.permanent {
                tracing::error!(worker = %self.name, error = %e.message, "disabled");
                self.live.set(WorkerState::Disabled { reason: e.message });
                return;
            }
            if !self.back_off(&mut backoff, e.message).await {
                break;
            }
        }
        self.live.update(|l| {
            if !l.state.is_disabled() {
                l.state = WorkerState::Stopped;
            }
        });
    }

    /// Waits out the next backoff delay (a wake-up cuts it short); `false` on shutdown.
    async fn back_off(&self, backoff: &mut Backoff, error: String) -> bool {
        let d = backoff.delay();
        let until = unix_now() + d.as_secs_f64().ceil() as i64;
        tracing::debug!(worker = %self.name, delay_ms = d.as_millis() as u64, "backing off");
        self.live.set(WorkerState::BackingOff { until, error });
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.wake.notified() => true,
            _ = self.cancel.cancelled() => false,
        }
    }
}

pub(crate) use crate::time::unix_now;

/// Exponential backoff with ±20 % jitter: 1 s doubling to `max`, reset after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
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

    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_secs(1);
    }

    /// The delay to wait now; the next one doubles.
    pub(crate) fn delay(&mut self) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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

    /// Fails `fail` times, then works; waits forever (until woken or cancelled).
    struct Flaky {
        fail: u32,
        permanent: bool,
        works: Arc<AtomicU32>,
    }

    impl Worker for Flaky {
        async fn work(&mut self, _: &CancellationToken) -> Result<(), WorkError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(WorkError {
                    message: "server said no".into(),
                    permanent: self.permanent,
                });
            }
            self.works.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn wait_for_work(&mut self, s: Signals<'_>) -> Result<(), WorkError> {
            tokio::select! {
                _ = s.wake.notified() => {}
                _ = s.cancel.cancelled() => {}
            }
            Ok(())
        }
    }

    fn runner(live: &Live, wake: &Arc<Notify>, cancel: &CancellationToken) -> Runner {
        Runner {
            live: live.clone(),
            wake: wake.clone(),
            cancel: cancel.clone(),
            backoff_max: Duration::from_secs(80),
            name: "test".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn runner_backs_off_doubling_after_failures_then_works_and_stops_on_cancel() {
        let (live, wake, cancel) = (
            Live::default(),
            Arc::new(Notify::new()),
            CancellationToken::new(),
        );
        let works = Arc::new(AtomicU32::new(0));
        let w = Flaky {
            fail: 3,
            permanent: false,
            works: works.clone(),
        };
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(runner(&live, &wake, &cancel).run(w));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(live.get().state.label(), "backing off");
        // 1 + 2 + 4 s (±20 %) of backoff before the fourth attempt works
        while works.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs_f64(7.0 * 0.8)
                && waited <= Duration::from_secs_f64(7.0 * 1.2 + 0.2),
            "{waited:?}"
        );
        // A wake-up asks for work at once.
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(works.load(Ordering::SeqCst), 2);
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(live.get().state, WorkerState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_disables_the_worker_with_its_reason() {
        let (live, wake, cancel) = (
            Live::default(),
            Arc::new(Notify::new()),
            CancellationToken::new(),
        );
        let w = Flaky {
            fail: 1,
            permanent: true,
            works: Arc::default(),
        };
        runner(&live, &wake, &cancel).run(w).await;
        let st = live.get();
        assert_eq!(
            st.state,
            WorkerState::Disabled {
                reason: "server said no".into()
            }
        );
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["state"], "disabled");
        assert_eq!(json["detail"], "server said no");
    }
}
