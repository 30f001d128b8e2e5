//! Benchmark: the pass that picks up flag changes (DESIGN §4.15). A folder of N tracked
//! messages (default 10,000) in which 100 get `\Flagged` in a mail client; the next
//! `foldertrack sync` brings them into the CRM. Measured in one run against two private
//! Dovecots, one offering CONDSTORE (the pass asks `CHANGEDSINCE`) and one told not to (the
//! pass fetches the flags of every tracked message): the pass's wall time and the bytes Dovecot
//! sent that session (its `Logged out … out=` log line). Each side is run FLAGS_RUNS times
//! (3) with 100 new changes each, medians reported.
//!
//! Run: `BENCH_FLAGS=1 ./scripts/bench.sh`, or `cargo bench --bench flags`.
//! Knobs: FLAGS_MESSAGES (10000), FLAGS_CHANGED (100), FLAGS_RUNS (3).

mod common;

use common::{knob, message};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::sandbox::{Sandbox, SandboxOptions};
use testkit::{Config, Imap, Mailbox, Rule};

/// Dovecot's capabilities without CONDSTORE and QRESYNC.
const NO_CONDSTORE: &str = "imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE UIDPLUS MOVE SPECIAL-USE CHILDREN UNSELECT LIST-EXTENDED\n";

/// The bytes Dovecot sent in the last session of `user1` that logged out.
fn last_session_out(log: &Path) -> u64 {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.contains("imap(user1)") && l.contains("out="))
        .and_then(|l| l.split("out=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sync(bin: &Path, work: &Path) -> f64 {
    let t = Instant::now();
    let o = Command::new(bin)
        .current_dir(work)
        .arg("sync")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t.elapsed().as_secs_f64()
}

/// How many activities are flagged for follow-up.
fn flagged(bin: &Path, work: &Path) -> usize {
    let o = Command::new(bin)
        .current_dir(work)
        .args(["activities", "list", "--json"])
        .output()
        .unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    v.iter().filter(|a| a["follow_up"] == true).count()
}

/// One side: N messages tracked, then `runs` passes each picking up `changed` new flags.
/// Returns (pass seconds, bytes sent by Dovecot) per run.
fn side(dir: &Path, extra_conf: &str, n: usize, changed: usize, runs: usize) -> Vec<(f64, u64)> {
    let opts = SandboxOptions {
        extra_conf: extra_conf.into(),
        ..SandboxOptions::default()
    };
    let dovecot = Sandbox::start(&dir.join("dovecot"), &opts).unwrap();
    let mut c = Imap::login(dovecot.port, "user1");
    c.cmd("CREATE INBOX.Tracked");
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| message("flags", "user1", i).into_bytes())
        .collect();
    for chunk in msgs.chunks(1000) {
        c.append_many("INBOX/Tracked", chunk, "");
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();
    Config::new()
        .mailbox(
            Mailbox::new("user1", dovecot.port)
                .keys("field_sync = { flag_scan_interval = 1 }")
                .rule(Rule::unlinked("INBOX/Tracked")),
        )
        .write(&work);
    let bin = testkit::env::foldertrack_bin();
    sync(&bin, &work);
    c.cmd("SELECT INBOX.Tracked");
    let log = dir.join("dovecot").join("dovecot.log");
    let mut out = Vec::new();
    for r in 0..runs {
        let uids: Vec<String> = (0..changed)
            .map(|i| (1 + (r * changed + i) * (n / (changed * runs)).max(1)).to_string())
            .collect();
        let set = uids.join(",");
        c.cmd(&format!("UID STORE {set} +FLAGS.SILENT (\\Flagged)"));
        // Without CONDSTORE the scan is due once flag_scan_interval (1 s) has passed.
        std::thread::sleep(Duration::from_millis(1100));
        let secs = sync(&bin, &work);
        std::thread::sleep(Duration::from_millis(200)); // the logout line is written
        out.push((secs, last_session_out(&log)));
        assert_eq!(
            flagged(&bin, &work),
            (r + 1) * changed,
            "every change picked up"
        );
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n = knob("FLAGS_MESSAGES", 10_000);
    let changed = knob("FLAGS_CHANGED", 100);
    let runs = knob("FLAGS_RUNS", 3);
    let tmp = tempfile::Builder::new()
        .prefix("ft-flags-")
        .tempdir_in("/tmp")
        .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let with = side(&tmp.path().join("condstore"), "", n, changed, runs);
    let without = side(&tmp.path().join("plain"), NO_CONDSTORE, n, changed, runs);
    let row = |name: &str, v: &[(f64, u64)]| {
        let secs = median(v.iter().map(|x| x.0).collect());
        let bytes = median(v.iter().map(|x| x.1 as f64).collect());
        println!("| {name} | {:.0} | {:.0} |", secs * 1000.0, bytes);
        (secs, bytes)
    };
    println!(
        "\n{n} tracked messages, {changed} flag changes per pass, median of {runs} (load {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| pass that picks up the changes | wall ms (incl. process start, login) | bytes Dovecot sent |");
    println!("|---|---|---|");
    let (ws, wb) = row("CONDSTORE: `CHANGEDSINCE`", &with);
    let (ns, nb) = row("without CONDSTORE: flags of every tracked UID", &without);
    println!(
        "| ratio CONDSTORE / without | {:.2} | {:.3} |",
        ws / ns,
        wb / nb
    );
}
