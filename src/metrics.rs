//! Prometheus metrics and the folder lag that `/healthz` judges.
//!
//! The counters live in one process-wide [`Metrics`] (the sync code records into it whether or
//! not anyone scrapes; an atomic add costs nothing next to an IMAP round trip), and `run` serves
//! them when `[metrics] listen` is set ([`crate::http`]). prometheus-client was chosen for its
//! small dependency tree and its OpenMetrics text encoder. It must be 0.25.2 or later: before,
//! label values were written as they were, and a folder named `Acme "Ltd"` (or one with a
//! newline, which a hostile server can send) broke every scrape or forged series.
//!
//! **Latency** (`foldertrack_tracking_latency_seconds`) is measured from the moment foldertrack
//! *detected* new mail (the start of the pass that an IDLE/NOTIFY event, a poll or a wake-up
//! began) to the commit of the message's activity. Not from INTERNALDATE: a MOVE or COPY keeps
//! the message's original INTERNALDATE (RFC 3501/6851), so for a mail dragged into a tracked
//! folder it measures the mail's age, not the drag. The server's own notification delay (about
//! 0.5 s for Dovecot's IDLE) comes on top; `cargo bench --bench latency` measures the whole.
//!
//! **Lag** of a folder: the server's UIDNEXT (from STATUS or EXAMINE at each pass) beyond what
//! the checkpoint covers. A folder is *lagging* when it has been behind for longer than
//! `[health] lag_threshold`; mail that arrives and is tracked in the next pass never counts.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Labels = Vec<(&'static str, String)>;

/// The watch modes `foldertrack_watch_mode` reports, one gauge per mode set to 1 for the
/// current one.
pub(crate) const MODES: [&str; 3] = ["idle_notify", "idle", "poll"];

/// Every metric foldertrack exports.
pub(crate) struct Metrics {
    registry: Registry,
    messages: Family<Labels, Counter>,
    connections: Family<Labels, Counter>,
    reconnects: Family<Labels, Counter>,
    connected: Family<Labels, Gauge>,
    mode: Family<Labels, Gauge>,
    last_uid: Family<Labels, Gauge>,
    lag: Family<Labels, Gauge>,
    lag_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    latency: Family<Labels, Histogram>,
    store_bytes: Gauge,
    activities: Gauge,
    quarantined: Gauge,
    outbox: Family<Labels, Gauge>,
    leases: Family<Labels, Gauge>,
    takeovers: Counter,
    folders: Mutex<HashMap<(String, String), FolderLag>>,
    /// When the store gauges were last read; held while they are read.
    store_read_at: Mutex<Option<Instant>>,
}

/// How old the store gauges (`store_bytes`, `activities`, `quarantine_messages`,
/// `outbox_messages`) may be when served: a scrape interval is usually 15 s or more.
pub(crate) const STORE_MAX_AGE: Duration = Duration::from_secs(10);

/// Where a folder stands against the server.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FolderLag {
    /// The server's UIDNEXT, as last seen.
    pub server_uid_next: u32,
    /// The UIDNEXT the checkpoint covers (`last_uid + 1`, or the UIDNEXT of a completed pass).
    pub covered_uid_next: u32,
    /// When the folder first fell behind; `None` while caught up.
    pub behind_since: Option<Instant>,
}

impl FolderLag {
    /// Messages (by UID) on the server not yet processed: an upper bound, as UIDs may be gaps.
    pub(crate) fn messages(&self) -> u32 {
        self.server_uid_next.saturating_sub(self.covered_uid_next)
    }
}

fn latency_histogram() -> Histogram {
    // 5 ms to about 80 s: IDLE tracking is ~5 ms after detection; a 10,000-message catch-up
    // pass can take seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

fn mb(mailbox: &str) -> Labels {
    vec![("mailbox", mailbox.to_string())]
}

fn mf(mailbox: &str, folder: &str) -> Labels {
    vec![
        ("mailbox", mailbox.to_string()),
        ("folder", folder.to_string()),
    ]
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("foldertrack");
        let m = Metrics {
            messages: Family::default(),
            connections: Family::default(),
            reconnects: Family::default(),
            connected: Family::default(),
            mode: Family::default(),
            last_uid: Family::default(),
            lag: Family::default(),
            lag_seconds: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            store_bytes: Gauge::default(),
            activities: Gauge::default(),
            quarantined: Gauge::default(),
            outbox: Family::default(),
            leases: Family::default(),
            takeovers: Counter::default(),
            folders: Mutex::new(HashMap::new()),
            store_read_at: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register(
            "leases",
            "Mailbox leases held, by agent (PostgreSQL with several agents; read from the lease table)",
            m.leases.clone(),
        );
        registry.register(
            "lease_takeovers",
            "Mailboxes this agent took over after another agent's lease lapsed",
            m.takeovers.clone(),
        );
        registry.register(
            "messages",
            "Messages processed, by mailbox, folder and outcome (tracked: new activity; merged: copy of a tracked message; replayed: already tracked from this source; quarantined; skipped: left out by track_other_mail; failed: in a batch whose commit failed, retried at the next pass)",
            m.messages.clone(),
        );
        registry.register(
            "connections",
            "IMAP logins that succeeded",
            m.connections.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnections after a dropped or failed connection",
            m.reconnects.clone(),
        );
        registry.register(
            "connected",
            "1 while the mailbox's IMAP connection is up",
            m.connected.clone(),
        );
        registry.register(
            "watch_mode",
            "1 for the way the mailbox waits for new mail now: idle_notify, idle or poll",
            m.mode.clone(),
        );
        registry.register(
            "folder_last_uid",
            "Highest UID processed (the checkpoint)",
            m.last_uid.clone(),
        );
        registry.register(
            "folder_lag_messages",
            "Messages (by UID) the server has beyond the checkpoint, at the last look",
            m.lag.clone(),
        );
        registry.register(
            "folder_lag_seconds",
            "How long the folder has been behind the server (0 when caught up)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "tracking_latency_seconds",
            "From detecting new mail (start of the pass it triggered) to its activity's commit",
            m.latency.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes the store takes: sled's files and blob packs in the data dir, or the PostgreSQL database's size",
            m.store_bytes.clone(),
        );
        registry.register(
            "activities",
            "Activities in the store",
            m.activities.clone(),
        );
        registry.register(
            "quarantine_messages",
            "Messages in quarantine",
            m.quarantined.clone(),
        );
        registry.register(
            "outbox_messages",
            "Outgoing email activities by mailbox and send state (queued, sending, sent, failed, unknown, cancelled)",
            m.outbox.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts `n` messages of a folder with `outcome`.
    pub(crate) fn messages(&self, mailbox: &str, folder: &str, outcome: &'static str, n: u64) {
        if n > 0 {
            let mut l = mf(mailbox, folder);
            l.push(("outcome", outcome.to_string()));
            self.messages.get_or_create(&l).inc_by(n);
        }
    }

    pub(crate) fn connected(&self, mailbox: &str, up: bool) {
        if up {
            self.connections.get_or_create(&mb(mailbox)).inc();
        }
        self.connected.get_or_create(&mb(mailbox)).set(up as i64);
    }

    pub(crate) fn reconnect(&self, mailbox: &str) {
        self.reconnects.get_or_create(&mb(mailbox)).inc();
    }

    /// Sets the mailbox's watch mode (one of [`MODES`]); `None` when it waits for nothing
    /// (stopped, disabled).
    pub(crate) fn mode(&self, mailbox: &str, mode: Option<&str>) {
        for m in MODES {
            let mut l = mb(mailbox);
            l.push(("mode", m.to_string()));
            self.mode.get_or_create(&l).set((Some(m) == mode) as i64);
        }
    }

    pub(crate) fn latency(&self, mailbox: &str, secs: f64, n: u32) {
        let h = self.latency.get_or_create(&mb(mailbox));
        for _ in 0..n {
            h.observe(secs);
        }
    }

    /// The server's UIDNEXT for a folder, as STATUS or EXAMINE gave it.
    pub(crate) fn server_uid_next(&self, mailbox: &str, folder: &str, uid_next: u32) {
        self.update(mailbox, folder, |f| f.server_uid_next = uid_next);
    }

    /// What the folder's checkpoint now covers.
    pub(crate) fn checkpoint(
        &self,
        mailbox: &str,
        folder: &str,
        last_uid: u32,
        synced_uid_next: u32,
    ) {
        self.last_uid
            .get_or_create(&mf(mailbox, folder))
            .set(last_uid as i64);
        self.update(mailbox, folder, |f| {
            f.covered_uid_next = (last_uid.saturating_add(1)).max(synced_uid_next)
        });
    }

    fn update(&self, mailbox: &str, folder: &str, change: impl FnOnce(&mut FolderLag)) {
        let Ok(mut m) = self.folders.lock() else {
            return;
        };
        let f = m
            .entry((mailbox.to_string(), folder.to_string()))
            .or_default();
        change(f);
        if f.messages() == 0 {
            f.behind_since = None;
        } else if f.behind_since.is_none() {
            f.behind_since = Some(Instant::now());
        }
        self.lag
            .get_or_create(&mf(mailbox, folder))
            .set(f.messages() as i64);
    }

    /// Every folder's lag, keyed by (mailbox, folder).
    pub(crate) fn folder_lags(&self) -> HashMap<(String, String), FolderLag> {
        self.folders.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Folders behind for longer than `threshold`: `(mailbox, folder, messages, behind for)`.
    pub(crate) fn lagging(&self, threshold: Duration) -> Vec<(String, String, u32, Duration)> {
        let mut out: Vec<_> = self
            .folder_lags()
            .into_iter()
            .filter_map(|((m, f), l)| {
                let d = l.behind_since?.elapsed();
                (d > threshold).then_some((m, f, l.messages(), d))
            })
            .collect();
        out.sort();
        out
    }

    /// This agent took over a lapsed lease.
    pub(crate) fn takeover(&self) {
        self.takeovers.inc();
    }

    /// The text exposition. The store gauges are read again when older than
    /// [`STORE_MAX_AGE`].
    pub(crate) fn encode(&self, store: Option<&crate::store::Store>) -> String {
        self.encode_within(store, STORE_MAX_AGE)
    }

    fn encode_within(&self, store: Option<&crate::store::Store>, max_age: Duration) -> String {
        if let Some(s) = store {
            // One reader at a time: a scrape that finds another reading serves the values it
            // has rather than queueing a second scan behind it (scrapes that time out do not
            // cancel a scan in progress, so they must not start more).
            if let Ok(mut read_at) = self.store_read_at.try_lock() {
                if read_at.is_none_or(|t| t.elapsed() >= max_age) {
                    self.read_store(s);
                    *read_at = Some(Instant::now());
                }
            }
        }
        for ((m, f), l) in self.folder_lags() {
            self.lag_seconds
                .get_or_create(&mf(&m, &f))
                .set(l.behind_since.map_or(0.0, |s| s.elapsed().as_secs_f64()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Reads the store gauges: counts of sled trees are full iterations, the outbox summary
    /// decodes every entry.
    fn read_store(&self, s: &crate::store::Store) {
        self.store_bytes.set(s.disk_usage() as i64);
        self.activities.set(s.activity_count() as i64);
        self.quarantined.set(s.quarantine_count() as i64);
        if let Some(l) = s.leases() {
            // Every agent seen, so one that left goes back to 0.
            // (`mailboxes` counts live leases only, whatever the TTL given.)
            for a in l.agents(60.0).unwrap_or_default() {
                self.leases
                    .get_or_create(&vec![("agent", a.name)])
                    .set(a.mailboxes);
            }
        }
        // Every state of every mailbox seen, so a state that empties goes back to 0.
        for (m, summary) in s.outbox_summary().unwrap_or_default() {
            for st in crate::store::SendState::ALL {
                let n = summary.counts.get(&st).copied().unwrap_or(0);
                let mut l = mb(&m);
                l.push(("state", st.as_str().to_string()));
                self.outbox.get_or_create(&l).set(n as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_starts_when_behind_and_clears_when_caught_up() {
        let m = Metrics::new();
        m.checkpoint("a", "INBOX", 10, 11);
        m.server_uid_next("a", "INBOX", 11);
        assert_eq!(m.folder_lags()[&("a".into(), "INBOX".into())].messages(), 0);
        m.server_uid_next("a", "INBOX", 14);
        let l = m.folder_lags()[&("a".into(), "INBOX".into())];
        assert_eq!(l.messages(), 3);
        assert!(l.behind_since.is_some());
        assert_eq!(m.lagging(Duration::from_secs(3600)).len(), 0);
        assert_eq!(m.lagging(Duration::ZERO).len(), 1);
        // A pass that found the last UIDs expunged covers UIDNEXT without a higher last UID.
        m.checkpoint("a", "INBOX", 12, 14);
        assert!(m.folder_lags()[&("a".into(), "INBOX".into())]
            .behind_since
            .is_none());
        m.messages("a", "INBOX", "tracked", 2);
        m.mode("a", Some("idle"));
        m.latency("a", 0.01, 2);
        let text = m.encode(None);
        assert!(
            text.contains(
                "foldertrack_messages_total{mailbox=\"a\",folder=\"INBOX\",outcome=\"tracked\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("foldertrack_watch_mode{mailbox=\"a\",mode=\"idle\"} 1"));
        assert!(text.contains("foldertrack_tracking_latency_seconds_count{mailbox=\"a\"} 2"));
        assert!(text.ends_with("# EOF\n"));
    }

    /// The store's counts are read at most once per [`STORE_MAX_AGE`], not at every scrape: a
    /// count of a sled tree is a full iteration, and scrapes come from anyone on the network.
    #[test]
    fn store_counts_are_cached_between_scrapes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), 1 << 20).unwrap();
        let m = Metrics::new();
        let quarantined = |text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix("foldertrack_quarantine_messages "))
                .map(str::to_string)
        };
        assert_eq!(quarantined(&m.encode(Some(&store))).as_deref(), Some("0"));
        let source = crate::model::Source {
            mailbox: "a".into(),
            folder: "INBOX".into(),
            uidvalidity: 1,
            uid: 1,
        };
        let item = crate::store::BatchItem::Quarantined {
            source,
            reason: "test".into(),
            raw: b"x".to_vec(),
            size: 1,
        };
        let cp = crate::store::FolderState {
            mailbox: "a".into(),
            folder: "INBOX".into(),
            ..Default::default()
        };
        store.commit_batch(&[item], &cp, "a").unwrap();
        assert_eq!(
            quarantined(&m.encode(Some(&store))).as_deref(),
            Some("0"),
            "read again within STORE_MAX_AGE"
        );
        assert_eq!(
            quarantined(&m.encode_within(Some(&store), Duration::ZERO)).as_deref(),
            Some("1"),
            "read again once older"
        );
    }

    /// Label values are escaped as the exposition format says: a folder name cannot end its
    /// label, nor start a line of its own (a forged series).
    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        let folder = "x\"} 1\nfoldertrack_activities 999\n\\";
        m.messages("a", folder, "tracked", 1);
        let text = m.encode(None);
        assert!(
            text.contains(
                r#"foldertrack_messages_total{mailbox="a",folder="x\"} 1\nfoldertrack_activities 999\n\\",outcome="tracked"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("\nfoldertrack_activities 999"), "{text}");
    }
}
