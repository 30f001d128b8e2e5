//! The CLI contract: exit codes (0 ok, 1 runtime failure, 2 usage/config), error messages a
//! person can act on, records import all-or-nothing, the store lock, `check` and the JSON shape.

use serde_json::Value;
use testkit::*;

/// Alice tracking Acme, and a folder that does not exist for a record that does not either.
fn config(e: &Env) -> Config {
    Config::new().mailbox(
        e.mailbox("alice")
            .rule(acme())
            .rule(Rule::record("INBOX/Missing", "account:nope")),
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn config_error_exits_2_naming_file_line_and_key() {
    let e = env();
    let cfg = e.write_config(&config(&e));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "tls = \"none\"\nallow_plaintext = true\n",
        "tls = \"none\"\n",
    );
    std::fs::write(&cfg, text.as_bytes()).unwrap();
    let tls_line = 1 + text
        .lines()
        .position(|l| l == "tls = \"none\"")
        .expect("a tls line");
    let o = e.run(&["sync"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}:{tls_line}: mailbox[0].tls:", cfg.display())),
        "{err}"
    );
    assert!(
        err.contains("allow_plaintext = true"),
        "says what to do: {err}"
    );

    std::fs::remove_file(&cfg).unwrap();
    let o = e.run(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("config.example.toml"), "{}", stderr(&o));
}

#[test]
fn records_import_bad_line_exits_2_and_changes_nothing() {
    let e = env();
    e.write_config(&config(&e));
    e.import_records(RECORDS);
    let before = e.ok(&["records", "list", "--json"]);
    let bad = e.work.join("bad.jsonl");
    std::fs::write(&bad, "{\"type\":\"contact\",\"key\":\"new1\",\"emails\":[\"n1@x.com\"]}\n{\"type\":\"contact\",\"key\":\"new2\",\"emails\":[\"n2@x.com\"]}\n{\"type\":\"contact\",\"key\":\"new3\",\"emails\":[\"broken\"]}\n").unwrap();
    let o = e.run(&["records", "import", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(&format!("{}:3:", bad.display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        e.ok(&["records", "list", "--json"]),
        before,
        "nothing imported"
    );
    let csv = e.work.join("r.csv");
    std::fs::write(
        &csv,
        "type,key,name,emails,owner\ncontact,dana,Dana Scully,dana@fbi.gov;ds@fbi.gov,alice\n",
    )
    .unwrap();
    e.ok(&["records", "import", csv.to_str().unwrap()]);
    let shown: Value =
        serde_json::from_str(&e.ok(&["records", "show", "contact:dana", "--json"])).unwrap();
    assert_eq!(
        shown["emails"],
        serde_json::json!(["dana@fbi.gov", "ds@fbi.gov"])
    );
    assert_eq!(shown["owner"], "systemuser:alice");
    e.ok(&[
        "records",
        "add",
        "lead:new",
        "--name",
        "New Lead",
        "--email",
        "lead@new.com",
    ]);
    assert!(e
        .ok(&["records", "list", "--type", "lead"])
        .contains("lead:new"));
}

#[test]
fn second_process_on_the_same_data_dir_exits_2() {
    if sled_only("the data dir lock is sled's (PostgreSQL has none)") {
        return;
    }
    let e = env();
    e.write_config(&config(&e));
    let held = foldertrack::store::Store::open(&e.work.join("data"), 1 << 20).unwrap();
    let o = e.run(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("in use by another foldertrack process"),
        "{}",
        stderr(&o)
    );
    drop(held);
    e.ok(&["status"]);
}

#[test]
fn auth_failure_names_server_and_user_never_the_password() {
    let e = env();
    e.write_config(&config(&e));
    std::fs::write(e.work.join("password"), "wrong-secret-7788").unwrap();
    let o = e.run(&["-vv", "sync"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "login to 127.0.0.1:{} as alice failed",
            e.dovecot.port
        )),
        "{err}"
    );
    assert!(
        err.contains("AUTHENTICATIONFAILED") || err.contains("Authentication failed"),
        "{err}"
    );
    assert!(
        !err.contains("wrong-secret-7788")
            && !String::from_utf8_lossy(&o.stdout).contains("wrong-secret-7788")
    );
    let st = e.status();
    assert_eq!(st["mailboxes"][0]["state"], "failing");
    assert!(st["mailboxes"][0]["last_error"]
        .as_str()
        .unwrap()
        .contains("login"));
    assert_eq!(
        st["alerts"][0]["level"], "error",
        "auth failure is a permanent error"
    );
}

#[test]
fn check_reports_capabilities_missing_folders_and_records() {
    let e = env();
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    e.write_config(&config(&e));
    e.import_records(RECORDS);
    let o = e.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[ok] rule `INBOX/Tracked/Acme`: folder exists"),
        "{out}"
    );
    assert!(
        out.contains("[FAIL] rule `INBOX/Missing`: folder does not exist"),
        "{out}"
    );
    assert!(
        out.contains("[FAIL] rule `INBOX/Missing`: regarding account:nope is not in the records"),
        "{out}"
    );
    assert!(
        out.contains("IDLE yes") && out.contains("OBJECTID no"),
        "{out}"
    );
    assert!(out.contains("name + UIDVALIDITY"), "{out}");
    assert!(out.contains("Sent folder: Sent"), "{out}");
}

#[test]
fn activities_json_has_the_documented_fields() {
    let e = env();
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    let raw = std::fs::read(fixtures_dir().join("006-attachment-pdf.eml")).unwrap();
    c.append("INBOX/Tracked/Acme", &raw);
    e.write_config(&config(&e));
    e.import_records(RECORDS);
    e.ok(&["sync"]);
    let list = e.activities();
    assert_eq!(list.len(), 1);
    let a = &list[0];
    for k in [
        "id",
        "subject",
        "message_id",
        "direction",
        "regarding",
        "from",
        "to",
        "cc",
        "date",
        "attachments",
        "source",
    ] {
        assert!(a.get(k).is_some(), "missing {k}: {a}");
    }
    for k in ["address", "name", "record"] {
        assert!(a["from"].get(k).is_some(), "from.{k}");
    }
    for k in ["mailbox", "folder", "uidvalidity", "uid"] {
        assert!(a["source"].get(k).is_some(), "source.{k}");
    }
    // And the values: fixture 006 (see fixtures/mail/expected.json), filed in Acme's folder.
    assert_eq!(a["subject"], "Quotation Q-2024-031");
    assert_eq!(a["message_id"], "<fixture-006@example.com>");
    assert_eq!(a["direction"], "incoming");
    assert_eq!(a["regarding"], "account:acme");
    assert_eq!(
        a["from"],
        serde_json::json!({"address": "bob@acme.com", "name": "Bob Builder", "record": "contact:bob-builder"})
    );
    assert_eq!(a["to"][0]["address"], "alice@example.com");
    assert_eq!(a["to"][0]["record"], "systemuser:alice");
    assert_eq!(a["to"].as_array().unwrap().len(), 1);
    assert_eq!(a["cc"], serde_json::json!([]));
    assert_eq!(
        a["date"], "2024-03-06T09:20:00+01:00",
        "Wed, 06 Mar 2024 09:20:00 +0100"
    );
    let att = &a["attachments"][0];
    assert_eq!(att["name"], "Quote-Q-2024-031.pdf");
    assert_eq!(att["mime_type"], "application/pdf");
    assert_eq!(att["size"], 5019);
    let sha = att["sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{sha}"
    );
    assert_eq!(a["attachments"].as_array().unwrap().len(), 1);
    let folder = e.status()["mailboxes"][0]["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["folder"] == ACME)
        .cloned()
        .unwrap();
    assert_eq!(
        a["source"],
        serde_json::json!({"mailbox": "alice", "folder": ACME, "uidvalidity": folder["uidvalidity"], "uid": 1})
    );
    let id = a["id"].as_u64().unwrap().to_string();
    let shown: Value = serde_json::from_str(&e.ok(&["activities", "show", &id, "--json"])).unwrap();
    assert_eq!(shown["id"], a["id"]);
    assert!(shown["body_text"].as_str().is_some());
    assert_eq!(shown["attachments"][0]["mime_type"], "application/pdf");
    let text = e.ok(&["activities", "show", &id]);
    assert!(text.contains("attachment:"), "{text}");
    let o = e.run(&["activities", "show", "999"]);
    assert_eq!(o.status.code(), Some(2));
}
