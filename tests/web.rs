//! The web pages served by `foldertrack run` against a real Dovecot: a mail dragged into a
//! tracked folder is on its record's page at the next load, opens, and its attachment
//! downloads byte for byte; the mailbox page shows the worker. (In a real browser:
//! tests/browser.rs.)

use std::net::SocketAddr;
use testkit::*;

const TOKEN: &str = "web-test-token";

/// GET `path` with the bearer token: (status, head, body).
fn page(addr: SocketAddr, path: &str) -> (u16, String, String) {
    testkit::http::raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn a_dragged_mail_is_on_its_records_page_at_the_next_load_and_its_attachment_downloads() {
    let e = env();
    let (_agent, addr) = e.serve_web_pages(TOKEN);
    let (code, _, body) = page(addr, "/records/account/acme");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("No email activity"), "{body}");
    let anonymous = testkit::http::raw(
        addr,
        "GET /records/account/acme HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(anonymous.0, 401);

    let mail = "From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: Quote <draft>\r\nMessage-ID: <web1@acme.com>\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe quote is attached.\r\n--b\r\nContent-Type: text/csv; name=quote.csv\r\nContent-Disposition: attachment; filename=quote.csv\r\n\r\nitem,price\r\nwidget,12\r\n--b--\r\n";
    e.imap("alice")
        .append("INBOX/Tracked/Acme", mail.as_bytes());
    wait_for("the mail on the record's page", 30, || {
        page(addr, "/records/account/acme")
            .2
            .contains("Quote &lt;draft&gt;")
    });
    let id = e.activities()[0]["id"].to_string();
    let (code, _, act) = page(addr, &format!("/activities/{id}"));
    assert_eq!(code, 200);
    assert!(
        act.contains("The quote is attached.") && act.contains("quote.csv"),
        "{act}"
    );
    let (code, head, bytes) = page(addr, &format!("/activities/{id}/attachments/1"));
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-disposition: attachment"),
        "{head}"
    );
    assert_eq!(bytes, "item,price\r\nwidget,12");
    // The mailbox page shows what the worker in this agent is doing, and each folder's lag.
    wait_for("the worker idle on the mailbox page", 30, || {
        let (_, _, mb) = page(addr, "/mailboxes/alice");
        mb.contains("<span class=\"state\">idle</span>") && mb.contains("caught up")
    });
}

/// `foldertrack web` serves the pages without an agent (a reader of what was tracked), and
/// refuses to start without a `[web]` table or without its token.
#[test]
fn the_web_command_serves_the_pages_without_an_agent() {
    use std::io::BufRead;
    let e = env();
    e.setup(
        &["INBOX/Tracked", "INBOX/Tracked/Acme"],
        &Config::new().mailbox(e.mailbox("alice").rule(acme())),
    );
    let no_table = e.run(&["web"]);
    assert_ne!(no_table.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&no_table.stderr).contains("[web]"));
    e.write_config(
        &Config::new()
            .top("[web]\nlisten = \"127.0.0.1:0\"\n")
            .mailbox(e.mailbox("alice").rule(acme())),
    );
    let no_token = e
        .command()
        .arg("web")
        .env_remove("FOLDERTRACK_WEB_TOKEN")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("FOLDERTRACK_WEB_TOKEN"),
        "{no_token:?}"
    );
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &mail("read here", "<rh@acme.com>"));
    e.ok(&["sync"]);
    let mut child = e
        .command()
        .arg("web")
        .env("FOLDERTRACK_WEB_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in stderr.lines().map_while(Result::ok) {
            if l.contains(testkit::agent::WEB_SERVING) {
                let _ = tx.send(l);
            }
        }
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(30));
    let Ok(line) = line else {
        let _ = child.kill();
        panic!("`foldertrack web` logged no address within 30 s");
    };
    let addr = testkit::agent::logged_addr(&line);
    let (code, _, body) = page(addr, "/records/account/acme");
    let (_, _, mailboxes) = page(addr, "/mailboxes");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 200);
    assert!(body.contains("read here"), "{body}");
    assert!(
        mailboxes.contains("not known here"),
        "no worker runs in `foldertrack web`: {mailboxes}"
    );
}
