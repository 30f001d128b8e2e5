//! Many mailboxes on one agent (the correctness half of `benches/scale.rs`): 100 Dovecot users,
//! each with a tracked folder, watched by one `foldertrack run` with one connection per mailbox;
//! mail delivered to all of them while it runs is tracked, each message once, each under its
//! own mailbox. Runs in about 10 s, so it is part of every test run.

use testkit::sandbox::SandboxOptions;
use testkit::*;

const MAILBOXES: usize = 100;
const PER_MAILBOX: usize = 5;

#[test]
fn one_agent_tracks_100_mailboxes_each_message_once_under_its_mailbox() {
    let e = env_with(SandboxOptions {
        users: (1..=MAILBOXES)
            .map(|i| (format!("user{i}"), PASSWORD.to_string()))
            .collect(),
        ..cast()
    });
    let mut config = Config::new();
    for i in 1..=MAILBOXES {
        let user = format!("user{i}");
        config = config.mailbox(e.mailbox(&user).rule(Rule::unlinked("INBOX/Tracked")));
        e.create_folders(&user, &["INBOX/Tracked"]);
    }
    e.write_config(&config);
    let cli = |args: &[&str]| {
        let o = e.run(args);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
    };
    let agent = e.agent().start();
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
        let mut c = e.imap(&user);
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
    let log = agent.log.clone();
    assert!(
        agent.stop().success(),
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
