//! `foldertrack run` against a real Dovecot: mail delivered while it watches becomes activities
//! (IDLE and polling), dropped sessions and a restarted server lose nothing and double nothing,
//! the CLI answers through the control socket, and moves, rule changes, manual links and
//! renames behave as DESIGN §4.4–4.6 says.

use serde_json::Value;
use testkit::*;

fn setup(watch: &str) -> Env {
    let e = env();
    e.setup(
        &[
            "INBOX/Tracked",
            "INBOX/Tracked/Acme",
            "INBOX/Customers",
            "INBOX/Customers/Globex",
            "INBOX/Projects",
            "INBOX/Personal",
        ],
        &Config::new().mailbox(e.mailbox("alice").keys(watch).rules(standard_rules())),
    );
    e
}

fn count(e: &Env) -> usize {
    e.activities().len()
}

fn wait_count(e: &Env, n: usize, secs: u64) {
    wait_for(&format!("{n} activities"), secs, || count(e) >= n);
    assert_eq!(count(e), n, "exactly {n}, none doubled");
}

fn one_by_subject(e: &Env, s: &str) -> Value {
    let acts = e.activities();
    let m = by_subject(&acts, s);
    assert_eq!(m.len(), 1, "one activity `{s}`");
    m[0].clone()
}

fn deliver_one_by_one(e: &Env, folder: &str, from: usize, to: usize) {
    let mut c = e.imap("bob");
    for i in from..to {
        let _ = &mut c;
        e.imap("alice").append(
            folder,
            &mail(&format!("live {i}"), &format!("<live{i}@acme.com>")),
        );
    }
}

#[test]
fn idle_tracks_500_messages_appended_one_by_one_exactly_once_though_the_session_is_dropped() {
    let e = setup("");
    let agent = e.start_agent();
    let st = e.status();
    assert_eq!(st["mailboxes"][0]["live"]["mode"], "IDLE+NOTIFY", "{st}");
    deliver_one_by_one(&e, "INBOX/Tracked/Acme", 0, 200);
    wait_count(&e, 200, 60);
    // Drop the agent's session from the server side, as Dovecot does after ~150 deliveries.
    e.dovecot.doveadm(&["kick", "alice"]).unwrap();
    deliver_one_by_one(&e, "INBOX/Tracked/Acme", 200, 400);
    deliver_one_by_one(&e, "INBOX/Customers/Globex", 400, 500);
    wait_count(&e, 500, 60);
    let st = e.status();
    assert!(
        st["mailboxes"][0]["live"]["reconnects"].as_u64().unwrap() >= 1,
        "{st}"
    );
    let acts = e.activities();
    assert!(acts
        .iter()
        .all(|a| a["regarding"] == "account:acme" || a["regarding"] == "account:globex"));
    assert_eq!(agent.stop().code(), Some(0), "SIGTERM ends run cleanly");
}

#[test]
fn polling_tracks_mail_when_idle_is_off() {
    let e = setup("idle = false\npoll_interval = 1");
    let _agent = e.start_agent();
    assert_eq!(e.status()["mailboxes"][0]["live"]["mode"], "poll");
    deliver_one_by_one(&e, "INBOX/Tracked/Acme", 0, 30);
    deliver_one_by_one(&e, "INBOX/Projects", 30, 40);
    wait_count(&e, 40, 30);
}

#[test]
fn dovecot_restart_loses_nothing_and_status_shows_the_outage_and_the_recovery() {
    let mut e = setup("");
    let _agent = e.start_agent();
    deliver_one_by_one(&e, "INBOX/Tracked/Acme", 0, 10);
    wait_count(&e, 10, 30);
    e.dovecot.stop().unwrap();
    wait_for("the agent to notice the outage", 30, || {
        let st = e.status();
        st["mailboxes"][0]["outages"]
            .as_array()
            .is_some_and(|o| o.last().is_some_and(|o| o["to"].is_null()))
    });
    e.dovecot.restart().unwrap();
    deliver_one_by_one(&e, "INBOX/Tracked/Acme", 10, 20);
    wait_count(&e, 20, 60);
    wait_for("the outage to be closed", 30, || {
        let st = e.status();
        st["mailboxes"][0]["outages"]
            .as_array()
            .is_some_and(|o| o.last().is_some_and(|o| o["to"].is_string()))
    });
    let text = e.ok(&["status"]);
    assert!(text.contains("outage"), "{text}");
}

#[test]
fn cli_answers_through_the_control_socket_while_run_holds_the_store() {
    let e = setup("");
    let _agent = e.start_agent();
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &mail("via socket", "<sock@x>"));
    wait_count(&e, 1, 30);
    let st = e.status();
    assert!(
        st["agent"].as_str().unwrap().starts_with("running (pid"),
        "{st}"
    );
    let a = one_by_subject(&e, "via socket");
    let shown: Value =
        serde_json::from_str(&e.ok(&["activities", "show", &a["id"].to_string(), "--json"]))
            .unwrap();
    assert_eq!(shown["subject"], "via socket");
    e.ok(&[
        "records",
        "add",
        "contact:dora",
        "--name",
        "Dora",
        "--email",
        "dora@x.com",
    ]);
    assert!(e.ok(&["records", "list"]).contains("contact:dora"));
    let sync = e.ok(&["sync"]);
    assert!(sync.contains("tracks continuously"), "{sync}");
    let socket = e.work.join("data/foldertrack.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn move_to_tracked_folder_with_regarding_relinks_without_keeps_out_of_tracking_leaves() {
    let e = setup("");
    let _agent = e.start_agent();
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        &message(
            "carol@globex.com",
            "alice@example.com",
            "moving",
            Some("<mv@x>"),
        ),
    );
    wait_count(&e, 1, 30);
    assert_eq!(one_by_subject(&e, "moving")["regarding"], "account:acme");
    let mv = |c: &mut Imap, from: &str, to: &str| {
        let (f, t) = (c.name(from), c.name(to));
        c.cmd(&format!("SELECT \"{f}\""));
        c.cmd(&format!("UID MOVE 1:* \"{t}\""));
    };
    mv(&mut c, "INBOX/Tracked/Acme", "INBOX/Customers/Globex");
    wait_for("re-link to globex", 30, || {
        one_by_subject(&e, "moving")["regarding"] == "account:globex"
    });
    mv(&mut c, "INBOX/Customers/Globex", "INBOX/Projects");
    e.ok(&["sync"]);
    wait_for("the Projects copy to be seen", 30, || {
        e.activities()[0]["other_sources"]
            .as_array()
            .is_some_and(|o| o.len() >= 2)
    });
    assert_eq!(
        one_by_subject(&e, "moving")["regarding"],
        "account:globex",
        "a folder without regarding keeps the link"
    );
    mv(&mut c, "INBOX/Projects", "INBOX/Personal");
    c.cmd(&format!("SELECT \"{}\"", c.name("INBOX/Personal")));
    c.cmd("UID STORE 1:* +FLAGS (\\Deleted)");
    c.cmd("EXPUNGE");
    e.ok(&["sync"]);
    // A pass that began after the move and the expunge: the one that tracks this later mail.
    c.append("INBOX/Tracked/Acme", &mail("later", "<later@x>"));
    wait_count(&e, 2, 30);
    assert_eq!(
        by_subject(&e.activities(), "moving").len(),
        1,
        "moving out or deleting leaves the activity"
    );
    assert_eq!(one_by_subject(&e, "moving")["regarding"], "account:globex");
}

#[test]
fn rule_change_on_sighup_relinks_messages_still_in_the_folder() {
    let e = setup("");
    let agent = e.start_agent();
    let mut c = e.imap("alice");
    c.append("INBOX/Projects", &mail("p1", "<p1@x>"));
    c.append("INBOX/Projects", &mail("p2", "<p2@x>"));
    wait_count(&e, 2, 30);
    assert!(e.activities().iter().all(|a| a["regarding"].is_null()));
    e.write_config(&Config::new().mailbox(e.mailbox("alice").rules([
        acme(),
        Rule::by_name("INBOX/Customers/*"),
        Rule::record("INBOX/Projects", "account:globex"),
    ])));
    agent.signal("HUP");
    wait_for("re-link after the rule change", 30, || {
        e.activities()
            .iter()
            .all(|a| a["regarding"] == "account:globex")
    });
}

#[test]
fn manual_link_is_reset_to_the_folder_rule_at_the_next_pass() {
    let e = setup("");
    let _agent = e.start_agent();
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &mail("by hand", "<h@x>"));
    wait_count(&e, 1, 30);
    // The catch-up that tracked it runs more rounds, and any pass resets a hand-set link: link
    // it once the worker waits in IDLE, so that only the `sync` below starts the next pass.
    wait_for("the worker back in IDLE", 30, || {
        e.status()["mailboxes"][0]["live"]["state"] == "idle"
    });
    let id = one_by_subject(&e, "by hand")["id"].to_string();
    e.ok(&["activities", "link", &id, "contact:carol"]);
    assert_eq!(one_by_subject(&e, "by hand")["regarding"], "contact:carol");
    e.ok(&["sync"]); // wakes the agent: its next pass resets the link
    wait_for("the folder rule to win again", 30, || {
        one_by_subject(&e, "by hand")["regarding"] == "account:acme"
    });
}

#[test]
fn rename_keeps_tracking_and_a_recreated_folder_is_new() {
    let e = setup("");
    let _agent = e.start_agent();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &mail("before rename", "<r1@x>"));
    wait_count(&e, 1, 30);
    let (old, new) = (
        c.name("INBOX/Tracked/Acme"),
        c.name("INBOX/Tracked/Acme Corp"),
    );
    c.cmd(&format!("RENAME \"{old}\" \"{new}\""));
    c.append("INBOX/Tracked/Acme Corp", &mail("after rename", "<r2@x>"));
    e.ok(&["sync"]);
    wait_count(&e, 2, 30);
    let a = one_by_subject(&e, "after rename");
    assert_eq!(
        a["regarding"], "account:acme",
        "the rule follows the renamed folder"
    );
    assert_eq!(a["source"]["folder"], "INBOX/Tracked/Acme Corp");
    assert!(e.status()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|al| al["message"].as_str().unwrap().contains("renamed")));
    // Deleted and re-created under the rule's name: a new folder, tracked by the rule again.
    c.cmd(&format!("DELETE \"{new}\""));
    c.create("INBOX/Tracked/Acme");
    c.append("INBOX/Tracked/Acme", &mail("recreated", "<r3@x>"));
    e.ok(&["sync"]);
    wait_count(&e, 3, 30);
    assert_eq!(one_by_subject(&e, "recreated")["regarding"], "account:acme");
}

#[test]
fn auth_failure_disables_that_mailbox_and_the_others_go_on() {
    let e = env();
    for u in ["alice", "bob"] {
        e.create_folders(u, &["INBOX/Tracked", "INBOX/Tracked/Acme"]);
    }
    e.write_config(
        &Config::new()
            .mailbox(e.mailbox("alice").rule(acme()))
            .mailbox(e.mailbox("bob").rule(acme()).wrong_password()),
    );
    e.import_records(RECORDS);
    let _agent = e.start_agent();
    wait_for("bob's mailbox to be disabled", 30, || {
        e.status()["mailboxes"][1]["state"] == "disabled"
    });
    e.imap("alice").append(
        "INBOX/Tracked/Acme",
        &message(
            "carol@globex.com",
            "alice@example.com",
            "alice still works",
            Some("<ok@x>"),
        ),
    );
    wait_count(&e, 1, 30);
    let st = e.status();
    assert!(
        st["mailboxes"][1]["live"]["detail"]
            .as_str()
            .unwrap()
            .contains("incoming disabled"),
        "{st}"
    );
}

/// Flag changes made in a mail client while `run` watches reach the CRM in seconds, in the IDLE
/// folder and in a folder NOTIFY watches (with CONDSTORE, NOTIFY reports flag changes too),
/// not at the next `others_interval` check.
#[test]
fn flag_changes_reach_the_crm_while_run_watches_the_idle_folder_and_the_others() {
    let e = setup("others_interval = 600\nidle_renew = 600");
    let _agent = e.start_agent();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &mail("idle flag", "<if@x>"));
    c.append("INBOX/Customers/Globex", &mail("other flag", "<of@x>"));
    wait_count(&e, 2, 30);
    for (folder, subject) in [
        ("INBOX/Customers/Globex", "other flag"),
        ("INBOX/Tracked/Acme", "idle flag"),
    ] {
        // Past the short settle IDLE after a pass (1.2 s): the agent is in its long wait.
        std::thread::sleep(std::time::Duration::from_secs(2));
        c.cmd(&format!("SELECT \"{}\"", c.name(folder)));
        c.cmd("UID STORE 1:* +FLAGS (\\Flagged Deal)");
        wait_for(&format!("follow-up on `{subject}`"), 10, || {
            let a = one_by_subject(&e, subject);
            a["follow_up"] == true && a["categories"] == serde_json::json!(["Deal"])
        });
    }
}
