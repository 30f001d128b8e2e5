//! Tracking semantics (DESIGN §4) against a real Dovecot: each test is named after the rule it
//! proves, sets up folders and mail over IMAP, runs the real binary, and checks the store.

use serde_json::Value;
use testkit::sandbox::SandboxOptions;
use testkit::*;

/// Alice's mailbox with the standard folders, rules and records.
fn alice() -> Env {
    let e = env();
    let alice = e
        .mailbox("alice")
        .rules(standard_rules())
        .rules([Rule::by_key("Archive/Deals/*"), Rule::unlinked("Sent")]);
    e.setup(
        &[
            "INBOX/Tracked",
            "INBOX/Tracked/Acme",
            "INBOX/Customers",
            "INBOX/Customers/Globex",
            "INBOX/Customers/Nobody Inc",
            "INBOX/Projects",
            "INBOX/Personal",
            "Archive",
            "Archive/Deals",
            "Archive/Deals/acme",
        ],
        &Config::new().mailbox(alice),
    );
    e
}

fn one<'a>(acts: &'a [Value], subject: &str) -> &'a Value {
    let m = by_subject(acts, subject);
    assert_eq!(
        m.len(),
        1,
        "expected one activity `{subject}`, got {}: {acts:#?}",
        m.len()
    );
    m[0]
}

#[test]
fn rule_exact_folder_links_every_message_to_its_record() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        &message(
            "Bob Builder <bob@acme.com>",
            "alice@example.com",
            "quote 1",
            Some("<q1@acme.com>"),
        ),
    );
    c.append(
        "INBOX/Tracked/Acme",
        &message(
            "stranger@unknown.org",
            "alice@example.com",
            "quote 2",
            Some("<q2@acme.com>"),
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(acts.len(), 2);
    for a in &acts {
        assert_eq!(a["regarding"], "account:acme");
        assert_eq!(a["source"]["folder"], "INBOX/Tracked/Acme");
        assert_eq!(a["source"]["mailbox"], "alice");
        assert_eq!(a["direction"], "incoming");
    }
    let by_reg = e.ok(&[
        "activities",
        "list",
        "--regarding",
        "account:acme",
        "--json",
    ]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&by_reg).unwrap().len(),
        2
    );
    let none = e.ok(&[
        "activities",
        "list",
        "--regarding",
        "account:globex",
        "--json",
    ]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&none).unwrap().len(), 0);
}

#[test]
fn rule_without_regarding_tracks_unlinked() {
    let e = alice();
    e.imap("alice")
        .append("INBOX/Projects", &mail("project x", "<p@x>"));
    e.ok(&["sync"]);
    let acts = e.activities();
    let a = one(&acts, "project x");
    assert_eq!(a["regarding"], Value::Null);
    assert!(
        a["alerts"].as_array().unwrap().is_empty(),
        "no alert for a deliberate no-regarding rule"
    );
}

#[test]
fn rule_pattern_captures_record_by_name_and_unmatched_capture_alerts() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Customers/Globex",
        &message(
            "carol@globex.com",
            "alice@example.com",
            "globex mail",
            Some("<g@x>"),
        ),
    );
    c.append(
        "INBOX/Customers/Nobody Inc",
        &message(
            "x@nobody.com",
            "alice@example.com",
            "nobody mail",
            Some("<n@x>"),
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(one(&acts, "globex mail")["regarding"], "account:globex");
    let n = one(&acts, "nobody mail");
    assert_eq!(
        n["regarding"],
        Value::Null,
        "an unmatched capture tracks unlinked"
    );
    assert!(
        n["alerts"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Nobody Inc"),
        "{n}"
    );
    let st = e.status();
    let alerts = st["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["message"].as_str().unwrap().contains("Nobody Inc")),
        "{alerts:?}"
    );
}

#[test]
fn rule_pattern_by_key_and_any_folder_can_be_tracked_not_only_under_inbox() {
    let e = alice();
    e.imap("alice")
        .append("Archive/Deals/acme", &mail("deal", "<d@x>"));
    e.ok(&["sync"]);
    assert_eq!(one(&e.activities(), "deal")["regarding"], "account:acme");
}

#[test]
fn untracked_folders_are_left_alone() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Personal",
        &message(
            "mum@family.org",
            "alice@example.com",
            "dinner",
            Some("<m@x>"),
        ),
    );
    c.append("INBOX", &mail("inbox mail", "<i@x>"));
    e.ok(&["sync"]);
    assert!(e.activities().is_empty());
}

#[test]
fn direction_sent_folder_is_outgoing_and_own_address_is_outgoing() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append(
        "Sent",
        &message(
            "Alice Example <alice@example.com>",
            "bob@acme.com",
            "sent copy",
            Some("<s1@example.com>"),
        ),
    );
    c.append(
        "INBOX/Tracked/Acme",
        &message(
            "Alice Example <alice@example.com>",
            "bob@acme.com",
            "dragged own mail",
            Some("<s2@example.com>"),
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let s = one(&acts, "sent copy");
    assert_eq!(s["direction"], "outgoing");
    assert_eq!(s["from"]["record"], "systemuser:alice");
    assert_eq!(s["to"][0]["record"], "contact:bob-builder");
    assert_eq!(one(&acts, "dragged own mail")["direction"], "outgoing");
}

#[test]
fn parties_from_resolves_one_record_recipients_all_unresolved_kept_as_address() {
    let e = alice();
    let m = b"From: Carol Shaw <carol@globex.com>\r\nTo: Alice <alice@example.com>, stranger@unknown.org\r\nCc: Bob <bob@acme.com>\r\nSubject: parties\r\nMessage-ID: <parties@x>\r\n\r\nhi\r\n";
    e.imap("alice").append("INBOX/Tracked/Acme", m);
    e.ok(&["sync"]);
    let acts = e.activities();
    let a = one(&acts, "parties");
    // carol@globex.com is a contact and a lead: From takes the contact (type order).
    assert_eq!(a["from"]["record"], "contact:carol");
    assert_eq!(a["from"]["name"], "Carol Shaw");
    assert_eq!(a["to"][0]["record"], "systemuser:alice");
    assert_eq!(a["to"][1]["address"], "stranger@unknown.org");
    assert_eq!(
        a["to"][1]["record"],
        Value::Null,
        "unresolved kept as addressused"
    );
    assert_eq!(a["cc"][0]["record"], "contact:bob-builder");
}

#[test]
fn dedup_same_message_in_two_folders_of_a_mailbox_is_one_activity_latest_folder_rule_wins() {
    let e = alice();
    let m = mail("twice", "<twice@acme.com>");
    let mut c = e.imap("alice");
    c.append("INBOX/Customers/Globex", &m);
    c.append("INBOX/Tracked/Acme", &m);
    e.ok(&["sync"]);
    let acts = e.activities();
    let a = one(&acts, "twice");
    let later = a["other_sources"][0]["folder"]
        .as_str()
        .expect("the second copy adds its source")
        .to_string();
    // Within one mailbox a copy in another folder with a regarding is a move or a drag there:
    // that folder's rule wins (DESIGN §4.4–4.5).
    assert_eq!(
        a["regarding"],
        if later == "INBOX/Tracked/Acme" {
            "account:acme"
        } else {
            "account:globex"
        }
    );
}

#[test]
fn history_of_a_message_moved_between_two_tracked_folders_and_relinked_by_hand() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &mail("moved", "<moved@acme.com>"));
    e.ok(&["sync"]);
    let (acme, globex) = (
        c.name("INBOX/Tracked/Acme"),
        c.name("INBOX/Customers/Globex"),
    );
    c.cmd(&format!("SELECT {}", testkit::imap::quote(&acme)));
    c.cmd(&format!("UID MOVE 1 {}", testkit::imap::quote(&globex)));
    e.ok(&["sync"]);
    let id = one(&e.activities(), "moved")["id"].to_string();
    e.ok(&["activities", "link", &id, "contact:bob-builder"]);
    let history: Vec<Value> =
        serde_json::from_str(&e.ok(&["activities", "history", &id, "--json"])).unwrap();
    let got: Vec<(String, String, Value, Value)> = history
        .iter()
        .map(|x| {
            let s = |k: &str| x[k].as_str().unwrap().to_string();
            (s("actor"), s("action"), x["old"].clone(), x["new"].clone())
        })
        .collect();
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    let v = |s: &str| Value::String(s.into());
    let (acme_rule, globex_rule) = (
        "rule:alice/INBOX/Tracked/Acme".to_string(),
        "rule:alice/INBOX/Customers/Globex".to_string(),
    );
    assert_eq!(
        got,
        vec![
            (
                format!("cli:{me}"),
                "relinked".into(),
                v("account:globex"),
                v("contact:bob-builder")
            ),
            (
                globex_rule.clone(),
                "relinked".into(),
                v("account:acme"),
                v("account:globex")
            ),
            (
                globex_rule,
                "copy added".into(),
                Value::Null,
                v("alice/INBOX/Customers/Globex UID 1")
            ),
            (acme_rule, "created".into(), Value::Null, v("account:acme")),
        ],
        "newest first"
    );
    let text = e.ok(&["activities", "history", &id]);
    assert!(
        text.contains("ACTOR") && text.contains("copy added"),
        "{text}"
    );
    let unknown = e.run(&["activities", "history", "999999"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown id is a usage error"
    );
}

#[test]
fn untrack_keeps_the_activity_drops_the_keyword_and_a_new_drag_tracks_it_again() {
    let e = alice();
    let mut c = e.imap("alice");
    let m = mail("private", "<private@acme.com>");
    c.append("INBOX/Tracked/Acme", &m);
    e.ok(&["sync"]);
    let a = one(&e.activities(), "private").clone();
    let id = a["id"].to_string();
    assert_eq!(a["tracked"], true);
    assert!(c.flags("INBOX/Tracked/Acme")[0].contains("$Tracked"));

    let said = e.ok(&["activities", "untrack", &id]);
    assert!(
        said.contains("untracked") && said.contains("$Tracked removed"),
        "{said}"
    );
    assert!(
        !c.flags("INBOX/Tracked/Acme")[0].contains("$Tracked"),
        "the keyword is gone from the mailbox copy"
    );
    // It stays, marked; the next pass leaves the message where it is alone.
    e.ok(&["sync"]);
    let a = one(&e.activities(), "private").clone();
    assert_eq!(a["tracked"], false);
    assert!(!c.flags("INBOX/Tracked/Acme")[0].contains("$Tracked"));
    // Idempotent; an unknown id is a usage error.
    assert!(e
        .ok(&["activities", "untrack", &id])
        .contains("it was already"));
    assert_eq!(
        e.run(&["activities", "untrack", "999999"]).status.code(),
        Some(2)
    );

    // A new drag into a tracked folder tracks it again.
    c.append("INBOX/Customers/Globex", &m);
    e.ok(&["sync"]);
    let a = one(&e.activities(), "private").clone();
    assert_eq!(a["tracked"], true);
    let history: Vec<Value> =
        serde_json::from_str(&e.ok(&["activities", "history", &id, "--json"])).unwrap();
    let actions: Vec<&str> = history
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    // Newest first: the drag into Globex tracked it again, added that copy and moved it there.
    assert_eq!(
        actions,
        [
            "relinked",
            "copy added",
            "tracked again",
            "untracked",
            "created"
        ],
        "{history:?}"
    );
}

#[test]
fn dedup_without_message_id_uses_content_hash_minus_trace_headers() {
    let e = alice();
    let body = "From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: no id\r\n\r\nsame body\r\n";
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        format!("Received: from a by b; Mon, 2 Sep 2024 10:00:00 +0000\r\n{body}").as_bytes(),
    );
    c.append("INBOX/Projects", format!("Received: from c by d; Mon, 2 Sep 2024 10:00:05 +0000\r\nDelivered-To: alice@example.com\r\n{body}").as_bytes());
    c.append(
        "INBOX/Projects",
        body.replace("same body", "other body").as_bytes(),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(
        by_subject(&acts, "no id").len(),
        2,
        "two different messages, one copy merged: {acts:#?}"
    );
    assert!(acts.iter().all(|a| a["message_id"].is_null()));
}

#[test]
fn dedup_sent_copy_and_received_copy_are_two_activities() {
    let e = alice();
    let m = message(
        "alice@example.com",
        "bob@example.com",
        "both ways",
        Some("<bw@example.com>"),
    );
    let mut c = e.imap("alice");
    c.append("Sent", &m);
    c.append("INBOX/Projects", &mail("both ways", "<bw@example.com>"));
    e.ok(&["sync"]);
    let acts = e.activities();
    let both = by_subject(&acts, "both ways");
    assert_eq!(both.len(), 2);
    let mut dirs: Vec<&str> = both
        .iter()
        .map(|a| a["direction"].as_str().unwrap())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["incoming", "outgoing"]);
    assert_eq!(both[0]["message_id"], both[1]["message_id"]);
    let shown: Value =
        serde_json::from_str(&e.ok(&["activities", "show", &both[0]["id"].to_string(), "--json"]))
            .unwrap();
    assert_eq!(shown["counterpart"], both[1]["id"], "linked by Message-ID");
}

#[test]
fn dedup_across_mailboxes_is_one_activity() {
    let e = env();
    for u in ["alice", "bob"] {
        let mut c = e.imap(u);
        c.create("INBOX/Tracked");
        c.create("INBOX/Tracked/Acme");
        c.append(
            "INBOX/Tracked/Acme",
            &message(
                "carol@globex.com",
                "alice@example.com, bob@example.com",
                "to both",
                Some("<both@globex.com>"),
            ),
        );
    }
    e.write_config(
        &Config::new()
            .mailbox(e.mailbox("alice").rule(acme()))
            .mailbox(e.mailbox("bob").rule(acme())),
    );
    e.import_records(RECORDS);
    e.ok(&["sync"]);
    let acts = e.activities();
    let a = one(&acts, "to both");
    assert_eq!(a["source"]["mailbox"], "alice");
    assert_eq!(a["other_sources"][0]["mailbox"], "bob");
}

#[test]
fn quarantine_unparseable_message_does_not_block_the_folder() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &mail("before", "<b@x>"));
    c.append("INBOX/Tracked/Acme", b"\r\n\r\n   \r\n");
    c.append("INBOX/Tracked/Acme", &mail("after", "<a@x>"));
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(acts.len(), 2);
    let st = e.status();
    assert_eq!(st["quarantined"], 1);
    let folder = &st["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["folder"] == "INBOX/Tracked/Acme")
        .unwrap()
        .clone();
    assert_eq!(
        folder["last_uid"], 3,
        "the checkpoint moves past the bad message"
    );
    e.ok(&["sync"]);
    assert_eq!(e.status()["quarantined"], 1, "not quarantined twice");
}

#[test]
fn body_peek_never_marks_mail_read() {
    let e = alice();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &mail("unread", "<u@x>"));
    e.ok(&["sync"]);
    assert_eq!(e.activities().len(), 1);
    let flags = c.flags("INBOX/Tracked/Acme");
    assert_eq!(flags.len(), 1);
    assert!(!flags[0].contains("\\Seen"), "{flags:?}");
}

#[test]
fn uidvalidity_reset_rereads_folder_without_duplicates() {
    let e = alice();
    let mut c = e.imap("alice");
    for i in 0..3 {
        c.append(
            "INBOX/Tracked/Acme",
            &mail(&format!("m{i}"), &format!("<m{i}@x>")),
        );
    }
    e.ok(&["sync"]);
    let before = e.status()["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["folder"] == "INBOX/Tracked/Acme")
        .unwrap()["uidvalidity"]
        .as_u64()
        .unwrap();
    let server = c.name("INBOX/Tracked/Acme");
    e.dovecot
        .doveadm(&[
            "mailbox",
            "update",
            "-u",
            "alice",
            "--uid-validity",
            &(before + 1000).to_string(),
            &server,
        ])
        .expect("doveadm");
    c.append("INBOX/Tracked/Acme", &mail("m3", "<m3@x>"));
    let out = e.ok(&["sync"]);
    assert!(out.contains("UIDVALIDITY changed"), "{out}");
    let acts = e.activities();
    assert_eq!(acts.len(), 4, "{acts:#?}");
    for a in &acts {
        assert_eq!(
            a["source"]["uidvalidity"].as_u64().unwrap(),
            before + 1000,
            "sources point at the new UIDVALIDITY"
        );
    }
    assert!(e.status()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["message"].as_str().unwrap().contains("UIDVALIDITY")));
}

#[test]
fn non_ascii_folder_names_are_encoded_and_tracked() {
    let e = env();
    let mut c = e.imap("alice");
    c.create("Kunden");
    c.create("Kunden/Müller & Söhne");
    c.append("Kunden/Müller & Söhne", &mail("umlaut", "<u@x>"));
    e.write_config(
        &Config::new().mailbox(
            e.mailbox("alice")
                .rule(Rule::record("Kunden/Müller & Söhne", "account:acme")),
        ),
    );
    e.import_records(RECORDS);
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(
        one(&acts, "umlaut")["source"]["folder"],
        "Kunden/Müller & Söhne"
    );
}

#[test]
fn slash_separator_server_maps_config_folders() {
    let e = env_with(SandboxOptions {
        separator: '/',
        ..cast()
    });
    let mut c = e.imap("alice");
    assert_eq!(c.sep, '/');
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    c.append("INBOX/Tracked/Acme", &mail("slash", "<s@x>"));
    e.write_config(&Config::new().mailbox(e.mailbox("alice").rule(acme())));
    e.import_records(RECORDS);
    e.ok(&["sync"]);
    assert_eq!(one(&e.activities(), "slash")["regarding"], "account:acme");
}

#[test]
fn fixtures_corpus_is_tracked_or_quarantined_with_expected_fields() {
    let e = alice();
    let dir = fixtures_dir();
    let expected: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut names: Vec<&String> = expected.keys().collect();
    names.sort();
    let msgs: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    e.imap("alice").append_many("INBOX/Projects", &msgs, "");
    let out = e.ok(&["sync"]);
    assert!(out.contains(&format!("{} new", names.len())), "{out}");
    let acts = e.activities();
    let st = e.status();
    // 018 and 019 share a Message-ID: one activity with two sources.
    assert_eq!(
        acts.len() as u64 + st["quarantined"].as_u64().unwrap(),
        names.len() as u64 - 1,
        "{out}"
    );
    for (i, name) in names.iter().enumerate() {
        let exp = &expected[name.as_str()];
        let uid = i as u64 + 1;
        let Some(a) = acts.iter().find(|a| {
            a["source"]["uid"] == uid
                || a["other_sources"]
                    .as_array()
                    .is_some_and(|o| o.iter().any(|s| s["uid"] == uid))
        }) else {
            panic!("{name} (uid {uid}) is neither tracked nor merged");
        };
        if name.starts_with("019") {
            assert_eq!(
                a["source"]["uid"],
                uid - 1,
                "duplicate Message-ID merges into 018"
            );
            continue;
        }
        assert_eq!(a["subject"], exp["subject"], "{name}");
        assert_eq!(a["message_id"], exp["message_id"], "{name}");
        assert_eq!(
            a["attachments"].as_array().unwrap().len(),
            exp["attachments"].as_array().unwrap().len(),
            "{name}"
        );
    }
    let big = acts
        .iter()
        .find(|a| a["subject"] == expected["009-large-attachment-6mb.eml"]["subject"])
        .unwrap();
    assert_eq!(big["attachments"][0]["size"], 6 * 1024 * 1024);
}

/// The suite runs on the engine it was asked for (`FOLDERTRACK_TEST_ENGINE`): `status` names
/// it, from the CLI and from a running agent, and on PostgreSQL the tracked mail is in the
/// database's tables, not in the data dir.
#[test]
fn store_is_the_engine_the_tests_ask_for() {
    let e = alice();
    e.imap("alice").append(
        ACME,
        b"From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: engine check\r\nMessage-ID: <engine@t>\r\n\r\nhi\r\n",
    );
    e.ok(&["sync"]);
    let st = e.status();
    let store = st["store"].as_str().unwrap_or_default().to_string();
    let _agent = e.start_agent();
    let live = e.status();
    assert!(live["agent"].as_str().unwrap().starts_with("running"));
    assert_eq!(live["store"], st["store"]);
    match &e.pg {
        None => assert_eq!(store, "sled"),
        Some(pg) => {
            assert!(store.starts_with("postgres ("), "{store}");
            assert!(!e.work.join("data/db").exists(), "no sled files");
            let mut sql = postgres::Client::connect(pg.url(), postgres::NoTls).unwrap();
            let row = sql
                .query_one("SELECT subject, regarding FROM activities", &[])
                .unwrap();
            assert_eq!(row.get::<_, String>(0), "engine check");
            assert_eq!(row.get::<_, String>(1), "account:acme");
            // Commands read the database beside the running agent (no data dir lock).
            assert_eq!(e.activities().len(), 1);
        }
    }
}

/// The activity's synced fields as `activities list --json` shows them.
fn fields_of(e: &Env, subject: &str) -> (bool, bool, String, Vec<String>, bool) {
    let acts = e.activities();
    let a = one(&acts, subject);
    let cats = a["categories"]
        .as_array()
        .unwrap_or_else(|| panic!("no categories in {a}"))
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (
        a["read"].as_bool().unwrap(),
        a["follow_up"].as_bool().unwrap(),
        a["importance"].as_str().unwrap().to_string(),
        cats,
        a["tracked"].as_bool().unwrap(),
    )
}

/// A mail client's STORE on the first message of `folder`.
fn client_store(c: &mut testkit::imap::Imap, folder: &str, what: &str) {
    let n = testkit::imap::quote(&c.name(folder));
    c.cmd(&format!("SELECT {n}"));
    let r = c.command(&format!("UID STORE 1:* {what}"));
    assert!(r.ok(), "STORE {what}: {r:?}");
}

/// The audit actions of activity `id`, newest first, as (action, actor, field).
fn history_of(e: &Env, id: &str) -> Vec<(String, String, String)> {
    let h: Vec<Value> =
        serde_json::from_str(&e.ok(&["activities", "history", id, "--json"])).unwrap();
    h.iter()
        .map(|x| {
            (
                x["action"].as_str().unwrap().to_string(),
                x["actor"].as_str().unwrap().to_string(),
                x["field"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Field sync with CONDSTORE (Dovecot's default): the flags a message has when tracked are
/// its fields; a mail client's changes reach the CRM in the next pass (read, follow-up,
/// importance, categories); `activities set` writes follow-up and categories to the mailbox
/// (`both`) but not read (`to_crm`); removing `$Tracked` in the mail client untracks.
#[test]
fn field_sync_follow_up_and_categories_both_ways_read_to_crm_only_keyword_removal_untracks() {
    let e = alice();
    let mut c = e.imap("alice");
    let f = "INBOX/Tracked/Acme";
    c.append_many(f, &[mail("flagged", "<fl@acme.com>")], "\\Seen");
    let urgent = String::from_utf8(mail("urgent", "<urgent@acme.com>"))
        .unwrap()
        .replacen("Subject:", "X-Priority: 1 (Highest)\r\nSubject:", 1);
    c.append(f, urgent.as_bytes());
    e.ok(&["sync"]);
    assert_eq!(
        fields_of(&e, "urgent").2,
        "high",
        "Outlook's X-Priority sets the first importance"
    );
    let id = one(&e.activities(), "flagged")["id"].to_string();
    assert_eq!(
        fields_of(&e, "flagged"),
        (true, false, "normal".into(), vec![], true),
        "the flags it was tracked with"
    );

    // The mail client flags it, marks it important and gives it a category.
    client_store(&mut c, f, "+FLAGS (\\Flagged $Important Urgent)");
    e.ok(&["sync"]);
    assert_eq!(
        fields_of(&e, "flagged"),
        (true, true, "high".into(), vec!["Urgent".to_string()], true)
    );
    let h = history_of(&e, &id);
    for field in ["follow_up", "importance", "categories"] {
        assert!(
            h.contains(&("field changed".into(), "mailbox:alice".into(), field.into())),
            "{field} from the mailbox in {h:?}"
        );
    }

    // The CRM side: follow-up off, a category swapped, read off.
    let said = e.ok(&[
        "activities",
        "set",
        &id,
        "--follow-up",
        "off",
        "--category",
        "+Deal",
        "--category",
        "-Urgent",
        "--read",
        "off",
    ]);
    assert!(
        said.contains("written to alice/INBOX/Tracked/Acme"),
        "{said}"
    );
    let flags = c.flags(f)[0].clone();
    assert!(
        !flags.contains("\\Flagged"),
        "follow-up off reached the mailbox: {flags}"
    );
    assert!(
        flags.contains("Deal") && !flags.contains("Urgent"),
        "{flags}"
    );
    assert!(
        flags.contains("\\Seen"),
        "read is to_crm: the mailbox keeps \\Seen: {flags}"
    );
    assert!(
        flags.contains("$Important") && flags.contains("$Tracked"),
        "{flags}"
    );
    // A pass changes nothing back: the mailbox holds what the CRM wrote.
    e.ok(&["sync"]);
    assert_eq!(
        fields_of(&e, "flagged"),
        (false, false, "high".into(), vec!["Deal".to_string()], true)
    );
    assert!(history_of(&e, &id)
        .iter()
        .any(|x| x.0 == "field changed" && x.1.starts_with("cli") && x.2 == "read"));

    // Removing the tracked keyword in the mail client untracks, within one pass.
    client_store(&mut c, f, "-FLAGS ($Tracked)");
    e.ok(&["sync"]);
    assert!(!fields_of(&e, "flagged").4, "untracked");
    let h = history_of(&e, &id);
    assert_eq!(h[0].0, "untracked", "{h:?}");
    assert_eq!(h[0].1, "mailbox:alice", "{h:?}");
    // Bad input is a usage error.
    for bad in [
        vec!["activities", "set", &id],
        vec!["activities", "set", &id, "--category", "Deal"],
        vec!["activities", "set", &id, "--category", "+has space"],
        vec!["activities", "set", "999999", "--follow-up", "on"],
    ] {
        assert_eq!(e.run(&bad).status.code(), Some(2), "{bad:?}");
    }
}

/// Without CONDSTORE (Dovecot told not to offer it): the flags of the tracked messages are
/// fetched at most every `flag_scan_interval`, and a folder that keeps no keywords gets
/// follow-up but not categories.
#[test]
fn field_sync_without_condstore_scans_the_tracked_uids_every_interval() {
    let e = env_with(SandboxOptions {
        extra_conf: "imap_capability = IMAP4rev1 LITERAL+ SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE UIDPLUS MOVE SPECIAL-USE CHILDREN UNSELECT LIST-EXTENDED\n".into(),
        ..cast()
    });
    let alice = e
        .mailbox("alice")
        .keys("field_sync = { flag_scan_interval = 1 }")
        .rules(standard_rules());
    e.setup(
        &["INBOX/Tracked", "INBOX/Tracked/Acme"],
        &Config::new().mailbox(alice),
    );
    let mut c = e.imap("alice");
    let caps = c.cmd("CAPABILITY").join(" ");
    assert!(!caps.contains("CONDSTORE"), "{caps}");
    let f = "INBOX/Tracked/Acme";
    c.append(f, &mail("no condstore", "<nc@acme.com>"));
    e.ok(&["sync"]);
    assert!(!fields_of(&e, "no condstore").1);
    client_store(&mut c, f, "+FLAGS (\\Flagged Later)");
    // The first pass scanned the flags; the next scan is due after the interval.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    e.ok(&["sync"]);
    let (_, follow_up, _, cats, _) = fields_of(&e, "no condstore");
    assert!(follow_up);
    assert_eq!(cats, vec!["Later".to_string()]);
}

/// A message with attachments `(name, base64 bytes)`.
fn with_attachments(subject: &str, id: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let mut m = format!("From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: {subject}\r\nMessage-ID: {id}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n", format!("A {subject} letter. ").repeat(40));
    for (name, b64) in files {
        m.push_str(&format!("--b\r\nContent-Type: application/octet-stream; name={name}\r\nContent-Disposition: attachment; filename={name}\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"));
    }
    m.push_str("--b--\r\n");
    m.into_bytes()
}

/// Every byte of the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(bytes_under(&e.path()));
        } else {
            out.extend(std::fs::read(e.path()).unwrap_or_default());
        }
    }
    out
}

/// `untrack --delete` (mail tracked by mistake): the activity, its body and the attachment
/// only it had are gone (on sled, their bytes too), the attachment another activity shares
/// stays, the audit trail stays with who, when and why, and the next pass does not track the
/// message again.
#[test]
fn untrack_delete_deletes_the_activity_and_its_own_blobs_and_keeps_a_shared_one() {
    let e = alice();
    let mut c = e.imap("alice");
    // "U0VDUkVULU9OTFktTUlORQ==" is SECRET-ONLY-MINE, "U0hBUkVELVdJVEgtT1RIRVI=" SHARED-WITH-OTHER.
    let mine = ("mine.bin", "U0VDUkVULU9OTFktTUlORQ==");
    let shared = ("shared.bin", "U0hBUkVELVdJVEgtT1RIRVI=");
    c.append(
        "INBOX/Tracked/Acme",
        &with_attachments("private", "<private@acme.com>", &[mine, shared]),
    );
    c.append(
        "INBOX/Tracked/Acme",
        &with_attachments("business", "<business@acme.com>", &[shared]),
    );
    e.ok(&["sync"]);
    let id = one(&e.activities(), "private")["id"].to_string();
    let other = one(&e.activities(), "business")["id"].to_string();

    let said = e.ok(&[
        "activities",
        "untrack",
        &id,
        "--delete",
        "--reason",
        "private mail",
    ]);
    assert!(
        said.contains("deleted from the store") && said.contains("1 kept"),
        "{said}"
    );
    assert!(by_subject(&e.activities(), "private").is_empty());
    assert_eq!(e.run(&["activities", "show", &id]).status.code(), Some(2));
    let h: Vec<Value> =
        serde_json::from_str(&e.ok(&["activities", "history", &id, "--json"])).unwrap();
    assert_eq!(h[0]["action"], "deleted", "{h:?}");
    assert_eq!(h[0]["new"], "private mail");
    assert!(h[0]["actor"].as_str().unwrap().starts_with("cli"));
    // The shared attachment is still there for the other activity.
    let o = e.run(&["activities", "attachment", &other, "1"]);
    assert_eq!(o.stdout, b"SHARED-WITH-OTHER");
    // The next pass leaves the message alone; an unknown id is a usage error.
    e.ok(&["sync"]);
    assert!(by_subject(&e.activities(), "private").is_empty());
    let again = e.run(&["activities", "untrack", &id, "--delete"]);
    assert_eq!(again.status.code(), Some(2));
    if !testkit::postgres() {
        let disk = bytes_under(&e.work.join("data").join("blobs"));
        let has = |n: &[u8]| disk.windows(n.len()).any(|w| w == n);
        assert!(
            !has(b"SECRET-ONLY-MINE"),
            "the deleted attachment's bytes are gone"
        );
        assert!(
            !has(b"A private letter. A private letter."),
            "the body is gone"
        );
        assert!(has(b"A business letter. A business letter."));
        assert!(has(b"SHARED-WITH-OTHER"));
    }
}

/// A conflict, on a real server: the CRM swaps a category while the mailbox cannot be reached
/// (the write fails), then a mail client swaps it otherwise. Under `both` the CRM wins: the
/// next pass writes the CRM's value to the mailbox and the audit keeps both values.
#[test]
fn field_sync_conflict_under_both_is_won_by_the_crm_and_the_audit_keeps_both_values() {
    let mut e = alice();
    let mut c = e.imap("alice");
    let f = "INBOX/Tracked/Acme";
    c.append_many(f, &[mail("contested", "<contested@acme.com>")], "Deal");
    e.ok(&["sync"]);
    let id = one(&e.activities(), "contested")["id"].to_string();
    e.dovecot.stop().unwrap();
    let said = e.ok(&[
        "activities",
        "set",
        &id,
        "--category",
        "-Deal",
        "--category",
        "+Won",
    ]);
    assert!(said.contains("not written now"), "{said}");
    e.dovecot.restart().unwrap();
    let mut c = e.imap("alice");
    client_store(&mut c, f, "-FLAGS (Deal)");
    client_store(&mut c, f, "+FLAGS (Lost)");
    e.ok(&["sync"]);
    assert_eq!(fields_of(&e, "contested").3, vec!["Won".to_string()]);
    let flags = c.flags(f)[0].clone();
    assert!(flags.contains("Won") && !flags.contains("Lost"), "{flags}");
    let h: Vec<Value> =
        serde_json::from_str(&e.ok(&["activities", "history", &id, "--json"])).unwrap();
    let conflict = h
        .iter()
        .find(|x| x["action"] == "field conflict")
        .unwrap_or_else(|| panic!("{h:?}"));
    assert_eq!(
        (&conflict["old"], &conflict["new"], &conflict["actor"]),
        (
            &Value::from("Lost"),
            &Value::from("Won"),
            &Value::from("mailbox:alice")
        )
    );
}
