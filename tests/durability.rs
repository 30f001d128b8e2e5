//! Nothing lost, nothing doubled: 1,000 messages synced once, a second sync adds none, and a
//! sync killed with SIGKILL half-way then run again ends with exactly 1,000 activities.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use testkit::*;

/// Alice tracking Acme with batches of `batch` messages.
fn config(e: &Env, batch: usize) -> Config {
    Config::new()
        .top(&format!("batch_messages = {batch}"))
        .mailbox(e.mailbox("alice").rule(acme()))
}

/// `n` messages from Bob in alice's Acme folder (created first).
fn fill(e: &Env, n: usize) {
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            message(
                "Bob Builder <bob@acme.com>",
                "alice@example.com",
                &format!("msg {i}"),
                Some(&format!("<m{i}@acme.com>")),
            )
        })
        .collect();
    c.append_many("INBOX/Tracked/Acme", &msgs, "");
}

#[test]
fn sync_of_1000_messages_tracks_each_once_and_second_sync_adds_none() {
    let e = env();
    fill(&e, 1000);
    e.write_config(&config(&e, 100));
    e.import_records(RECORDS);
    let out = e.ok(&["sync"]);
    assert!(out.contains("1000 new, 1000 tracked"), "{out}");
    assert_eq!(e.activities().len(), 1000);
    let out = e.ok(&["sync"]);
    assert!(
        out.contains("1 folder(s) unchanged"),
        "a second sync opens nothing: {out}"
    );
    let acts = e.activities();
    assert_each_once(&acts, 1000);
}

#[test]
fn sync_killed_with_sigkill_half_way_resumes_to_exactly_1000() {
    let e = env();
    fill(&e, 1000);
    // Small batches so the kill lands between commits, not after the last one.
    e.write_config(&config(&e, 20));
    e.import_records(RECORDS);
    let mut child = e
        .command()
        .arg("sync")
        .env("RUST_LOG", "foldertrack=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut committed = 0;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap().contains("batch committed") {
            committed += 1;
            if committed == 10 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the sync was killed, not finished");
    let partial = e.activities().len();
    assert!(
        (200..1000).contains(&partial),
        "killed half-way: {partial} activities"
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_each_once(&acts, 1000);
}

/// Batches parsed while the previous commit is still running wait for it and then commit
/// together, in one transaction (two at most), each message once. A first commit held in hand
/// (the `FOLDERTRACK_HOLD_BATCH` fail point) plays a slow database.
#[test]
fn batches_parsed_during_a_slow_commit_commit_together_each_once() {
    let e = env();
    fill(&e, 12);
    e.write_config(&config(&e, 1));
    e.import_records(RECORDS);
    let hold = e.work.join("hold-batch");
    std::fs::write(&hold, b"").unwrap();
    let mut child = e
        .command()
        .arg("sync")
        .env("RUST_LOG", "foldertrack=debug")
        .env("FOLDERTRACK_HOLD_BATCH", &hold)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The next line holding all of `what`.
    let next = |what: &[&str]| loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line with {what:?} within 30 s"));
        if what.iter().all(|w| line.contains(w)) {
            return line;
        }
    };
    let held = next(&["holding the batch"]);
    assert!(
        held.contains("last_uid=1"),
        "the first batch is held: {held}"
    );
    // Two more batches parsed meanwhile wait for the held commit (the line of the first of
    // them may come before or after the hold's).
    let waiting = next(&["batch parsed", "waiting=2"]);
    assert!(waiting.contains("last_uid=3"), "{waiting}");
    std::fs::remove_file(&hold).unwrap();
    let first = next(&["batch committed"]);
    assert!(first.contains("created=1"), "the held batch alone: {first}");
    let grouped = next(&["batch committed"]);
    assert!(
        grouped.contains("last_uid=3") && grouped.contains("created=2"),
        "the two batches parsed meanwhile, in one commit: {grouped}"
    );
    assert!(child.wait().unwrap().success(), "the sync ends");
    assert_each_once(&e.activities(), 12);
}
