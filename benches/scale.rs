//! Benchmark: one `foldertrack run` agent watching many mailboxes (default 1,000 Dovecot users,
//! each with a tracked folder), on one private Dovecot configured for that many connections.
//!
//! Measures, in one run: start-up (agent start → every mailbox `idle`), the agent's RSS with
//! one mailbox and with all of them idle (memory per idle mailbox), 10,000 messages delivered
//! by IMAP APPEND spread over the mailboxes while the agent runs (all tracked, none doubled:
//! asserted from the store afterwards), the time from the last delivery to the last activity,
//! and drag-to-activity latency (APPEND → the agent's commit of that mailbox's batch) while all
//! mailboxes are live.
//!
//! Knobs: SCALE_ENGINE (sled; `postgres`: a private PostgreSQL cluster), SCALE_MAILBOXES (1000), SCALE_FOLDERS (1: tracked folders per mailbox; with more,
//! `INBOX/Tracked/F1`… under one rule, IDLE on one and NOTIFY for the others, deliveries and
//! latency trials spread over them), SCALE_MESSAGES (10000), SCALE_TRIALS (100), SCALE_KEEP=1 (keep the work
//! dir, data dir included, for a look afterwards), SCALE_DEBUG=1
//! (echo the agent's log). Run: `./scripts/bench.sh` (or `cargo bench --bench scale`).
//!
//! IDLE needs inotify on the server: every `imap` process (all run as one mail uid) takes an
//! inotify instance, and past `fs.inotify.max_user_instances` (128 by default) Dovecot logs
//! "Inotify instance limit … exceeded, disabling" and checks the folder only every
//! `mailbox_idle_check_interval` (30 s): measured here, drag-to-activity went from 0.5 s to
//! ~25 s and 10,000 deliveries took 27 s to catch up. So the bench raises the limit when it
//! may (root), and otherwise sets that interval to 1 s and says so.
//!
//! Dovecot: one `imap` process per connection (its default `client_limit = 1`), so
//! `process_limit` is raised above the mailbox count; login processes serve many clients
//! (`service_count = 0`, high-performance mode) so a thousand logins do not fork a thousand
//! times; `mail_max_userip_connections` counts per user and stays small. The agent opens one
//! connection per mailbox (IDLE+NOTIFY on its one tracked folder), logging in at most
//! `LOGIN_CONCURRENCY` (16) at a time.

mod common;

use common::{idle_count, knob, message, pct, rss_kb, start_agent};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::sandbox::{Sandbox, SandboxOptions};
use testkit::{Config, Imap, Mailbox, Rule};

fn status(work: &Path) -> serde_json::Value {
    let out = Command::new(testkit::env::foldertrack_bin())
        .current_dir(work)
        .args(["--config", "foldertrack.toml", "status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The tracked folders of each mailbox (config form).
fn folders(n: usize) -> Vec<String> {
    if n <= 1 {
        return vec!["INBOX/Tracked".into()];
    }
    (1..=n).map(|k| format!("INBOX/Tracked/F{k}")).collect()
}

fn write_config(work: &Path, port: u16, users: usize, nfolders: usize, store: Option<&str>) {
    let rule = if nfolders <= 1 {
        "INBOX/Tracked"
    } else {
        "INBOX/Tracked/*"
    };
    let mut c = Config::new();
    if let Some(store) = store {
        c = c.store(store);
    }
    for i in 1..=users {
        c = c.mailbox(Mailbox::new(&format!("user{i}"), port).rule(Rule::unlinked(rule)));
    }
    c.write(work);
}

/// Waits until `n` mailboxes are idle; the time it took.
fn wait_idle(work: &Path, n: usize, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let st = status(work);
        let idle = idle_count(&st);
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

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let users = knob("SCALE_MAILBOXES", 1000).max(2);
    let nfolders = knob("SCALE_FOLDERS", 1).max(1);
    let tracked_folders = folders(nfolders);
    let messages = knob("SCALE_MESSAGES", 10_000);
    let trials = knob("SCALE_TRIALS", 100);
    let tmp = tempfile::Builder::new()
        .prefix("ft-scale-")
        .tempdir_in("/tmp")
        .unwrap();
    let limit = users + 200;
    // One inotify instance per IDLE session, and with NOTIFY a second one for the mailbox list:
    // past the limit Dovecot silently falls back to a 30 s check (p90 23 s measured).
    let inotify_limit = 3 * users + 200;
    let inotify = "/proc/sys/fs/inotify/max_user_instances";
    let have: usize = std::fs::read_to_string(inotify)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut idle_check = String::new();
    if have < inotify_limit {
        if std::fs::write(inotify, inotify_limit.to_string()).is_ok() {
            eprintln!(
                "raised {inotify} from {have} to {inotify_limit} (inotify instances for IDLE and NOTIFY sessions)"
            );
        } else {
            eprintln!("WARNING: {inotify} is {have} < {inotify_limit} and cannot be raised: Dovecot falls back to checking idle folders every second");
            idle_check = "mailbox_idle_check_interval = 1 secs\n".into();
        }
    }
    let opts = SandboxOptions {
        users: (1..=users)
            .map(|i| (format!("user{i}"), "pass".to_string()))
            .collect(),
        extra_conf: format!(
            "{idle_check}default_process_limit = {limit}\ndefault_client_limit = {c}\nmail_max_userip_connections = 20\nservice imap {{\n  process_limit = {limit}\n  client_limit = 1\n}}\nservice imap-login {{\n  service_count = 0\n  process_min_avail = 2\n  client_limit = {c}\n}}\nservice anvil {{\n  client_limit = {c}\n}}\n",
            c = 4 * limit
        ),
        ..SandboxOptions::default()
    };
    let t0 = Instant::now();
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &opts).expect("start dovecot");
    let port = dovecot.port;
    // Create each user's tracked folders (4 connections at a time).
    let tf = &tracked_folders;
    std::thread::scope(|s| {
        for k in 0..4 {
            s.spawn(move || {
                for i in (1..=users).filter(|i| i % 4 == k) {
                    let mut c = Imap::login(port, &format!("user{i}"));
                    for f in tf {
                        c.create(f);
                    }
                    c.cmd("LOGOUT");
                }
            });
        }
    });
    eprintln!(
        "dovecot on 127.0.0.1:{port}, {users} users with {nfolders} tracked folder(s) ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();

    // Baseline: the agent with one mailbox, idle.
    // SCALE_ENGINE=postgres: the store in a private PostgreSQL cluster (Unix socket).
    let pg = (std::env::var("SCALE_ENGINE").as_deref() == Ok("postgres")).then(|| {
        testkit::pg::PgCluster::start().expect("SCALE_ENGINE=postgres needs PostgreSQL installed")
    });
    let store = pg.as_ref().map(|pg| {
        format!(
            "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n",
            pg.url()
        )
    });
    let store = store.as_deref();
    eprintln!(
        "store engine: {}",
        if pg.is_some() { "postgres" } else { "sled" }
    );
    write_config(&work, port, 1, nfolders, store);
    let one = start_agent(&work, "SCALE_DEBUG", &[]);
    wait_idle(&work, 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let rss_one = rss_kb(one.pid());
    one.stop();

    // All mailboxes.
    write_config(&work, port, users, nfolders, store);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let agent = start_agent(&work, "SCALE_DEBUG", &["batch committed", "ERROR"]);
    let rx = agent.lines();
    let agent_pid = agent.pid();
    let startup = wait_idle(&work, users, Duration::from_secs(600));
    let startup_s = started
        .elapsed()
        .as_secs_f64()
        .min(startup.as_secs_f64() + 1.0);
    std::thread::sleep(Duration::from_secs(3));
    let rss_all = rss_kb(agent_pid);
    let per_mailbox_kb = (rss_all.saturating_sub(rss_one)) as f64 / (users - 1) as f64;
    let fds = std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!("{users} mailboxes idle after {startup_s:.1} s; RSS {rss_all} kB (one mailbox: {rss_one} kB); {fds} fds");

    // Deliver `messages` spread over the mailboxes, 4 delivering connections at a time.
    while rx.try_recv().is_ok() {}
    let deliver_start = Instant::now();
    let per_user = messages.div_ceil(users);
    std::thread::scope(|s| {
        for k in 0..4 {
            s.spawn(move || {
                let mut n = 0;
                for i in (1..=users).filter(|i| i % 4 == k) {
                    let user = format!("user{i}");
                    let mut c = Imap::login(port, &user);
                    for j in 0..per_user {
                        let idx = (i - 1) * per_user + j;
                        if idx < messages {
                            let f = &tf[idx % tf.len()];
                            c.append(f, message("scale", &user, idx).as_bytes());
                            n += 1;
                        }
                    }
                    c.cmd("LOGOUT");
                }
                n
            });
        }
    });
    let last_delivery = Instant::now();
    let deliver_s = deliver_start.elapsed().as_secs_f64();
    // Wait for every message to be tracked: the status counts activities.
    let mut last_activity = last_delivery;
    let mut tracked = 0;
    let wait_start = Instant::now();
    while wait_start.elapsed() < Duration::from_secs(300) {
        let st = status(&work);
        tracked = st["activities"].as_u64().unwrap_or(0) as usize;
        while let Ok((at, line)) = rx.try_recv() {
            assert!(!line.contains("ERROR"), "agent error: {line}");
            last_activity = at;
        }
        if tracked >= messages {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    while let Ok((at, _)) = rx.try_recv() {
        last_activity = last_activity.max(at);
    }
    let catch_up = last_activity.saturating_duration_since(last_delivery);
    let rss_after = rss_kb(agent_pid);
    // Settled: every mailbox idle again, and a few seconds for the agent's memory trimmer.
    wait_idle(&work, users, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(5));
    let rss_settled = rss_kb(agent_pid);
    eprintln!("delivered {messages} in {deliver_s:.1} s; tracked {tracked}; last activity {:.2} s after the last delivery", catch_up.as_secs_f64());
    assert_eq!(tracked, messages, "every delivered message tracked");

    // Latency while all mailboxes are live: APPEND to one mailbox → that mailbox's commit.
    let mut lat = Vec::new();
    let mut conns: Vec<(String, Imap)> = Vec::new();
    for k in 0..trials {
        let i = 1 + (k * 7919) % users;
        let user = format!("user{i}");
        if !conns.iter().any(|(u, _)| *u == user) {
            conns.push((user.clone(), Imap::login(port, &user)));
        }
        let c = &mut conns.iter_mut().find(|(u, _)| *u == user).unwrap().1;
        while rx.try_recv().is_ok() {}
        let t = Instant::now();
        // The folders other than the IDLE one are the ones NOTIFY must watch.
        let f = &tracked_folders[(k + 1) % tracked_folders.len()];
        c.append(f, message("scale", &user, messages + k).as_bytes());
        let needle = format!("mailbox={user} ");
        loop {
            let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(30)) else {
                let log = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
                let mine: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
                panic!(
                    "trial {k}: no commit of {user}/{f} within 30 s; its last log lines:\n{}",
                    mine[mine.len().saturating_sub(40)..].join("\n")
                );
            };
            if line.contains(&needle) && line.contains("batch committed") {
                let ms = at.duration_since(t).as_secs_f64() * 1000.0;
                if ms > 5000.0 && std::env::var_os("SCALE_DEBUG_SLOW").is_some() {
                    let log = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
                    let mine: Vec<&str> = log.lines().filter(|l| l.contains(&needle)).collect();
                    eprintln!(
                        "trial {k}: {user}/{f} took {ms:.0} ms; its last log lines:\n{}",
                        mine[mine.len().saturating_sub(30)..].join("\n")
                    );
                }
                lat.push(ms);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_end = rss_kb(agent_pid);
    // Long settled: all idle again and 30 s more, for what the trimmer and the store's cache
    // give back over time.
    wait_idle(&work, users, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(30));
    let rss_late = rss_kb(agent_pid);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    agent.stop();
    // The same agent restarted on the full store: the idle figure a store of this size costs
    // by itself, to tell the store's share of the growth from the workers'.
    let again = start_agent(&work, "SCALE_DEBUG", &[]);
    wait_idle(&work, users, Duration::from_secs(600));
    std::thread::sleep(Duration::from_secs(3));
    let rss_restart = rss_kb(again.pid());
    again.stop();

    // None doubled: one activity per delivered Message-ID, each from one source.
    let out = Command::new(testkit::env::foldertrack_bin())
        .current_dir(&work)
        .args([
            "--config",
            "foldertrack.toml",
            "activities",
            "list",
            "--json",
        ])
        .output()
        .unwrap();
    let acts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("activities json");
    let acts = acts.as_array().cloned().unwrap_or_default();
    let mut ids: Vec<String> = acts
        .iter()
        .filter_map(|a| a["message_id"].as_str().map(str::to_string))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(n, messages + trials, "activities in the store");
    assert_eq!(ids.len(), n, "no Message-ID twice");

    let (p50, p90, p99) = pct(lat);
    println!("\n{users} mailboxes ({nfolders} tracked folder(s) each) on one agent, {messages} messages delivered while running (load before: {}; after: {})", load_before.trim(), load_after.trim());
    println!("| what | value |");
    println!("|---|---|");
    println!("| start-up: agent start → all {users} mailboxes idle (IDLE, one connection each, ≤ 16 logins at a time) | {startup_s:.1} s |");
    println!("| agent RSS: 1 mailbox idle / {users} idle / right after the deliveries / idle again after them (+5 s) / at the end | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} MB |", rss_one as f64 / 1024.0, rss_all as f64 / 1024.0, rss_after as f64 / 1024.0, rss_settled as f64 / 1024.0, rss_end as f64 / 1024.0);
    println!("| agent RSS: idle 30 s after the trials / a fresh agent idle on the full store | {:.1} / {:.1} MB |", rss_late as f64 / 1024.0, rss_restart as f64 / 1024.0);
    println!(
        "| memory per idle mailbox ((RSS {users} − RSS 1) / {}) | {per_mailbox_kb:.0} kB |",
        users - 1
    );
    println!("| agent file descriptors with {users} idle | {fds} |");
    println!("| {messages} messages delivered (APPEND, 4 connections) | {deliver_s:.1} s |");
    println!("| tracked / doubled | {tracked} / 0 |");
    println!(
        "| last delivery → last activity committed | {:.2} s |",
        catch_up.as_secs_f64()
    );
    println!("| drag-to-activity under load, {trials} trials: p50 / p90 / p99 | {p50:.0} / {p90:.0} / {p99:.0} ms |");
    drop(dovecot);
    if std::env::var_os("SCALE_KEEP").is_some() {
        eprintln!("kept the work dir: {}", tmp.keep().display());
    }
}
