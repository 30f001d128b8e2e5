//! Many mailboxes on one agent (the correctness half of `benches/scale.rs`): 100 Dovecot users,
//! each with a tracked folder, watched by one `foldertrack run` with one connection per mailbox;
//! mail delivered to all of them while it runs is tracked, each message once, each under its
//! own mailbox. Runs in about 10 s, so it is part of every test run.

mod common;
use common::*;
use foldertrack::sandbox::{Sandbox, SandboxOptions};
use std::process::Command;

const MAILBOXES: usize = 100;
const PER_MAILBOX: usize = 5;

#[test]
fn one_agent_tracks_100_mailboxes_each_message_once_under_its_mailbox() {
    assert!(foldertrack::sandbox::dovecot_available(), "needs Dovecot");
    let tmp = tempfile::Builder::new()
        .prefix("ft-test-many-")
        .tempdir_in("/tmp")
        .unwrap();
    let opts = SandboxOptions {
        users: (1..=MAILBOXES)
            .map(|i| (format!("user{i}"), PASSWORD.to_string()))
            .collect(),
        ..SandboxOptions::default()
    };
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &opts).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), PASSWORD).unwrap();
    let mut config = String::from("data_dir = \"data\"\n");
    for i in 1..=MAILBOXES {
        config.push_str(&format!("[[mailbox]]\nname = \"user{i}\"\nowner = \"systemuser:user{i}\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_plaintext = true\nuser = \"user{i}\"\npassword_file = \"password\"\n  [[mailbox.rule]]\n  folder = \"INBOX/Tracked\"\n", dovecot.port));
        Imap::login(dovecot.port, &format!("user{i}")).create("INBOX/Tracked");
    }
    std::fs::write(work.join("foldertrack.toml"), config).unwrap();
    let cli = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_foldertrack"))
            .current_dir(&work)
            .args(["--config", "foldertrack.toml"])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    let log = work.join("agent.log");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_foldertrack"))
        .current_dir(&work)
        .args(["--config", "foldertrack.toml", "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let idle = |st: &serde_json::Value| {
        st["mailboxes"].as_array().map_or(0, |m| {
            m.iter().filter(|m| m["live"]["state"] == "idle").count()
        })
    };
    wait_for("every mailbox idle", 60, || {
        idle(&cli(&["status", "--json"])) == MAILBOXES
    });
    let mut n = 0;
    for i in 1..=MAILBOXES {
        let user = format!("user{i}");
        let mut c = Imap::login(dovecot.port, &user);
        for j in 0..PER_MAILBOX {
            let mid = format!("<many-{i}-{j}@test>");
            c.append(
                "INBOX/Tracked",
                &message(
                    "bob@acme.com",
                    &format!("{user}@example.com"),
                    &format!("{user} {j}"),
                    Some(&mid),
                ),
            );
            n += 1;
        }
    }
    wait_for("every delivered message tracked", 60, || {
        cli(&["status", "--json"])["activities"].as_u64() == Some(n as u64)
    });
    let st = cli(&["status", "--json"]);
    assert_eq!(idle(&st), MAILBOXES, "every mailbox went back to idle");
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    assert!(
        agent.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let acts: Vec<serde_json::Value> = cli(&["activities", "list", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_each_once(&acts, MAILBOXES * PER_MAILBOX);
    for a in &acts {
        let user = a["source"]["mailbox"].as_str().unwrap();
        assert!(
            a["subject"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{user} ")),
            "tracked under its own mailbox: {a}"
        );
        assert!(a["other_sources"].as_array().is_none_or(|o| o.is_empty()));
    }
}
