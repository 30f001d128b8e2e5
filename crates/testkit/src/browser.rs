//! A real headless browser for the web pages' tests: Chromium driven by `chromedriver` over
//! WebDriver (W3C). What curl cannot show is checked in the browser that people use: the login
//! cookie round trip, what escaping looks like once rendered, that no script in a mail runs and
//! nothing loads from elsewhere, and that a download lands byte for byte.
//!
//! The client is written here, on `std::net::TcpStream` and serde_json, rather than taken from a
//! crate: it needs a dozen endpoints, one request per connection (`Connection: close`), and the
//! kit already has everything else. Callers gate on [`available`] (`chromium` and
//! `chromedriver`, as Debian installs them).

use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Chromium binary the session starts (Debian's launcher script).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The key of an element reference in W3C WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long one WebDriver command may take before the test fails instead of hanging (a page
/// load is bounded by the session's own 30 s timeout, below this).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Whether the browser tests can run: `chromium` and `chromedriver` are installed. Under CI
/// a missing one fails the test instead ([`crate::require_tool`]).
pub fn available() -> bool {
    crate::require_tool("chromium") && crate::require_tool("chromedriver")
}

/// A headless Chromium session behind its own `chromedriver`. Dropping it ends the session
/// (which closes Chromium) and kills the driver, so no browser outlives its test.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    downloads: tempfile::TempDir,
    // The profile is a fresh directory each time: no cookie, cache or history of another run.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free port, waits until it is ready and opens a session with a
    /// fresh profile and downloads allowed into [`Browser::downloads`].
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let tmp = |prefix: &str| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .expect("temp dir")
        };
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            downloads: tmp("ft-downloads-"),
            profile: tmp("ft-chromium-"),
        };
        b.wait_ready();
        b.session = b.new_session();
        b
    }

    /// Polls the driver's `/status` until it says ready (20 s), failing early if it exited.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!("chromedriver exited before it was ready: {status}");
            }
            let ready = request(self.port, "GET", "/status", None)
                .is_ok_and(|(_, v)| v["value"]["ready"] == true);
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on port {} not ready within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A session of headless Chromium: no sandbox (containers, root in CI), no GPU, nothing
    /// fetched in the background that could be mistaken for the page's traffic, downloads
    /// saved without asking: the two download preferences are enough in headless mode (checked
    /// with Chromium 156; DevTools' `Page.setDownloadBehavior` is not needed).
    fn new_session(&self) -> String {
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", self.profile.path().display()),
            "--window-size=1280,900",
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"pageLoad": 30_000, "script": 10_000, "implicit": 0},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": args,
                "prefs": {
                    "download.default_directory": self.downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let v = self.command("POST", "/session", Some(&caps));
        v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {v}"))
            .to_string()
    }

    /// Where downloads land.
    pub fn downloads(&self) -> &Path {
        self.downloads.path()
    }

    /// Waits up to `secs` for the download `name` to be complete (no `.crdownload` left in the
    /// directory) and returns its bytes.
    pub fn downloaded(&self, name: &str, secs: u64) -> Vec<u8> {
        let path = self.downloads().join(name);
        crate::wait_for(&format!("the download {name}"), secs, || {
            let partial = std::fs::read_dir(self.downloads())
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"))
                })
                .unwrap_or(true);
            path.is_file() && !partial
        });
        std::fs::read(&path).expect("read the download")
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.session_command("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The current page's URL.
    pub fn url(&self) -> String {
        string(self.session_command("GET", "/url", None))
    }

    /// The current page's title.
    pub fn title(&self) -> String {
        string(self.session_command("GET", "/title", None))
    }

    /// The first element matching the CSS selector (fails when there is none).
    pub fn find(&self, css: &str) -> String {
        self.find_by("css selector", css)
    }

    /// The first element found with a W3C locator strategy (`css selector`, `link text`,
    /// `partial link text`, `xpath`).
    pub fn find_by(&self, using: &str, value: &str) -> String {
        let body = json!({"using": using, "value": value});
        element_id(&self.session_command("POST", "/element", Some(&body)))
    }

    /// Every element matching the CSS selector, in document order.
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let body = json!({"using": "css selector", "value": css});
        match self.session_command("POST", "/elements", Some(&body)) {
            Value::Array(els) => els.iter().map(element_id).collect(),
            other => panic!("WebDriver: elements answered {other}"),
        }
    }

    /// Clicks the element (scrolled into view, as a person would).
    pub fn click(&self, el: &str) {
        self.session_command("POST", &format!("/element/{el}/click"), Some(&json!({})));
    }

    /// Types `text` into the element.
    pub fn send_keys(&self, el: &str, text: &str) {
        let body = json!({ "text": text });
        self.session_command("POST", &format!("/element/{el}/value"), Some(&body));
    }

    /// The element's rendered text (what a person reads, entities decoded).
    pub fn text(&self, el: &str) -> String {
        string(self.session_command("GET", &format!("/element/{el}/text"), None))
    }

    /// The page's DOM serialised as HTML.
    pub fn page_source(&self) -> String {
        string(self.session_command("GET", "/source", None))
    }

    /// Runs `script` (a function body: `return …` gives the result) in the page.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({"script": script, "args": args});
        self.session_command("POST", "/execute/sync", Some(&body))
    }

    /// The visible viewport as PNG bytes.
    pub fn screenshot_png(&self) -> Vec<u8> {
        let b64 = string(self.session_command("GET", "/screenshot", None));
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .expect("a base64 screenshot")
    }

    /// A command on this session: `path` is relative to `/session/{id}`.
    fn session_command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    /// A WebDriver command's `value`; an error answer panics with WebDriver's message.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (code, v) = request(self.port, method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if code != 200 || value.get("error").is_some() {
            panic!(
                "WebDriver {method} {path}: {} ({code}): {}",
                value["error"].as_str().unwrap_or("error"),
                value["message"].as_str().unwrap_or(&v.to_string()),
            );
        }
        value
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request(self.port, "DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A port nothing listens on now (bound, then released for chromedriver to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on loopback")
        .port()
}

fn string(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => panic!("WebDriver: expected a string, got {other}"),
    }
}

fn element_id(v: &Value) -> String {
    v[ELEMENT]
        .as_str()
        .unwrap_or_else(|| panic!("WebDriver: not an element reference: {v}"))
        .to_string()
}

/// One HTTP/1.1 request to the driver on its own connection: (status code, JSON body).
///
/// The body is read by its `Content-Length` (or its chunks), not until the server closes:
/// chromedriver answers `Connection: close` but leaves the socket open.
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let (code, payload) = read_response(&mut BufReader::new(s))?;
    let v = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&payload).map_err(|e| bad(&format!("not JSON: {e}")))?
    };
    Ok((code, v))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// An HTTP answer: (status code, body), the body by `Content-Length`, chunks, or to the end.
fn read_response(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(&format!("no status line: {line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        // chromedriver writes `Content-Length:252`, without the space.
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = Some(value.parse().map_err(|_| bad("a bad Content-Length"))?);
        } else if name == "transfer-encoding" {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    match (chunked, length) {
        (true, _) => body = dechunk(r)?,
        (false, Some(n)) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        (false, None) => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok((code, body))
}

/// A chunked body's bytes (chromedriver sends `Content-Length` today; this keeps a future
/// driver from hanging the tests).
fn dechunk(r: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let size = line
            .split(';')
            .next()
            .and_then(|n| usize::from_str_radix(n.trim(), 16).ok())
            .ok_or_else(|| bad(&format!("a bad chunk size: {line:?}")))?;
        if size == 0 {
            return Ok(out);
        }
        let start = out.len();
        out.resize(start + size, 0);
        r.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

/// Saves a screenshot of the current page as `DIR/NAME` when `FOLDERTRACK_SCREENSHOTS=DIR` is
/// set (the PNGs in `docs/` are made this way); otherwise does nothing.
pub fn screenshot_to_env_dir(b: &Browser, name: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FOLDERTRACK_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    let path = dir.join(name);
    std::fs::write(&path, b.screenshot_png()).expect("write the screenshot");
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::read_response;

    #[test]
    fn answers_are_read_by_length_or_by_chunks_without_waiting_for_the_close() {
        let mut by_length: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length:7\r\nConnection:close\r\n\r\n{\"a\":1}trailing";
        let (code, body) = read_response(&mut by_length).unwrap();
        assert_eq!((code, &body[..]), (200, &b"{\"a\":1}"[..]));
        let mut chunked: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
            4\r\n{\"a\"\r\n3;x=1\r\n:1}\r\n0\r\n\r\n";
        let (code, body) = read_response(&mut chunked).unwrap();
        assert_eq!((code, &body[..]), (404, &b"{\"a\":1}"[..]));
        let mut short: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nshort";
        assert!(read_response(&mut short).is_err());
    }
}
