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

fn thousand(e: &Env) {
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    let msgs: Vec<Vec<u8>> = (0..1000)
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
    thousand(&e);
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
    thousand(&e);
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
