//! The web pages in a real browser (issue 19): headless Chromium, driven over WebDriver, against
//! `foldertrack run` and a real Dovecot. `tests/web.rs` checks the HTTP answers; this checks
//! what a person gets: the login form and its cookie, a dragged mail appearing on the record's
//! page, a subject with markup shown as text, an attachment downloaded by the browser byte for
//! byte, and a hostile HTML mail that runs no script and loads nothing from elsewhere.
//!
//! With `FOLDERTRACK_SCREENSHOTS=DIR` the first test also saves the screenshots of `docs/`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::browser::{self, Browser};
use testkit::*;

const TOKEN: &str = "browser-test-token";

/// The attachment of the first test: a UTF-8 BOM, CRLF lines and non-ASCII bytes, so that any
/// re-encoding on the way to the disk shows.
const CSV: &[u8] = b"\xEF\xBB\xBFitem;price\r\nwidget;12,50 \xE2\x82\xAC\r\nM\xC3\xBCller;0\r\n";

/// An agent tracking alice's `INBOX/Tracked/Acme` for account:acme and serving the pages on a
/// free port; the pages' base URL.
fn serve(e: &Env) -> (Agent, String) {
    let (agent, addr) = e.serve_web_pages(TOKEN);
    (agent, format!("http://{addr}"))
}

/// The page's visible text.
fn text(b: &Browser) -> String {
    b.text(&b.find("body"))
}

/// Waits until the page that a click or a navigation started has loaded.
fn loaded(b: &Browser) {
    wait_for("the page to load", 30, || {
        b.execute("return document.readyState", vec![]) == "complete"
    });
}

/// Reloads `url` until its visible text contains `want` (the agent tracks within a second or
/// two; 30 s is the bound).
fn reload_until(b: &Browser, url: &str, want: &str) {
    wait_for(&format!("{want:?} on {url}"), 30, || {
        b.goto(url);
        text(b).contains(want)
    });
}

/// Logs in through the form, as a person does, and checks where it lands.
fn log_in(b: &Browser, base: &str) {
    b.goto(&format!("{base}/records/account/acme"));
    assert_eq!(b.title(), "Log in · foldertrack", "{}", b.page_source());
    browser::screenshot_to_env_dir(b, "web-login.png");
    b.send_keys(&b.find("input[name=token]"), TOKEN);
    b.click(&b.find("button[type=submit]"));
    wait_for("the landing page after the login", 30, || {
        b.url() == format!("{base}/")
    });
    loaded(b);
    assert_eq!(b.title(), "Records · foldertrack");
}

/// A multipart mail: a text part and [`CSV`] as a base64 attachment, with markup in its subject.
fn quote_mail() -> Vec<u8> {
    use base64::Engine as _;
    let csv = base64::engine::general_purpose::STANDARD.encode(CSV);
    format!(
        "From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: Quote <b>bold</b>\r\n\
         Message-ID: <browser1@acme.com>\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe quote is attached.\r\n\
         --b\r\nContent-Type: text/csv; name=quote.csv\r\n\
         Content-Disposition: attachment; filename=quote.csv\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{csv}\r\n--b--\r\n"
    )
    .into_bytes()
}

#[test]
fn a_person_logs_in_sees_a_dragged_mail_opens_it_and_downloads_its_attachment() {
    if !browser::available() {
        return;
    }
    let e = env();
    let (_agent, base) = serve(&e);
    let b = Browser::start();
    log_in(&b, &base);
    let record = format!("{base}/records/account/acme");
    b.goto(&record);
    assert!(text(&b).contains("No email activity"), "{}", text(&b));

    e.imap("alice").append("INBOX/Tracked/Acme", &quote_mail());
    reload_until(&b, &record, "Quote <b>bold</b>");
    assert!(
        b.find_all("main b").is_empty(),
        "the subject's markup is text, not elements: {}",
        b.page_source()
    );
    browser::screenshot_to_env_dir(&b, "web-record.png");

    b.click(&b.find_by("link text", "Quote <b>bold</b>"));
    wait_for("the activity page", 30, || b.url().contains("/activities/"));
    loaded(&b);
    assert_eq!(b.text(&b.find("h1")), "Quote <b>bold</b>");
    assert!(text(&b).contains("The quote is attached."), "{}", text(&b));
    browser::screenshot_to_env_dir(&b, "web-activity.png");

    b.click(&b.find_by("link text", "quote.csv"));
    assert_eq!(b.downloaded("quote.csv", 30), CSV);

    b.goto(&format!("{base}/mailboxes"));
    assert!(text(&b).contains("alice"), "{}", text(&b));
    browser::screenshot_to_env_dir(&b, "web-mailboxes.png");
}

/// A listener on loopback that counts the connections made to it: a page that loads anything
/// from it has reached outside its own origin.
struct Beacon {
    port: u16,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Beacon {
    /// Listens, accepting from a thread (non-blocking, so that drop can stop it); each
    /// connection is counted, then answered with a tiny 200 so that a browser navigating to it
    /// (the positive control) gets a page.
    fn start() -> Beacon {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the beacon");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = c.read(&mut buf);
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nbeacon");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Beacon {
            port,
            hits,
            stop,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An HTML-only mail that tries everything a page could do with it: a script that marks the
/// window and the title, an image, a stylesheet, and an image in the subject too.
fn hostile_mail(beacon: u16) -> Vec<u8> {
    format!(
        "From: bob@acme.com\r\nTo: alice@example.com\r\n\
         Subject: Hostile <img src=\"http://127.0.0.1:{beacon}/subject.png\">\r\n\
         Message-ID: <hostile@acme.com>\r\nDate: Mon, 2 Sep 2024 11:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n\
         <html><head><link rel=stylesheet href=\"http://127.0.0.1:{beacon}/x.css\">\
         <script>window.pwned=1;document.title='pwned'</script></head>\
         <body><p>Hello from the hostile mail.</p>\
         <img src=\"http://127.0.0.1:{beacon}/img.png\"></body></html>\r\n"
    )
    .into_bytes()
}

/// The loaded page ran none of the mail's script and made no request beyond its own origin:
/// the script's marks (`window.pwned`, the title) are absent, the DOM holds no image, script or foreign stylesheet, the
/// browser's own resource list is the stylesheet alone, and after a further second the beacon
/// has still seen nobody.
fn assert_inert(b: &Browser, beacon: &Beacon, base: &str) {
    loaded(b);
    assert_eq!(b.execute("return typeof window.pwned", vec![]), "undefined");
    assert!(!b.title().contains("pwned"), "{}", b.title());
    let count = |css: &str| b.find_all(css).len();
    assert_eq!(count("img, script, iframe, object, embed"), 0);
    assert_eq!(count("link"), 1, "only the stylesheet: {}", b.page_source());
    let loads = b.execute(
        "return performance.getEntriesByType('resource').map(e => e.name)",
        vec![],
    );
    assert_eq!(loads, serde_json::json!([format!("{base}/style.css")]));
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        assert_eq!(beacon.hits(), 0, "the page reached the beacon");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hostile_html_mail_runs_no_script_and_loads_nothing_in_the_browser() {
    if !browser::available() {
        return;
    }
    let e = env();
    let (_agent, base) = serve(&e);
    let beacon = Beacon::start();
    let b = Browser::start();
    log_in(&b, &base);
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &hostile_mail(beacon.port));
    let record = format!("{base}/records/account/acme");
    // The timeline shows the subject and a preview of the body: both as text.
    reload_until(&b, &record, "Hostile <img");
    assert_inert(&b, &beacon, &base);

    b.click(&b.find_by("partial link text", "Hostile <img"));
    wait_for("the activity page", 30, || b.url().contains("/activities/"));
    assert_inert(&b, &beacon, &base);
    let title = b.title();
    assert!(title.starts_with("Hostile <img"), "{title}");
    assert!(
        text(&b).contains("Hello from the hostile mail."),
        "{}",
        text(&b)
    );

    // The positive control: the same browser does reach the beacon when sent there, so its
    // silence above means the page asked for nothing.
    b.goto(&format!("http://127.0.0.1:{}/", beacon.port));
    wait_for("the browser to reach the beacon", 10, || beacon.hits() > 0);
}
