//! Several agents on one PostgreSQL store (issue 17), each test with real processes: agents
//! started from one config with their own `--data-dir`, a private Dovecot, and a private
//! PostgreSQL cluster that the lease table is read from with SQL.
//!
//! - three agents share twelve mailboxes evenly while mail arrives the whole time; the
//!   database is restarted under them; one is SIGKILLed and its mailboxes are taken over
//!   within 30 s; one gets SIGTERM and its mailboxes are taken over within 5 s; every message
//!   is one activity, and no mailbox was worked by two agents at once (from the agents' own
//!   log lines: a grant to its worker's end);
//! - fencing: an agent paused (SIGSTOP) with a batch in hand for twice the lease TTL cannot
//!   commit it when it wakes: refused by the epoch check, nothing doubled, no checkpoint
//!   moved backwards, and it works as a normal agent afterwards;
//! - the same message in two mailboxes of two agents at the same moment: one activity with
//!   two sources.
//!
//! Leases here live 4 s and are renewed every second, so that a take-over takes seconds.
//! Without PostgreSQL these tests print `SKIPPED` and pass; under CI that is a failure.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::pg::PgCluster;
use testkit::*;

/// `[agent] lease_ttl` of the tests, seconds.
const TTL: u64 = 4;

/// What the agents log when a worker starts and ends (the lease manager and the supervisor).
const GRANTED: &str = "mailbox lease granted";
const TAKEN: &str = "mailbox taken over";
const STOPPED: &str = "mailbox worker stopped";

/// Mailboxes `m01…mNN` (one Dovecot user each, the Acme rule), all agents' config, and the
/// database.
struct Fleet {
    e: Env,
    pg: PgCluster,
    mailboxes: Vec<String>,
}

/// The `[store]` and `[agent]` tables of the fleet's config.
fn store_table(pg: &PgCluster) -> String {
    format!(
        "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n\
         [agent]\nlease_ttl = {TTL}\nlease_renew = 1\n",
        pg.url()
    )
}

fn fleet(n: usize) -> Option<Fleet> {
    let pg = PgCluster::start()?;
    let mailboxes: Vec<String> = (1..=n).map(|i| format!("m{i:02}")).collect();
    let mut opts = cast();
    opts.users
        .extend(mailboxes.iter().map(|u| (u.clone(), PASSWORD.to_string())));
    let e = env_with(opts);
    let mut config = Config::new().metrics().store(&store_table(&pg));
    for m in &mailboxes {
        e.create_folders(m, &["INBOX/Tracked", ACME]);
        config = config.mailbox(e.mailbox(m).rule(acme()));
    }
    config.write(&e.work);
    e.import_records(RECORDS);
    Some(Fleet { e, pg, mailboxes })
}

/// A running agent of the fleet, by its short name (`a`, `b`, …).
struct Member {
    short: String,
    agent: Agent,
    /// Its `[agent] name`: the host name and its data dir.
    name: String,
    /// The lines it logged when a mailbox worker started or ended, read so far.
    events: Vec<(Instant, String)>,
}

impl Member {
    /// Moves the watched lines read so far into `events`.
    fn drain(&mut self) {
        self.events.extend(self.agent.lines().try_iter());
    }

    /// Waits up to `secs` for a watched line holding `what`.
    fn wait_line(&mut self, what: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.drain();
            if let Some((_, l)) = self.events.iter().find(|(_, l)| l.contains(what)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "agent {} logged no `{what}` within {secs} s; log:\n{}",
                self.short,
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Fleet {
    /// Starts agent `short` with `--data-dir work/<short>` and the extra environment.
    fn start(&self, short: &str, envs: &[(&str, &str)]) -> Member {
        let dir = self.e.work.join(short);
        let mut spec = self
            .e
            .agent()
            .arg("--data-dir")
            .arg(&dir.to_string_lossy())
            .log(&self.e.work.join(format!("{short}.log")))
            .watch(&[
                GRANTED,
                TAKEN,
                STOPPED,
                "batch refused",
                "holding the batch",
            ]);
        for (k, v) in envs {
            spec = spec.env(k, v);
        }
        let agent = spec.start();
        let name = format!("{}:{}", host_name(), dir.display());
        Member {
            short: short.into(),
            agent,
            name,
            events: Vec::new(),
        }
    }

    fn sql(&self) -> postgres::Client {
        let mut c = postgres::Client::connect(self.pg.url(), postgres::NoTls)
            .expect("an SQL session on the database");
        c.batch_execute("SET statement_timeout = '30s'").unwrap();
        c
    }

    /// Each mailbox's live owner, read from the lease table (`None`: the database is down).
    fn owners(&self) -> Option<BTreeMap<String, String>> {
        let mut c = postgres::Client::connect(self.pg.url(), postgres::NoTls).ok()?;
        let rows = c
            .query(
                "SELECT mailbox, agent FROM leases WHERE agent IS NOT NULL AND until > now()",
                &[],
            )
            .ok()?;
        Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Seconds until the first of `agent`'s leases lapses, by the database's clock.
    fn time_left(&self, agent: &str) -> f64 {
        self.sql()
            .query_one(
                "SELECT extract(epoch FROM min(until) - now())::float8 FROM leases WHERE agent = $1",
                &[&agent],
            )
            .unwrap()
            .get(0)
    }

    /// How many leases were renewed (or granted) within the last `secs`.
    fn renewed_within(&self, secs: f64) -> i64 {
        let Ok(mut c) = postgres::Client::connect(self.pg.url(), postgres::NoTls) else {
            return 0;
        };
        c.query_one(
            "SELECT count(*) FROM leases WHERE agent IS NOT NULL
                 AND until > now() + ($1::float8 - $2::float8) * interval '1 second'",
            &[&(TTL as f64), &secs],
        )
        .map_or(0, |r| r.get(0))
    }

    /// How many mailboxes each agent holds, by agent name.
    fn shares(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for a in self.owners().unwrap_or_default().values() {
            *out.entry(a.clone()).or_default() += 1;
        }
        out
    }

    /// (activities, distinct Message-IDs, sources), read with SQL.
    fn counts(&self) -> (i64, i64, i64) {
        let row = self
            .sql()
            .query_one(
                "SELECT (SELECT count(*) FROM activities),
                        (SELECT count(DISTINCT message_id) FROM activities),
                        (SELECT count(*) FROM sources)",
                &[],
            )
            .expect("counting with SQL");
        (row.get(0), row.get(1), row.get(2))
    }

    /// Appends message `i` (`<f{i}@acme.com>`) to mailbox `m`'s Acme folder.
    fn deliver(&self, imap: &mut Imap, i: usize) {
        imap.append(
            ACME,
            &mail(&format!("fleet {i}"), &format!("<f{i}@acme.com>")),
        );
    }
}

/// The machine's host name, as the agents default their names to.
fn host_name() -> String {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("hostname");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// Delivers messages round-robin into every mailbox until `stop`: how many.
fn deliver_until(f: &Fleet, stop: &AtomicBool, count: &AtomicUsize) {
    let mut conns: Vec<Imap> = f.mailboxes.iter().map(|m| f.e.imap(m)).collect();
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let n = conns.len();
        f.deliver(&mut conns[i % n], i);
        i += 1;
        count.store(i, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// Asserts that no mailbox was worked by two agents at once: per agent, a mailbox's worker
/// runs from its grant (or take-over) line to its "worker stopped" line, or to `ends[agent]`
/// (the instant it was killed, or the end of the test).
fn assert_no_overlap(members: &[&Member], ends: &HashMap<String, Instant>) {
    let mut spans: BTreeMap<String, Vec<(Instant, Instant, String)>> = BTreeMap::new();
    for m in members {
        let mut open: HashMap<String, Instant> = HashMap::new();
        for (at, line) in &m.events {
            let Some(mb) = field(line, "mailbox") else {
                continue;
            };
            if line.contains(GRANTED) || line.contains(TAKEN) {
                open.insert(mb.to_string(), *at);
            } else if line.contains(STOPPED) {
                if let Some(from) = open.remove(mb) {
                    spans
                        .entry(mb.into())
                        .or_default()
                        .push((from, *at, m.short.clone()));
                }
            }
        }
        for (mb, from) in open {
            spans
                .entry(mb)
                .or_default()
                .push((from, ends[&m.short], m.short.clone()));
        }
    }
    for (mb, mut s) in spans {
        s.sort();
        for w in s.windows(2) {
            assert!(
                w[1].0 >= w[0].1 || w[1].2 == w[0].2,
                "mailbox {mb} was worked by agents {} and {} at once",
                w[0].2,
                w[1].2
            );
        }
    }
}

#[test]
fn three_agents_share_mailboxes_survive_a_database_restart_a_kill_and_a_stop() {
    let Some(f) = fleet(12) else { return };
    if !f.pg.require_private("restarting the database") {
        return;
    }
    let mut a = f.start("a", &[]);
    let mut b = f.start("b", &[]);
    let started = Instant::now();
    let mut c = f.start("c", &[]);
    wait_for("12 mailboxes held 4 ± 1 each by three agents", 60, || {
        let s = f.shares();
        s.values().sum::<usize>() == 12 && s.len() == 3 && s.values().all(|n| (3..=5).contains(n))
    });
    let balanced = started.elapsed();
    eprintln!("three agents balanced 12 mailboxes in {balanced:?}");
    assert!(
        balanced <= Duration::from_secs(2 * TTL),
        "balancing took {balanced:?}"
    );

    let stop = AtomicBool::new(false);
    let delivered = AtomicUsize::new(0);
    let mut killed = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| deliver_until(&f, &stop, &delivered));
        // The lease table, sampled: every mailbox has one live owner once it settled.
        wait_for("mail flowing", 30, || {
            delivered.load(Ordering::SeqCst) >= 24
        });

        // The database restarted under the three agents.
        f.pg.stop_server("fast");
        std::thread::sleep(Duration::from_secs(2));
        f.pg.start_server();
        wait_for("all 12 leases renewed after the restart", 60, || {
            f.renewed_within(2.0) == 12
        });

        // SIGKILL: c's mailboxes go to the others once its leases lapse.
        let of_c: Vec<String> = owned_by(&f, &c.name);
        assert!(!of_c.is_empty(), "c holds mailboxes before it is killed");
        // The shortest time left on c's leases: none may go to another agent before.
        let left = f.time_left(c.name.as_str());
        killed = Instant::now();
        c.agent.kill();
        wait_for("c's mailboxes taken over", 60, || {
            let o = f.owners().unwrap_or_default();
            of_c.iter().all(|m| o.get(m).is_some_and(|x| *x != c.name))
        });
        let takeover = killed.elapsed();
        eprintln!(
            "SIGKILL: {} mailbox(es) taken over in {takeover:?} (lease_ttl {TTL} s, {left:.2} s left on them)",
            of_c.len()
        );
        assert!(takeover < Duration::from_secs(30), "{takeover:?}");
        assert!(
            takeover.as_secs_f64() >= left - 0.3,
            "a live lease was taken: {takeover:?} with {left:.2} s left"
        );

        // SIGTERM: b hands its mailboxes back at once.
        let of_b: Vec<String> = owned_by(&f, &b.name);
        assert!(!of_b.is_empty(), "b holds mailboxes before it stops");
        let stopped = Instant::now();
        b.agent.signal("TERM");
        wait_for("b's mailboxes taken over by a", 30, || {
            let o = f.owners().unwrap_or_default();
            of_b.iter().all(|m| o.get(m) == Some(&a.name))
        });
        let handover = stopped.elapsed();
        eprintln!(
            "SIGTERM: {} mailbox(es) taken over in {handover:?}",
            of_b.len()
        );
        assert!(handover < Duration::from_secs(5), "{handover:?}");
        wait_for("all 12 mailboxes on a", 30, || {
            f.shares().get(&a.name) == Some(&12)
        });
        stop.store(true, Ordering::SeqCst);
    });
    let n = delivered.load(Ordering::SeqCst) as i64;
    let t = Instant::now();
    wait_for(&format!("{n} activities"), 90, || f.counts().0 >= n);
    eprintln!(
        "{n} messages delivered; all tracked {:?} after the last",
        t.elapsed()
    );
    assert_eq!(f.counts(), (n, n, n), "(activities, Message-IDs, sources)");
    let exited = b.agent.child.wait().expect("b exits");
    assert!(exited.success(), "b exits 0 on SIGTERM: {exited:?}");
    let end = Instant::now();
    for m in [&mut a, &mut b, &mut c] {
        m.drain();
    }
    // c's workers died with it: its open spans end at the kill.
    let ends: HashMap<String, Instant> = [("a", end), ("b", end), ("c", killed)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_no_overlap(&[&a, &b, &c], &ends);
    operator_view(&f, &a);
}

/// What an operator sees of the survivor `a` holding all twelve: `status --json`, `agents`,
/// the metrics; then `mailbox release` hands one back and it is granted again.
fn operator_view(f: &Fleet, a: &Member) {
    let dir = f.e.work.join("a");
    let cli = |args: &[&str]| {
        let o =
            f.e.command()
                .arg("--data-dir")
                .arg(&dir)
                .args(args)
                .output()
                .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let st: serde_json::Value = serde_json::from_str(&cli(&["status", "--json"])).unwrap();
    for m in st["mailboxes"].as_array().unwrap() {
        assert_eq!(m["lease"]["agent"], a.name.as_str(), "{m}");
        assert!(m["lease"]["epoch"].as_i64().unwrap() >= 1);
    }
    let me = st["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == a.name.as_str())
        .expect("a in `agents` of status");
    assert_eq!(me["mailboxes"], 12);
    let agents = cli(&["agents"]);
    assert!(
        agents.contains(&a.name) && agents.contains("m12"),
        "{agents}"
    );
    let (_, metrics) = testkit::http::get(a.agent.metrics_addr(), "/metrics");
    assert!(
        metrics.contains(&format!("foldertrack_leases{{agent=\"{}\"}} 12", a.name)),
        "{metrics}"
    );
    assert!(
        metrics.contains("foldertrack_lease_takeovers_total"),
        "{metrics}"
    );
    let epoch = |m: &str| -> i64 {
        f.sql()
            .query_one("SELECT epoch FROM leases WHERE mailbox = $1", &[&m])
            .unwrap()
            .get(0)
    };
    let before = epoch("m05");
    let said = cli(&["mailbox", "release", "m05"]);
    assert!(said.contains(&a.name), "{said}");
    wait_for("m05 handed back and granted again", 30, || {
        epoch("m05") > before && owned_by(f, &a.name).contains(&"m05".to_string())
    });
}

/// The mailboxes `agent` holds now.
fn owned_by(f: &Fleet, agent: &str) -> Vec<String> {
    f.owners()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, a)| a == agent)
        .map(|(m, _)| m)
        .collect()
}

/// (last UID, UIDVALIDITY) of mailbox `m`'s Acme checkpoint.
fn checkpoint(f: &Fleet, m: &str) -> (i64, i64) {
    let r = f
        .sql()
        .query_one(
            "SELECT last_uid, uidvalidity FROM checkpoints WHERE mailbox = $1 AND folder = $2",
            &[&m, &ACME],
        )
        .expect("the checkpoint");
    (r.get(0), r.get(1))
}

#[test]
fn an_agent_paused_past_its_lease_cannot_commit_the_batch_it_held() {
    let Some(f) = fleet(1) else { return };
    let hold = f.e.work.join("hold-batch");
    let hold_s = hold.to_string_lossy().to_string();
    let mut a = f.start("a", &[("FOLDERTRACK_HOLD_BATCH", &hold_s)]);
    wait_for("a holds m01", 30, || owned_by(&f, &a.name) == ["m01"]);
    let b = f.start("b", &[]);
    let mut imap = f.e.imap("m01");
    f.deliver(&mut imap, 0);
    wait_for("f0 tracked by a", 30, || f.counts().0 == 1);

    // A batch in hand, then a pause twice the lease TTL.
    std::fs::write(&hold, b"").unwrap();
    f.deliver(&mut imap, 1);
    a.wait_line("holding the batch", 30);
    a.agent.signal("STOP");
    let paused = Instant::now();
    wait_for("b takes m01 over from the paused a", 30, || {
        owned_by(&f, &b.name) == ["m01"]
    });
    eprintln!(
        "paused owner's mailbox taken over in {:?}",
        paused.elapsed()
    );
    wait_for("f1 tracked by b", 30, || f.counts().0 == 2);
    let before = checkpoint(&f, "m01");
    let rest = Duration::from_secs(2 * TTL).saturating_sub(paused.elapsed());
    std::thread::sleep(rest);

    // It wakes up with the batch and commits it: refused, by the database's epoch check.
    std::fs::remove_file(&hold).unwrap();
    a.agent.signal("CONT");
    let refused = a.wait_line("batch refused", 30);
    assert!(
        refused.contains("epoch") && refused.contains("m01"),
        "refused by the epoch check: {refused}"
    );
    assert_eq!(f.counts(), (2, 2, 2), "nothing doubled");
    let after = checkpoint(&f, "m01");
    assert!(
        after.0 >= before.0,
        "checkpoint moved backwards: {before:?} → {after:?}"
    );

    // a rejoins as a normal agent: when b stops, a takes the mailbox and tracks on.
    wait_for("a registered again", 30, || {
        f.sql()
            .query_one(
                "SELECT count(*) FROM agents WHERE name = $1 AND last_seen > now() - interval '2 seconds'",
                &[&a.name],
            )
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    });
    let stopped = Instant::now();
    assert!(b.agent.stop().success());
    wait_for("a holds m01 again", 10, || owned_by(&f, &a.name) == ["m01"]);
    eprintln!("SIGTERM: taken over in {:?}", stopped.elapsed());
    f.deliver(&mut imap, 2);
    wait_for("f2 tracked by a", 30, || f.counts().0 == 3);
    assert_eq!(f.counts(), (3, 3, 3));
    let after = checkpoint(&f, "m01");
    assert!(after.0 > before.0, "the checkpoint moved on: {after:?}");
}

/// A worker waiting on a commit when the database stops answering cannot be interrupted in
/// that call: it is aborted after a short grace and stopped before its lease lapses (before,
/// it waited on the call past its lease), and its batch never commits from it. Once the
/// database is back, the agent takes the mailbox again and the message is tracked once.
#[test]
fn a_worker_stuck_in_a_commit_when_the_database_stops_is_stopped_before_its_lease_lapses() {
    let Some(f) = fleet(1) else { return };
    if !f.pg.require_private("pausing the database") {
        return;
    }
    let hold = f.e.work.join("hold-batch");
    let hold_s = hold.to_string_lossy().to_string();
    let mut a = f.start("a", &[("FOLDERTRACK_HOLD_BATCH", &hold_s)]);
    wait_for("a holds m01", 30, || owned_by(&f, &a.name) == ["m01"]);
    std::fs::write(&hold, b"").unwrap();
    f.deliver(&mut f.e.imap("m01"), 0);
    a.wait_line("holding the batch", 30);
    wait_for("a renewal", 10, || f.renewed_within(0.5) == 1);
    let left = f.time_left(a.name.as_str());
    let lapse = Instant::now() + Duration::from_secs_f64(left);
    signal_database(&f, "STOP");
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let line = a.wait_line(&format!("{STOPPED} mailbox=m01"), 2 * TTL);
        (line, Instant::now())
    }));
    signal_database(&f, "CONT");
    let (line, stopped) = cut.expect("the worker stopped while the database did not answer");
    assert!(line.contains("aborted=true"), "{line}");
    assert!(
        stopped < lapse,
        "the worker ran on past its lease ({:?} after)",
        stopped - lapse
    );
    std::fs::remove_file(&hold).unwrap();
    wait_for("a holds m01 again", 30, || owned_by(&f, &a.name) == ["m01"]);
    wait_for("f0 tracked", 30, || f.counts().0 == 1);
    assert_eq!(f.counts(), (1, 1, 1), "tracked once");
}

#[test]
fn the_same_message_in_two_mailboxes_of_two_agents_is_one_activity_with_two_sources() {
    let Some(f) = fleet(2) else { return };
    let a = f.start("a", &[]);
    let b = f.start("b", &[]);
    wait_for("one mailbox each", 30, || {
        let s = f.shares();
        s.get(&a.name) == Some(&1) && s.get(&b.name) == Some(&1)
    });
    const N: usize = 20;
    let go = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        for m in ["m01", "m02"] {
            let (f, go) = (&f, &go);
            scope.spawn(move || {
                let mut imap = f.e.imap(m);
                let msgs: Vec<Vec<u8>> = (0..N)
                    .map(|i| mail(&format!("fleet {i}"), &format!("<f{i}@acme.com>")))
                    .collect();
                go.wait();
                for raw in &msgs {
                    imap.append(ACME, raw);
                }
            });
        }
    });
    wait_for("both copies of every message tracked", 60, || {
        f.counts().2 == 2 * N as i64
    });
    assert_eq!(f.counts(), (N as i64, N as i64, 2 * N as i64));
    let per: Vec<i64> = f
        .sql()
        .query(
            "SELECT count(DISTINCT mailbox) FROM sources GROUP BY activity_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        per,
        vec![2; N],
        "each activity has a source in each mailbox"
    );
}

/// Sends `sig` (`STOP`, `CONT`) to the cluster's server and all its processes: a stopped
/// server keeps its connections open and answers nothing, as behind a network partition.
fn signal_database(f: &Fleet, sig: &str) {
    let pid = std::fs::read_to_string(f.pg.data_dir().join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let children = std::process::Command::new("pgrep")
        .args(["-P", &pid])
        .output()
        .expect("pgrep");
    let mut pids = vec![pid];
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string),
    );
    let ok = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .args(&pids)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pids:?}");
}

#[test]
fn an_agent_cut_off_from_the_database_stops_its_workers_before_its_leases_lapse() {
    let Some(f) = fleet(2) else { return };
    if !f.pg.require_private("pausing the database") {
        return;
    }
    let mut a = f.start("a", &[]);
    wait_for("a holds both mailboxes", 30, || {
        owned_by(&f, &a.name).len() == 2
    });
    f.deliver(&mut f.e.imap("m01"), 0);
    wait_for("f0 tracked", 30, || f.counts().0 == 1);
    a.drain();
    // When the leases lapse by the database's clock, read just before the pause.
    wait_for("a renewal", 10, || f.renewed_within(0.5) == 2);
    let left = f.time_left(a.name.as_str());
    let lapse = Instant::now() + Duration::from_secs_f64(left);
    signal_database(&f, "STOP");
    let paused = Instant::now();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for m in ["m01", "m02"] {
            a.wait_line(&format!("{STOPPED} mailbox={m}"), 2 * TTL);
        }
    }));
    signal_database(&f, "CONT");
    cut.expect("the workers stopped while the database did not answer");
    let stopped = a
        .events
        .iter()
        .filter(|(_, l)| l.contains(STOPPED))
        .map(|(at, _)| *at)
        .max()
        .unwrap();
    eprintln!(
        "database paused with {left:.2} s left on the leases: both workers stopped {:?} later, {:?} before the leases lapsed",
        stopped - paused,
        lapse.saturating_duration_since(stopped)
    );
    assert!(stopped < lapse, "a worker ran on past its lease");
    // The database answers again: the agent takes its mailboxes back and tracks on.
    wait_for("a holds both again", 30, || {
        owned_by(&f, &a.name).len() == 2
    });
    f.deliver(&mut f.e.imap("m02"), 1);
    wait_for("f1 tracked", 30, || f.counts().0 == 2);
    assert_eq!(f.counts(), (2, 2, 2));
}

#[test]
fn queued_mail_is_sent_once_by_the_agent_that_holds_its_mailbox() {
    use testkit::smtp::{lmtp_options, Quirks, Smtp};
    let Some(pg) = PgCluster::start() else { return };
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks::default());
    let mailboxes = vec!["alice".to_string(), "bob".to_string()];
    let mut config = Config::new().store(&store_table(&pg));
    for m in &mailboxes {
        e.create_folders(m, &["INBOX/Tracked", ACME]);
        config = config.mailbox(e.mailbox(m).rule(acme()).smtp(smtp.config_table()));
    }
    config.write(&e.work);
    e.import_records(RECORDS);
    // Owned by nobody: both mailboxes' owners may link mail to it.
    e.ok(&[
        "records",
        "add",
        "account:initech",
        "--name",
        "Initech",
        "--email",
        "info@initech.com",
    ]);
    let f = Fleet { e, pg, mailboxes };
    let mut a = f.start("a", &[]);
    let mut b = f.start("b", &[]);
    wait_for("one mailbox each", 30, || {
        let s = f.shares();
        s.get(&a.name) == Some(&1) && s.get(&b.name) == Some(&1)
    });
    // Every send goes through a's control socket, for both mailboxes.
    let send = |via: &str, mailbox: &str, subject: &str| {
        let o =
            f.e.command()
                .arg("--data-dir")
                .arg(f.e.work.join(via))
                .args([
                    "activities",
                    "send",
                    "--mailbox",
                    mailbox,
                    "--to",
                    "carol@example.com",
                ])
                .args([
                    "--subject",
                    subject,
                    "--body",
                    "Hello Carol.",
                    "--regarding",
                    "account:initech",
                ])
                .output()
                .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let owners = f.owners().unwrap();
    for i in 0..3 {
        for m in ["alice", "bob"] {
            let said = send("a", m, &format!("{m} {i}"));
            if owners[m] != a.name {
                assert!(
                    said.contains("queued: agent") && said.contains(&owners[m]),
                    "{said}"
                );
            }
        }
    }
    wait_for("6 messages accepted by the SMTP server", 60, || {
        smtp.accepted().len() >= 6
    });
    // Each sent by the agent that holds its mailbox.
    for m in [&mut a, &mut b] {
        m.drain();
        for (_, l) in m.events.iter().filter(|(_, l)| l.contains("email sent")) {
            let mb = field(l, "mailbox").unwrap();
            assert_eq!(owners[mb], m.name, "{mb}'s mail sent by agent {}", m.short);
        }
    }
    // The owner of bob dies; mail queued for bob meanwhile goes out once its lease moved.
    let (dead, alive) = if owners["bob"] == a.name {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    dead.agent.kill();
    let via = alive.short.clone();
    for i in 3..5 {
        send(&via, "bob", &format!("bob {i}"));
    }
    wait_for("8 messages accepted", 60, || smtp.accepted().len() >= 8);
    std::thread::sleep(Duration::from_secs(2)); // a doubled send would show by now
    let mut ids = smtp.accepted();
    assert_eq!(ids.len(), 8, "{ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "each message sent once");
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&f.e.ok(&["outbox", "list", "--json"])).unwrap();
    assert!(list.iter().all(|x| x["state"] == "sent"), "{list:?}");
}
