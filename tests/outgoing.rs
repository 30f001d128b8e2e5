//! Outgoing email activities (issue: SMTP send, tracking token, Sent copy, replies), against a
//! real SMTP server (aiosmtpd with STARTTLS and AUTH) that delivers over LMTP into the same
//! Dovecot: what foldertrack sends really lands in the recipient's mailbox, and the replies
//! really come back through SMTP.

use testkit::smtp::{lmtp_options, Quirks, Smtp};
use testkit::*;

/// Messages in `folder` of `user`'s mailbox.
fn count(e: &Env, user: &str, folder: &str) -> usize {
    e.imap(user).count(folder)
}

/// alice's mailbox: INBOX and Sent tracked for replies, SMTP with `smtp_table`.
fn config(e: &Env, smtp_table: String) -> Config {
    Config::new().mailbox(
        e.mailbox("alice")
            .keys("track_other_mail = \"replies\"")
            .rule(acme())
            .smtp(smtp_table),
    )
}

/// [`config`] through `smtp` (STARTTLS, our CA, alice's password), and the records.
fn setup(smtp: &Smtp, e: &Env) {
    e.write_config(&config(e, smtp.config_table()));
    e.import_records(RECORDS);
}

/// Waits until the agent's outbox runner has finished a round with nothing left to send or
/// retry, after (when `after_pending`) a round that still had something: the retry schedule
/// has run out.
fn wait_queue_done(agent: &Agent, after_pending: bool) {
    let mut pending_seen = !after_pending;
    wait_for("an outbox round with nothing left to retry", 60, || {
        let mut done = false;
        while let Ok((_, line)) = agent.lines().try_recv() {
            if line.contains("pending=true") {
                pending_seen = true;
                done = false;
            } else if line.contains("pending=false") {
                done = pending_seen;
            }
        }
        done
    });
}

fn send_args<'a>(to: &'a str, subject: &'a str) -> Vec<&'a str> {
    vec![
        "activities",
        "send",
        "--mailbox",
        "alice",
        "--to",
        to,
        "--subject",
        subject,
        "--body",
        "Hello Carol, the quote is attached.",
        "--regarding",
        "account:globex",
    ]
}

fn outbox(e: &Env) -> Vec<serde_json::Value> {
    serde_json::from_str(&e.ok(&["outbox", "list", "--json"])).unwrap()
}

#[test]
fn send_lands_in_the_recipients_mailbox_and_replies_correlate_by_header_and_by_token() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks::default());
    setup(&smtp, &e);

    // Test & Enable covers the outgoing side: STARTTLS, EHLO, AUTH.
    let check = e.run(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "[ok] outgoing: SMTP 127.0.0.1:{} (STARTTLS, logged in as alice)",
            smtp.port
        )),
        "{text}"
    );

    std::fs::write(e.work.join("quote.pdf"), b"%PDF-1.4 quote for Q3\n").unwrap();
    std::fs::write(
        e.work.join("quote.html"),
        "<p>Hello Carol, the <b>quote</b> is attached.</p>",
    )
    .unwrap();
    let mut args = send_args("carol@globex.com", "Quote for Q3");
    args.extend([
        "--attach",
        "quote.pdf",
        "--cc",
        "bob@example.com",
        "--html-file",
        "quote.html",
    ]);
    let out = e.ok(&args);
    assert!(out.contains("sent to carol@globex.com"), "{out}");
    assert!(out.contains("copy in Sent"), "{out}");

    // One activity: outgoing, regarding the record, with the token in the subject.
    let acts = e.activities();
    assert_eq!(acts.len(), 1, "{acts:#?}");
    let sent = &acts[0];
    let sent_id = sent["id"].as_u64().unwrap();
    let msgid = sent["message_id"].as_str().unwrap().to_string();
    assert_eq!(sent["direction"], "outgoing");
    assert_eq!(sent["regarding"], "account:globex");
    assert_eq!(sent["token"], "CRM:0001001");
    assert_eq!(sent["subject"], "Quote for Q3 CRM:0001001");
    assert_eq!(sent["attachments"][0]["name"], "quote.pdf");
    assert_eq!(sent["to"][0]["address"], "carol@globex.com");
    assert_eq!(sent["cc"][0]["address"], "bob@example.com");
    assert_eq!(sent["cc"][0]["record"], "systemuser:bob");

    // Really delivered, once; the Sent copy is there and read.
    assert_eq!(smtp.accepted(), vec![msgid.clone()]);
    assert_eq!(count(&e, "carol", "INBOX"), 1);
    assert_eq!(count(&e, "bob", "INBOX"), 1, "Cc delivered too");
    assert_eq!(count(&e, "alice", "Sent"), 1);
    let flags = e.imap("alice").flags("Sent");
    assert!(flags[0].contains("\\Seen"), "{flags:?}");

    // The watcher sees the Sent copy: same activity, one more source, not a second activity.
    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(acts.len(), 1, "the Sent copy merged: {acts:#?}");
    assert_eq!(acts[0]["other_sources"][0]["folder"], "Sent");
    let shown = e.ok(&["activities", "show", &sent_id.to_string()]);
    assert!(shown.contains("send state: sent"), "{shown}");

    // Carol replies through the same SMTP server, with In-Reply-To (dated now: after the send).
    let now = String::from_utf8(
        std::process::Command::new("date")
            .arg("-R")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let now = now.trim();
    let reply = format!(
        "From: Carol Shaw <carol@globex.com>\r\nTo: alice@example.com\r\nSubject: RE: Quote for Q3 CRM:0001001\r\nDate: {now}\r\nMessage-ID: <reply1@globex.com>\r\nIn-Reply-To: {msgid}\r\nReferences: {msgid}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nLooks good.\r\n"
    );
    smtp.submit_as_carol("carol@globex.com", "alice@example.com", reply.as_bytes());
    // A second reply whose client dropped the threading headers: only the token is left.
    let reply2 = format!("From: Carol Shaw <carol@globex.com>\r\nTo: alice@example.com\r\nSubject: AW: RE: Quote for Q3 CRM:0001001\r\nDate: {now}\r\nMessage-ID: <reply2@globex.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nOne more thing.\r\n");
    smtp.submit_as_carol("carol@globex.com", "alice@example.com", reply2.as_bytes());
    // And unrelated mail, which `replies` leaves out.
    let other = message(
        "carol@globex.com",
        "alice@example.com",
        "Lunch?",
        Some("<lunch@globex.com>"),
    );
    smtp.submit_as_carol("carol@globex.com", "alice@example.com", &other);
    assert_eq!(count(&e, "alice", "INBOX"), 3);

    e.ok(&["sync"]);
    let acts = e.activities();
    assert_eq!(
        acts.len(),
        3,
        "two replies tracked, lunch left out: {acts:#?}"
    );
    let r1 = acts
        .iter()
        .find(|a| a["message_id"] == "<reply1@globex.com>")
        .unwrap();
    assert_eq!(r1["direction"], "incoming");
    assert_eq!(r1["correlation"]["method"], "in-reply-to");
    assert_eq!(r1["correlation"]["activity"], sent_id);
    assert_eq!(r1["regarding"], "account:globex");
    let r2 = acts
        .iter()
        .find(|a| a["message_id"] == "<reply2@globex.com>")
        .unwrap();
    assert_eq!(r2["correlation"]["method"], "token");
    assert_eq!(r2["correlation"]["activity"], sent_id);
    assert_eq!(r2["regarding"], "account:globex");

    // A reply dragged into a tracked folder: correlated, but the folder rule wins.
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    c.append(
        "INBOX/Tracked/Acme",
        reply
            .replace("<reply1@globex.com>", "<reply3@globex.com>")
            .as_bytes(),
    );
    e.ok(&["sync"]);
    let acts = e.activities();
    let r3 = acts
        .iter()
        .find(|a| a["message_id"] == "<reply3@globex.com>")
        .unwrap();
    assert_eq!(r3["correlation"]["activity"], sent_id);
    assert_eq!(r3["regarding"], "account:acme", "the folder rule wins");

    // The next send takes the next token.
    let out = e.ok(&send_args("carol@globex.com", "Follow-up"));
    assert_eq!(smtp.accepted().len(), 5, "2 sends and Carol's 3 messages");
    assert!(out.contains("sent to"), "{out}");
    let acts = e.activities();
    let f = acts.iter().find(|a| a["token"] == "CRM:0001002");
    assert!(f.is_some(), "{acts:#?}");
}

#[test]
fn server_down_queues_then_the_agent_sends_exactly_once() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    // Down: its port is bound but not listening (connection refused). When it comes back it
    // answers the first DATA with 451.
    smtp.start_down(&Quirks {
        tempfail: 1,
        ..Default::default()
    });
    e.write_config(&config(&e, smtp.config_table()).metrics());
    e.import_records(RECORDS);
    let agent = e.start_agent_with(&e.agent().watch(&["outbox round done"]));

    // Through the running agent (control socket): queued, not lost.
    let out = e.ok(&send_args("carol@globex.com", "Contract draft"));
    assert!(out.contains("queued"), "{out}");
    let q = outbox(&e);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["state"], "queued");
    assert!(
        q[0]["last_error"].as_str().unwrap().contains("127.0.0.1"),
        "{q:#?}"
    );
    let status = e.ok(&["status"]);
    assert!(status.contains("outbox: 1 queued"), "{status}");

    // The agent retries while the server is down (the send above was the first attempt)…
    wait_for("a retry while the server is down", 30, || {
        outbox(&e)[0]["attempts"].as_u64().unwrap() >= 2
    });
    assert_eq!(outbox(&e)[0]["state"], "queued");
    // …then the server comes back, answering the first DATA with 451: one more retry, then sent.
    smtp.come_up();
    wait_for(
        "the queued send to go out and its copy into Sent",
        60,
        || {
            let q = outbox(&e);
            q[0]["state"] == "sent" && q[0]["sent_copy"] == "Sent"
        },
    );
    let q = outbox(&e);
    assert!(q[0]["attempts"].as_u64().unwrap() >= 3, "{q:#?}");
    assert_eq!(q[0]["sent_copy"], "Sent");
    // Exactly once, once the queue has nothing left to retry.
    wait_queue_done(&agent, true);
    assert_eq!(smtp.accepted().len(), 1, "{:?}", smtp.accepted());
    assert_eq!(count(&e, "carol", "INBOX"), 1);
    assert_eq!(count(&e, "alice", "Sent"), 1);
    // The outbox is on the metrics endpoint too.
    let scrape = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(agent.metrics_addr()).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let line = |state: &str| {
        format!("foldertrack_outbox_messages{{mailbox=\"alice\",state=\"{state}\"}} ")
    };
    assert!(scrape.contains(&format!("{}1\n", line("sent"))), "{scrape}");
    assert!(
        scrape.contains(&format!("{}0\n", line("queued"))),
        "{scrape}"
    );
    assert!(agent.stop().success());
}

#[test]
fn a_permanent_refusal_fails_the_activity_with_the_servers_answer() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks {
        reject: Some("nobody@".into()),
        ..Default::default()
    });
    setup(&smtp, &e);
    let o = e.run(&send_args("nobody@globex.com", "Hello?"));
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("550") && err.contains("mailbox unavailable"),
        "{err}"
    );
    let q = outbox(&e);
    assert_eq!(q[0]["state"], "failed");
    let id = q[0]["activity"].as_u64().unwrap().to_string();
    let shown = e.ok(&["activities", "show", &id]);
    assert!(shown.contains("send state: failed"), "{shown}");
    assert!(shown.contains("550"), "{shown}");
    let st = e.status();
    let alerts = st["alerts"].to_string();
    assert!(alerts.contains("was not sent"), "{alerts}");
    assert!(smtp.accepted().is_empty());
    // Nothing to retry by itself; an admin can cancel it.
    let out = e.ok(&["outbox", "cancel", &id]);
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(outbox(&e)[0]["state"], "cancelled");
}

#[test]
fn implicit_tls_sends_and_an_unknown_ca_is_refused() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks {
        implicit_tls: true,
        ..Default::default()
    });
    let password = "password_file = \"password\"";
    e.write_config(&config(&e, smtp.table("implicit", true, password)));
    e.import_records(RECORDS);
    let out = e.ok(&send_args("carol@globex.com", "Over implicit TLS"));
    assert!(out.contains("sent to carol@globex.com"), "{out}");
    assert_eq!(smtp.accepted().len(), 1);
    // Without our CA the server's certificate is refused: queued, never sent in the clear.
    e.write_config(&config(&e, smtp.table("implicit", false, password)));
    let o = e.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[FAIL] outgoing: SMTP 127.0.0.1"), "{out}");
    let out = e.ok(&send_args("carol@globex.com", "Untrusted"));
    assert!(out.contains("queued"), "{out}");
    assert_eq!(smtp.accepted().len(), 1);
}

#[test]
fn wrong_smtp_password_fails_check_and_keeps_the_message_queued() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks::default());
    // The IMAP side logs in; the SMTP side has the file with the wrong password.
    let wrong = format!("password_file = \"{}\"", testkit::env::WRONG_PASSWORD_FILE);
    e.write_config(&config(&e, smtp.table("starttls", true, &wrong)));
    e.import_records(RECORDS);
    let o = e.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[FAIL] outgoing: SMTP login to 127.0.0.1") && out.contains("as alice failed"),
        "{out}"
    );
    assert!(!out.contains("wrong"), "the password is never shown: {out}");
    let out = e.ok(&send_args("carol@globex.com", "Hi"));
    assert!(
        out.contains("queued"),
        "an auth failure is the mailbox's, not the message's: {out}"
    );
    let st = e.ok(&["status"]);
    assert!(st.contains("outgoing mail is stuck"), "{st}");
}

/// The crash the outbox is built for: the server took the message (250 after DATA) and the
/// process died before recording it. Restarted, foldertrack must not send it again. When the
/// Sent folder has the copy (servers like Gmail and Exchange file it themselves) the activity
/// is marked sent; when it does not, the send is in doubt and waits for an admin.
#[cfg(feature = "failpoints")]
#[test]
fn killed_right_after_data_is_never_sent_twice() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks::default());
    setup(&smtp, &e);
    let crash = |subject: &str| {
        let o = e
            .command()
            .args(send_args("carol@globex.com", subject))
            .env("FOLDERTRACK_FAIL_AFTER_DATA", "1")
            .output()
            .unwrap();
        assert!(!o.status.success(), "the failpoint aborts the process");
    };
    crash("First offer");
    crash("Second offer");
    assert_eq!(smtp.accepted().len(), 2, "the server took both");
    let q = outbox(&e);
    assert!(q.iter().all(|x| x["state"] == "sending"), "{q:#?}");
    // The first one's copy is in Sent, as a server that files sent mail itself would have it.
    let first_id = q[0]["message_id"].as_str().unwrap();
    e.imap("alice").append(
        "Sent",
        &message(
            "alice@example.com",
            "carol@globex.com",
            "First offer CRM:0001001",
            Some(first_id),
        ),
    );

    let agent = e.start_agent_with(&e.agent().watch(&["outbox round done"]));
    wait_for("the interrupted sends to be settled", 30, || {
        outbox(&e).iter().all(|x| x["state"] != "sending")
    });
    let q = outbox(&e);
    assert_eq!(q[0]["state"], "sent", "found in Sent: {q:#?}");
    assert_eq!(q[1]["state"], "unknown", "in doubt: {q:#?}");
    // The queue has nothing left to retry (a send in doubt is not retried): nothing was sent
    // again.
    wait_queue_done(&agent, false);
    assert_eq!(smtp.accepted().len(), 2, "{:?}", smtp.accepted());
    assert_eq!(count(&e, "carol", "INBOX"), 2);
    let st = e.ok(&["status"]);
    assert!(st.contains("may or may not have been sent"), "{st}");
    // The admin checked with the customer: it did not arrive after all, so it goes again, once.
    let id = q[1]["activity"].as_u64().unwrap().to_string();
    let out = e.ok(&["outbox", "retry", &id]);
    assert!(out.contains("sent to carol@globex.com"), "{out}");
    assert_eq!(smtp.accepted().len(), 3);
    assert_eq!(outbox(&e)[1]["state"], "sent");
    assert!(agent.stop().success());
}

/// XOAUTH2 on the SMTP side (Exchange Online and Gmail): the mailbox's own token source, the
/// token never shown, and a refused token refreshed once from `token_command`.
#[test]
fn smtp_xoauth2_uses_the_mailbox_token_and_refreshes_a_refused_one_once() {
    let e = env_with(lmtp_options());
    let mut smtp = Smtp::new(&e);
    smtp.start(&Quirks {
        oauth_tokens: vec!["tok-good".into()],
        ..Default::default()
    });
    // The command's first token is stale (tok-1, refused), every later one good; it counts its runs.
    let counter = e.work.join("n");
    let command = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; if [ $n = 0 ]; then echo tok-1; else echo tok-good; fi",
        c = counter.display()
    );
    e.write_config(
        &Config::new().mailbox(
            e.mailbox("alice")
                .password_file(None)
                .keys(&format!("auth = \"xoauth2\"\ntoken_command = {command:?}"))
                .smtp(smtp.table("starttls", true, "auth = \"xoauth2\"")),
        ),
    );
    e.import_records(RECORDS);
    let o = e.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "[ok] outgoing: SMTP 127.0.0.1:{} (STARTTLS, logged in as alice with XOAUTH2)",
            smtp.port
        )),
        "{out}"
    );
    assert!(!out.contains("tok-"), "tokens are never shown: {out}");
    // The IMAP side of this Dovecot has no OAuth2 passdb: its login fails, and says so.
    assert!(out.contains("[FAIL] connect and login"), "{out}");
    let n: u32 = std::fs::read_to_string(&counter)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SMTP first: tok-1 refused, one refresh gave tok-good (accepted); then IMAP: the cached
    // token refused by Dovecot, one refresh, refused too: one refresh per login, no loop.
    assert_eq!(n, 3);

    let out = e.ok(&send_args("carol@globex.com", "Over OAuth"));
    assert!(out.contains("sent to carol@globex.com"), "{out}");
    assert_eq!(smtp.accepted().len(), 1);
    assert_eq!(count(&e, "carol", "INBOX"), 1);
}
