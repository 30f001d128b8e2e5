//! CRM semantics against a real Dovecot (DESIGN §4.7–4.13): correlation and inherited
//! regarding, tracking tokens, parties and auto-created senders, write permissions, attachment
//! blobs, other mail, and `$Tracked` write-back. Each test is named after the rule it proves.

use serde_json::Value;
use testkit::*;

/// Alice with `keys`, tracking Acme (linked) and Projects (unlinked).
fn alice(e: &Env, keys: &str) -> Mailbox {
    e.mailbox("alice")
        .keys(keys)
        .rules([acme(), Rule::unlinked("INBOX/Projects")])
}

fn setup(keys: &str) -> Env {
    let e = env();
    e.setup(
        &["INBOX/Tracked", "INBOX/Tracked/Acme", "INBOX/Projects"],
        &Config::new().mailbox(alice(&e, keys)),
    );
    e
}

fn one(acts: &[Value], subject: &str) -> Value {
    let m = by_subject(acts, subject);
    assert_eq!(m.len(), 1, "one activity `{subject}`: {acts:#?}");
    m[0].clone()
}

fn msg(headers: &str, subject: &str) -> Vec<u8> {
    format!("From: Bob Builder <bob@acme.com>\r\nTo: alice@example.com, carol@globex.com\r\nSubject: {subject}\r\n{headers}Date: Mon, 2 Sep 2024 10:00:00 +0000\r\n\r\nbody\r\n").into_bytes()
}

#[test]
fn correlation_in_reply_to_inherits_regarding_when_the_folder_rule_has_none() {
    let e = setup("");
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        &msg("Message-ID: <first@acme.com>\r\n", "first"),
    );
    c.append(
        "INBOX/Projects",
        &msg(
            "Message-ID: <reply@acme.com>\r\nIn-Reply-To: <first@acme.com>\r\n",
            "reply",
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let first = one(&acts, "first");
    let reply = one(&acts, "reply");
    assert_eq!(reply["correlation"]["method"], "in-reply-to");
    assert_eq!(reply["correlation"]["activity"], first["id"]);
    assert_eq!(
        reply["regarding"], "account:acme",
        "inherited: the Projects rule has no regarding"
    );
}

#[test]
fn correlation_by_references_when_in_reply_to_is_unknown() {
    let e = setup("");
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        &msg("Message-ID: <root@acme.com>\r\n", "root"),
    );
    c.append("INBOX/Projects", &msg("Message-ID: <r2@acme.com>\r\nIn-Reply-To: <unknown@x>\r\nReferences: <root@acme.com> <unknown@x>\r\n", "deep reply"));
    e.ok(&["sync"]);
    let acts = e.activities();
    let reply = one(&acts, "deep reply");
    assert_eq!(reply["correlation"]["method"], "references");
    assert_eq!(reply["correlation"]["activity"], one(&acts, "root")["id"]);
}

#[test]
fn correlation_folder_rule_wins_over_the_correlated_regarding() {
    let e = setup("");
    let mut c = e.imap("alice");
    c.create("INBOX/Customers");
    c.create("INBOX/Customers/Globex");
    e.write_config(
        &Config::new()
            .mailbox(alice(&e, "").rule(Rule::record("INBOX/Customers/Globex", "account:globex"))),
    );
    c.append(
        "INBOX/Tracked/Acme",
        &msg("Message-ID: <a1@acme.com>\r\n", "acme thread"),
    );
    c.append(
        "INBOX/Customers/Globex",
        &msg(
            "Message-ID: <a2@acme.com>\r\nIn-Reply-To: <a1@acme.com>\r\n",
            "globex reply",
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let r = one(&acts, "globex reply");
    assert_eq!(r["correlation"]["method"], "in-reply-to");
    assert_eq!(
        r["correlation"]["activity"],
        one(&acts, "acme thread")["id"]
    );
    assert_eq!(r["regarding"], "account:globex");
}

#[test]
fn correlation_by_tracking_token_in_the_subject_and_token_is_shown() {
    let e = setup("");
    let mut c = e.imap("alice");
    c.append(
        "INBOX/Tracked/Acme",
        &msg(
            "Message-ID: <t1@example.com>\r\n",
            "Quote for widgets CRM:0001002",
        ),
    );
    // A reply whose client dropped In-Reply-To and References, but kept the token.
    c.append(
        "INBOX/Projects",
        &msg(
            "Message-ID: <t2@acme.com>\r\n",
            "RE: Quote for widgets CRM:0001002",
        ),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let first = one(&acts, "Quote for widgets CRM:0001002");
    assert_eq!(first["token"], "CRM:0001002");
    let r = one(&acts, "RE: Quote for widgets CRM:0001002");
    assert_eq!(r["correlation"]["method"], "token");
    assert_eq!(r["correlation"]["activity"], first["id"]);
    assert_eq!(r["regarding"], "account:acme");
}

#[test]
fn correlation_by_outlook_thread_index_extending_a_tracked_one() {
    let e = setup("");
    let dir = fixtures_dir();
    let first = std::fs::read(dir.join("025-outlook-thread-index.eml")).unwrap();
    let reply = String::from_utf8_lossy(
        &std::fs::read(dir.join("026-outlook-reply-thread-index.eml")).unwrap(),
    )
    .lines()
    .filter(|l| !l.starts_with("In-Reply-To:") && !l.starts_with("References:"))
    .collect::<Vec<_>>()
    .join("\r\n");
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &first);
    c.append("INBOX/Projects", reply.as_bytes());
    e.ok(&["sync"]);
    let acts = e.activities();
    let r = one(&acts, "RE: Globex renewal pricing");
    assert_eq!(r["correlation"]["method"], "thread-index", "{r}");
    let original = acts
        .iter()
        .find(|a| a["id"] != r["id"])
        .expect("the original");
    assert_eq!(r["correlation"]["activity"], original["id"], "{r}");
    assert_eq!(r["regarding"], "account:acme");
}

#[test]
fn correlation_smart_matching_is_off_by_default_and_needs_two_shared_addresses() {
    for (smart, expect) in [(false, Value::Null), (true, Value::from("smart"))] {
        let e = setup(if smart { "smart_matching = true" } else { "" });
        let mut c = e.imap("alice");
        c.append(
            "INBOX/Tracked/Acme",
            &msg("Message-ID: <s1@acme.com>\r\n", "Widget delivery schedule"),
        );
        c.append(
            "INBOX/Projects",
            &msg(
                "Message-ID: <s2@acme.com>\r\n",
                "AW: Widget delivery schedule",
            ),
        );
        // Same subject, but only one shared address: never smart-matched.
        c.append("INBOX/Projects", b"From: x@other.org\r\nTo: alice@example.com\r\nSubject: Re: Widget delivery schedule\r\nMessage-ID: <s3@o>\r\n\r\nhi\r\n");
        e.ok(&["sync"]);
        let acts = e.activities();
        let reply = one(&acts, "AW: Widget delivery schedule");
        assert_eq!(
            reply["correlation"]["method"], expect,
            "smart_matching = {smart}"
        );
        if smart {
            assert_eq!(
                reply["correlation"]["activity"],
                one(&acts, "Widget delivery schedule")["id"]
            );
        }
        assert!(one(&acts, "Re: Widget delivery schedule")["correlation"].is_null());
    }
}

#[test]
fn parties_unresolved_sender_creates_a_contact_or_lead_owned_by_the_mailbox_owner() {
    for kind in ["contact", "lead"] {
        let e = setup(&format!("unresolved_sender = \"{kind}\""));
        let mut c = e.imap("alice");
        c.append("INBOX/Projects", b"From: Nina Newcomer <nina@new.org>\r\nTo: alice@example.com\r\nSubject: hello 1\r\nMessage-ID: <n1@new.org>\r\n\r\nhi\r\n");
        c.append("INBOX/Projects", b"From: Nina Newcomer <nina@new.org>\r\nTo: alice@example.com\r\nSubject: hello 2\r\nMessage-ID: <n2@new.org>\r\n\r\nhi\r\n");
        e.ok(&["sync"]);
        let acts = e.activities();
        let want = format!("{kind}:nina@new.org");
        assert_eq!(one(&acts, "hello 1")["from"]["record"], want.as_str());
        assert_eq!(
            one(&acts, "hello 2")["from"]["record"],
            want.as_str(),
            "created once, found the second time"
        );
        let rec: Value =
            serde_json::from_str(&e.ok(&["records", "show", &want, "--json"])).unwrap();
        assert_eq!(rec["name"], "Nina Newcomer");
        assert_eq!(rec["owner"], "systemuser:alice");
    }
    let e = setup("");
    e.imap("alice").append(
        "INBOX/Projects",
        b"From: nobody@new.org\r\nSubject: kept\r\nMessage-ID: <k@n>\r\n\r\nhi\r\n",
    );
    e.ok(&["sync"]);
    let a = one(&e.activities(), "kept");
    assert!(
        a["from"]["record"].is_null(),
        "keep (the default) leaves it as addressused"
    );
    assert_eq!(a["from"]["address"], "nobody@new.org");
}

#[test]
fn security_record_the_owner_cannot_write_is_tracked_unlinked_with_an_alert() {
    let e = env();
    let mut c = e.imap("alice");
    for f in ["Deals", "Deals/Private", "Deals/Shared", "Deals/Team"] {
        c.create(f);
    }
    e.write_config(&Config::new().mailbox(e.mailbox("alice").rules([
        Rule::record("Deals/Private", "account:private"),
        Rule::record("Deals/Shared", "account:open"),
        Rule::record("Deals/Team", "account:team"),
    ])));
    e.import_records(
        r#"{"type":"systemuser","key":"alice","name":"Alice","emails":["alice@example.com"],"teams":["sales"]}
{"type":"systemuser","key":"bob","name":"Bob","emails":["bob@example.com"]}
{"type":"account","key":"private","name":"Private","owner":"bob"}
{"type":"account","key":"open","name":"Open","owner":"bob","shared":true}
{"type":"account","key":"team","name":"Team","owner":"bob","teams":["sales"]}
"#,
    );
    let o = e.run(&["rules", "check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(
            "[FAIL] alice: rule `Deals/Private`: systemuser:alice may not write account:private"
        ),
        "{out}"
    );
    assert!(out.contains("[ok] alice: rule `Deals/Shared`"), "{out}");
    assert!(out.contains("[ok] alice: rule `Deals/Team`"), "{out}");
    c.append(
        "Deals/Private",
        &message(
            "x@y.com",
            "alice@example.com",
            "private deal",
            Some("<pd@x>"),
        ),
    );
    c.append(
        "Deals/Shared",
        &message(
            "x@y.com",
            "alice@example.com",
            "shared deal",
            Some("<sd@x>"),
        ),
    );
    c.append(
        "Deals/Team",
        &message("x@y.com", "alice@example.com", "team deal", Some("<td@x>")),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let p = one(&acts, "private deal");
    assert!(p["regarding"].is_null());
    assert!(p["alerts"][0]["message"]
        .as_str()
        .unwrap()
        .contains("may not write account:private"));
    assert_eq!(one(&acts, "shared deal")["regarding"], "account:open");
    assert_eq!(one(&acts, "team deal")["regarding"], "account:team");
}

#[test]
fn attachments_are_deduplicated_blobs_and_come_back_byte_for_byte() {
    let e = setup("");
    let raw = std::fs::read(fixtures_dir().join("006-attachment-pdf.eml")).unwrap();
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &raw);
    // The same file in another message: stored once.
    let other = String::from_utf8_lossy(&raw).replace(
        "<fixture-006@example.com>",
        "<fixture-006-copy@example.com>",
    );
    c.append("INBOX/Projects", other.as_bytes());
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(acts.len(), 2);
    let att = &acts[0]["attachments"][0];
    assert!(att["skipped"].is_null());
    let id = acts[0]["id"].to_string();
    let o = e.run(&["activities", "attachment", &id, "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout.len() as u64, att["size"].as_u64().unwrap());
    assert!(o.stdout.starts_with(b"%PDF"), "a real PDF");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&o.stdout)),
        att["sha256"].as_str().unwrap()
    );
    // Stored once, though two messages carry it: PostgreSQL's blobs table has one row.
    if let Some(pg) = &e.pg {
        let mut sql = postgres::Client::connect(pg.url(), postgres::NoTls).unwrap();
        let row = sql
            .query_one(
                "SELECT count(*), sum(length(bytes))::bigint FROM blobs",
                &[],
            )
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "one blob row");
        assert_eq!(row.get::<_, i64>(1) as u64, att["size"].as_u64().unwrap());
        return;
    }
    // Stored once: the packs hold the file's bytes one time, though two messages carry it.
    let packed: u64 = walk(&e.work.join("data/blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(packed, att["size"].as_u64().unwrap());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn attachments_over_the_size_limit_or_with_blocked_extensions_are_listed_as_skipped() {
    let e = setup("max_attachment_size = 1000");
    let big = std::fs::read(fixtures_dir().join("006-attachment-pdf.eml")).unwrap();
    let exe = b"From: x@y.com\r\nTo: alice@example.com\r\nSubject: tool\r\nMessage-ID: <exe@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream; name=setup.exe\r\nContent-Disposition: attachment; filename=setup.exe\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n";
    let mut c = e.imap("alice");
    c.append("INBOX/Tracked/Acme", &big);
    c.append("INBOX/Tracked/Acme", exe);
    e.ok(&["sync"]);
    let acts = e.activities();
    let pdf = acts
        .iter()
        .find(|a| a["message_id"] == "<fixture-006@example.com>")
        .unwrap();
    assert!(
        pdf["attachments"][0]["skipped"]
            .as_str()
            .unwrap()
            .contains("over max_attachment_size"),
        "{pdf}"
    );
    assert!(one(&acts, "tool")["attachments"][0]["skipped"]
        .as_str()
        .unwrap()
        .contains("blocked extension .exe"));
    let o = e.run(&[
        "activities",
        "attachment",
        &one(&acts, "tool")["id"].to_string(),
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("was not stored"));
}

#[test]
fn other_mail_in_inbox_and_sent_follows_track_other_mail() {
    for (filter, want) in [
        ("none", vec![]),
        ("replies", vec!["reply in inbox"]),
        ("known", vec!["from carol"]),
        ("all", vec!["from carol", "reply in inbox", "stranger"]),
    ] {
        let e = setup(&format!("track_other_mail = \"{filter}\""));
        let mut c = e.imap("alice");
        c.append(
            "INBOX/Tracked/Acme",
            &msg("Message-ID: <o1@acme.com>\r\n", "tracked first"),
        );
        c.append("INBOX", b"From: stranger@nowhere.org\r\nTo: alice@example.com\r\nSubject: stranger\r\nMessage-ID: <o2@n>\r\n\r\nhi\r\n");
        c.append("INBOX", b"From: carol@globex.com\r\nTo: alice@example.com\r\nSubject: from carol\r\nMessage-ID: <o3@g>\r\n\r\nhi\r\n");
        c.append("INBOX", b"From: stranger@nowhere.org\r\nTo: alice@example.com\r\nSubject: reply in inbox\r\nMessage-ID: <o4@n>\r\nIn-Reply-To: <o1@acme.com>\r\n\r\nhi\r\n");
        e.ok(&["sync"]);
        let acts = e.activities();
        let mut got: Vec<&str> = acts
            .iter()
            .filter(|a| a["source"]["folder"] == "INBOX")
            .map(|a| a["subject"].as_str().unwrap())
            .collect();
        got.sort();
        // `known` wants a party that is a contact, account or lead: alice is a user, the
        // stranger nobody, so only Carol's mail qualifies.
        assert_eq!(got, want, "track_other_mail = {filter}");
        if filter == "replies" {
            assert_eq!(
                one(&acts, "reply in inbox")["regarding"],
                "account:acme",
                "a tracked reply inherits the regarding"
            );
        }
    }
}

#[test]
fn write_back_sets_the_tracked_keyword_and_can_be_turned_off() {
    for (setting, expect) in [("", true), ("tracked_keyword = false", false)] {
        let e = setup(setting);
        let mut c = e.imap("alice");
        c.append(
            "INBOX/Tracked/Acme",
            &msg("Message-ID: <w1@acme.com>\r\n", "write back"),
        );
        e.ok(&["sync"]);
        assert_eq!(e.activities().len(), 1);
        let flags = c.flags("INBOX/Tracked/Acme");
        assert_eq!(
            flags[0].contains("$Tracked"),
            expect,
            "{setting}: {flags:?}"
        );
        assert!(!flags[0].contains("\\Seen"), "never marked read: {flags:?}");
    }
    let e = setup("");
    let check = e.ok(&["check"]);
    assert!(
        check.contains("write-back: the server stores keywords"),
        "{check}"
    );
}
