//! Benchmark: drag-to-activity latency of `foldertrack run`, IDLE and polling
//! (`poll_interval = 1`), beside Dovecot's own APPEND → EXISTS delay on an IDLE connection,
//! measured in the same run against the same server.
//!
//! A trial APPENDs one message to the tracked folder from a second connection and stops the
//! clock when the agent logs the commit of its batch (the log line is read from the agent's
//! stderr as it is written; the commit is flushed before the line). Knobs: LAT_TRIALS (200).
//! Run: `cargo bench --bench latency`.

mod common;

use common::{knob, pct, start_agent};
use std::time::{Duration, Instant};
use testkit::sandbox::{Sandbox, SandboxOptions};
use testkit::{Config, Imap, Mailbox, Rule};

/// One latency probe message, unique per process and trial.
fn probe(i: usize) -> String {
    format!("From: bob@acme.com\r\nTo: user1@example.com\r\nSubject: latency {i}\r\nMessage-ID: <lat-{i}-{}@bench>\r\n\r\nping\r\n", std::process::id())
}

/// Dovecot's own floor: APPEND sent on B → `* N EXISTS` read on A (IDLE, cycle mode: DONE and a
/// new IDLE after each notification, as a client that fetches each message does).
fn dovecot_floor(port: u16, trials: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut b = Imap::login(port, "user1");
    let mut a = Imap::login(port, "user1");
    a.cmd("SELECT INBOX.Floor");
    for i in 0..trials {
        if i > 0 && i % 100 == 0 {
            a = Imap::login(port, "user1"); // Dovecot drops a session after ~150 deliveries (bench README, finding 6)
            a.cmd("SELECT INBOX.Floor");
        }
        a.send(&format!("i{i} IDLE\r\n"));
        while !a.line().starts_with('+') {}
        let t = Instant::now();
        b.append("INBOX/Floor", probe(i).as_bytes());
        loop {
            if a.line().contains("EXISTS") {
                break;
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        a.send("DONE\r\n");
        while !a.line().starts_with(&format!("i{i} ")) {}
    }
    out
}

fn agent_latency(port: u16, work: &std::path::Path, watch: &str, trials: usize) -> Vec<f64> {
    Config::new()
        .mailbox(
            Mailbox::new("user1", port)
                .keys(watch)
                .rule(Rule::unlinked("INBOX/Tracked")),
        )
        .write(work);
    let agent = start_agent(work, "LAT_DEBUG", &["batch committed", "IDLE ended"]);
    let rx = agent.lines();
    // Ready when the first wait begins (a little after "agent running").
    std::thread::sleep(Duration::from_millis(500));
    let mut b = Imap::login(port, "user1");
    let mut out = Vec::new();
    for i in 0..trials {
        while rx.try_recv().is_ok() {}
        let t = Instant::now();
        b.append("INBOX/Tracked", probe(i).as_bytes());
        loop {
            let (at, line) = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("no commit within 30 s");
            if line.contains("batch committed") {
                out.push(at.duration_since(t).as_secs_f64() * 1000.0);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.stop();
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let trials = knob("LAT_TRIALS", 200);
    let tmp = tempfile::Builder::new()
        .prefix("ft-lat-")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &SandboxOptions::default()).unwrap();
    let port = dovecot.port;
    let mut c = Imap::login(port, "user1");
    c.cmd("CREATE INBOX.Tracked");
    c.cmd("CREATE INBOX.Floor");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();

    let rows = [
        (
            "Dovecot APPEND → EXISTS on IDLE (floor)",
            dovecot_floor(port, trials),
        ),
        (
            "foldertrack run, IDLE: APPEND → activity committed",
            agent_latency(port, &work, "", trials),
        ),
        (
            "foldertrack run, poll_interval = 1",
            agent_latency(
                port,
                &work,
                "idle = false\npoll_interval = 1",
                trials.min(100),
            ),
        ),
    ];
    println!("\n| {trials} trials (poll: ≤ 100) | p50 ms | p90 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (name, v) in &rows {
        let (a, b, c) = pct(v.clone());
        println!("| {name} | {a:.1} | {b:.1} | {c:.1} |");
    }
    drop(dovecot);
}
