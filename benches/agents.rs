//! Benchmark: several agents on one PostgreSQL store and one Dovecot (issue 17). Default 2,000
//! mailboxes (one tracked folder each) over 2 agents started from one config with their own
//! `--data-dir`.
//!
//! Measures, in one run: Dovecot's own IDLE floor (APPEND on one connection → EXISTS on an
//! idling one), start-up (agents started → every mailbox idle on one of them), RSS per agent,
//! 20,000 messages delivered while they run (all tracked once: asserted with SQL), the time
//! from the last delivery to the last activity, drag-to-activity p50/p90/p99 (APPEND → the
//! owning agent's commit), the lease traffic at rest (transactions per second on the database
//! while no mail arrives: renewals, heartbeats, surveys), then one agent SIGKILLed and the time
//! until every mailbox is idle again on the survivors.
//!
//! Knobs: AGENTS_MAILBOXES (2000), AGENTS_COUNT (2), AGENTS_MESSAGES (20000), AGENTS_TRIALS
//! (100), AGENTS_DEBUG=1 (echo the agents' logs), AGENTS_KEEP=1 (keep the work dir and logs). Run: `BENCH_AGENTS=1 ./scripts/bench.sh` or
//! `cargo bench --bench agents` (as root, or with `fs.inotify.max_user_instances` raised; see
//! benches/scale.rs for why).

mod common;

use common::{idle_count, knob, message, pct, rss_kb};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::sandbox::{Sandbox, SandboxOptions};
use testkit::{Agent, AgentSpec, Config, Imap, Mailbox, Rule};

const FOLDER: &str = "INBOX/Tracked";
/// Messages the IDLE floor measurement appends (tracked like the others).
const FLOOR_TRIALS: usize = 20;

/// How many mailboxes agent `dir` reports idle (its control socket answers for its own tasks).
fn idle_on(work: &Path, dir: &Path) -> usize {
    let out = Command::new(testkit::env::foldertrack_bin())
        .current_dir(work)
        .args(["--config", "foldertrack.toml", "--data-dir"])
        .arg(dir)
        .args(["status", "--json"])
        .output()
        .unwrap();
    idle_count(&serde_json::from_slice(&out.stdout).unwrap_or_default())
}

/// Waits until the agents of `dirs` together have `n` mailboxes idle; the time it took.
fn wait_idle(work: &Path, dirs: &[PathBuf], n: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let idle: usize = dirs.iter().map(|d| idle_on(work, d)).sum();
        if idle >= n {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "only {idle} of {n} mailboxes idle after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Dovecot's own floor: APPEND on one connection → `* n EXISTS` on another that idles.
fn idle_floor(port: u16, trials: usize) -> Vec<f64> {
    let mut watcher = Imap::login(port, "user1");
    let name = watcher.name(FOLDER);
    watcher.cmd(&format!("SELECT {}", testkit::imap::quote(&name)));
    let mut writer = Imap::login(port, "user1");
    let mut out = Vec::new();
    for k in 0..trials {
        watcher.send("i IDLE\r\n");
        while !watcher.line().starts_with('+') {}
        let t = Instant::now();
        writer.append(FOLDER, message("agents", "user1", 1_000_000 + k).as_bytes());
        while !watcher.line().contains("EXISTS") {}
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        watcher.send("DONE\r\n");
        while !watcher.line().starts_with("i ") {}
    }
    out
}

fn sql(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).expect("an SQL session")
}

fn dovecot(users: usize) -> (tempfile::TempDir, Sandbox) {
    let tmp = tempfile::Builder::new()
        .prefix("ft-agents-")
        .tempdir_in("/tmp")
        .unwrap();
    let limit = users + 200;
    let inotify = "/proc/sys/fs/inotify/max_user_instances";
    let want = 3 * users + 200;
    let have: usize = std::fs::read_to_string(inotify)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if have < want && std::fs::write(inotify, want.to_string()).is_err() {
        eprintln!("WARNING: {inotify} is {have} < {want}: Dovecot falls back to a 30 s check");
    }
    let opts = SandboxOptions {
        users: (1..=users)
            .map(|i| (format!("user{i}"), "pass".to_string()))
            .collect(),
        extra_conf: format!(
            "default_process_limit = {limit}\ndefault_client_limit = {c}\nmail_max_userip_connections = 20\nservice imap {{\n  process_limit = {limit}\n  client_limit = 1\n}}\nservice imap-login {{\n  service_count = 0\n  process_min_avail = 2\n  client_limit = {c}\n}}\nservice anvil {{\n  client_limit = {c}\n}}\n",
            c = 4 * limit
        ),
        ..SandboxOptions::default()
    };
    let sb = Sandbox::start(&tmp.path().join("dovecot"), &opts).expect("start dovecot");
    let port = sb.port;
    std::thread::scope(|s| {
        for k in 0..4 {
            s.spawn(move || {
                for i in (1..=users).filter(|i| i % 4 == k) {
                    let mut c = Imap::login(port, &format!("user{i}"));
                    c.create(FOLDER);
                    c.cmd("LOGOUT");
                }
            });
        }
    });
    (tmp, sb)
}

fn deliver(port: u16, users: usize, messages: usize) {
    let per_user = messages.div_ceil(users);
    std::thread::scope(|s| {
        for k in 0..4 {
            s.spawn(move || {
                for i in (1..=users).filter(|i| i % 4 == k) {
                    let user = format!("user{i}");
                    let mut c = Imap::login(port, &user);
                    for j in 0..per_user {
                        let idx = (i - 1) * per_user + j;
                        if idx < messages {
                            c.append(FOLDER, message("agents", &user, idx).as_bytes());
                        }
                    }
                    c.cmd("LOGOUT");
                }
            });
        }
    });
}

/// APPEND to one mailbox → the commit of its owner: `trials` times, in ms.
fn latencies(port: u16, users: usize, trials: usize, agents: &[Agent], base: usize) -> Vec<f64> {
    let mut lat = Vec::new();
    for k in 0..trials {
        let i = 1 + (k * 7919) % users;
        let user = format!("user{i}");
        let mut c = Imap::login(port, &user);
        for a in agents {
            while a.lines().try_recv().is_ok() {}
        }
        let t = Instant::now();
        c.append(FOLDER, message("agents", &user, base + k).as_bytes());
        let needle = format!("mailbox={user} ");
        'wait: loop {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "trial {k}: no commit of {user}"
            );
            for a in agents {
                while let Ok((at, line)) = a.lines().try_recv() {
                    if line.contains(&needle) && line.contains("batch committed") {
                        lat.push(at.duration_since(t).as_secs_f64() * 1000.0);
                        break 'wait;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        c.cmd("LOGOUT");
    }
    lat
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let users = knob("AGENTS_MAILBOXES", 2000).max(2);
    let n_agents = knob("AGENTS_COUNT", 2).max(2);
    let messages = knob("AGENTS_MESSAGES", 20_000);
    let trials = knob("AGENTS_TRIALS", 100);
    let (tmp, sb) = dovecot(users);
    let port = sb.port;
    let (p50, _, p99) = pct(idle_floor(port, FLOOR_TRIALS));
    eprintln!("dovecot: {users} users; IDLE floor p50 {p50:.0} ms, p99 {p99:.0} ms");
    let floor = (p50, p99);
    let pg = testkit::pg::PgCluster::start().expect("PostgreSQL installed");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();
    let store = format!(
        "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n",
        pg.url()
    );
    let mut c = Config::new().store(&store);
    for i in 1..=users {
        c = c.mailbox(Mailbox::new(&format!("user{i}"), port).rule(Rule::unlinked(FOLDER)));
    }
    c.write(&work);

    let dirs: Vec<PathBuf> = (0..n_agents)
        .map(|k| work.join(format!("agent{k}")))
        .collect();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let mut agents: Vec<Agent> = dirs
        .iter()
        .enumerate()
        .map(|(k, d)| {
            AgentSpec::new(&testkit::env::foldertrack_bin(), &work)
                .arg("--data-dir")
                .arg(&d.to_string_lossy())
                .log(&work.join(format!("agent{k}.log")))
                .watch(&["batch committed", "ERROR"])
                .echo(std::env::var_os("AGENTS_DEBUG").is_some())
                .spawn()
        })
        .collect();
    for a in &mut agents {
        a.wait_running(Duration::from_secs(120));
    }
    wait_idle(&work, &dirs, users, Duration::from_secs(900));
    let startup = started.elapsed();
    // Balanced: every agent within one mailbox of the others, then all idle again.
    let mut db = sql(pg.url());
    loop {
        let r = db
            .query_one(
                "SELECT count(DISTINCT agent), coalesce(max(n) - min(n), 0) FROM
                     (SELECT agent, count(*) AS n FROM leases WHERE until > now() GROUP BY agent) s",
                &[],
            )
            .unwrap();
        if r.get::<_, i64>(0) == n_agents as i64 && r.get::<_, i64>(1) <= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(900), "not balanced");
        std::thread::sleep(Duration::from_millis(250));
    }
    wait_idle(&work, &dirs, users, Duration::from_secs(900));
    let balanced = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let rss_idle: Vec<u64> = agents.iter().map(|a| rss_kb(a.pid())).collect();
    eprintln!("{users} mailboxes idle on {n_agents} agents after {startup:?}");

    // At rest: transactions per second on the database (the lease traffic).
    let xacts = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let tables = |c: &mut postgres::Client| -> std::collections::BTreeMap<String, i64> {
        c.query(
            "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + n_tup_upd + n_tup_ins
             FROM pg_stat_user_tables",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    // PostgreSQL 15 flushes a backend's statistics when it idles, after up to 10 s: the
    // start-up's work must be in before the window opens.
    std::thread::sleep(Duration::from_secs(12));
    let before = tables(&mut db);
    let x0 = xacts(&mut db);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    let rest = (xacts(&mut db) - x0 - 1) as f64 / t.elapsed().as_secs_f64();
    let touched: Vec<String> = tables(&mut db)
        .into_iter()
        .filter_map(|(t, n)| {
            let d = n - before.get(&t).copied().unwrap_or(0);
            (d > 0).then(|| format!("{t} {d}"))
        })
        .collect();
    eprintln!(
        "at rest for 30 s: {rest:.1} transactions/s; table reads and writes: {}",
        touched.join(", ")
    );

    for a in &agents {
        while a.lines().try_recv().is_ok() {}
    }
    let deliver_start = Instant::now();
    deliver(port, users, messages);
    let deliver_s = deliver_start.elapsed().as_secs_f64();
    let last_delivery = Instant::now();
    let count = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT count(*) FROM activities", &[])
            .unwrap()
            .get(0)
    };
    let mut last = last_delivery;
    while count(&mut db) < (messages + FLOOR_TRIALS) as i64 {
        assert!(
            last_delivery.elapsed() < Duration::from_secs(600),
            "not all tracked"
        );
        for a in &agents {
            while let Ok((at, line)) = a.lines().try_recv() {
                assert!(!line.contains("ERROR"), "agent error: {line}");
                last = last.max(at);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in &agents {
        while let Ok((at, _)) = a.lines().try_recv() {
            last = last.max(at);
        }
    }
    let catch_up = last.saturating_duration_since(last_delivery).as_secs_f64();
    let rss_after: Vec<u64> = agents.iter().map(|a| rss_kb(a.pid())).collect();
    wait_idle(&work, &dirs, users, Duration::from_secs(300));
    let lat = latencies(port, users, trials, &agents, messages);

    // One agent SIGKILLed: every mailbox idle again on the survivors.
    let killed = Instant::now();
    agents[0].kill();
    wait_idle(&work, &dirs[1..], users, Duration::from_secs(600));
    let failover = killed.elapsed();
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT message_id), (SELECT count(*) FROM sources) FROM activities",
            &[],
        )
        .unwrap();
    let (acts, ids, sources): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let want = (messages + trials + FLOOR_TRIALS) as i64;
    assert_eq!(
        (acts, ids, sources),
        (want, want, want),
        "each message tracked once"
    );

    let (p50, p90, p99) = pct(lat);
    let mb = |v: &[u64]| {
        v.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("\n{users} mailboxes on {n_agents} agents, one PostgreSQL, one Dovecot (load before: {}; after: {})", load_before.trim(), load_after.trim());
    println!("| what | value |");
    println!("|---|---|");
    println!(
        "| start-up: agents started → all {users} mailboxes idle | {:.1} s |",
        startup.as_secs_f64()
    );
    println!(
        "| agents started → every agent within one mailbox of the others, all idle | {:.1} s |",
        balanced.as_secs_f64()
    );
    println!("| RSS per agent, idle | {} MB |", mb(&rss_idle));
    println!(
        "| RSS per agent, right after the deliveries | {} MB |",
        mb(&rss_after)
    );
    println!(
        "| lease traffic at rest (all agents): database transactions per second | {rest:.1} |"
    );
    println!("| {messages} messages delivered (APPEND, 4 connections) | {deliver_s:.1} s |");
    println!("| tracked / doubled | {messages} / 0 |");
    println!("| last delivery → last activity committed | {catch_up:.2} s |");
    println!("| drag-to-activity, {trials} trials: p50 / p90 / p99 | {p50:.0} / {p90:.0} / {p99:.0} ms |");
    println!("| Dovecot's IDLE floor (APPEND → EXISTS), {FLOOR_TRIALS} trials: p50 / p99 | {:.0} / {:.0} ms |", floor.0, floor.1);
    println!(
        "| one agent SIGKILLed → all {users} mailboxes idle on the other(s) | {:.1} s |",
        failover.as_secs_f64()
    );
    drop(sb);
    if std::env::var_os("AGENTS_KEEP").is_some() {
        eprintln!("kept the work dir: {}", tmp.keep().display());
    }
}
