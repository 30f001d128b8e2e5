//! A real SMTP submission server for the outgoing tests: `smtp_server.py` beside this crate
//! (aiosmtpd: STARTTLS required, AUTH PLAIN/LOGIN), handing each message over LMTP to the test's
//! Dovecot, so what foldertrack sends lands in the recipient's mailbox.
//!
//! The server binds its port itself (port 0: the kernel's pick) and prints it; nothing here
//! guesses a free port. A server that is "down" ([`Smtp::start_down`]) holds its port bound
//! without listening, so connections are refused and no other process can take the port before
//! it comes up ([`Smtp::come_up`]).

use crate::env::{Env, PASSWORD_FILE};
use crate::sandbox::SandboxOptions;
use crate::PASSWORD;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// The server script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp_server.py");
/// How long the server gets to print its port, and to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Dovecot options for the outgoing tests: the standard users ([`crate::cast`]) and LMTP on
/// `run/lmtp`, where RCPT `name@any.domain` is delivered to user `name`.
pub fn lmtp_options() -> SandboxOptions {
    SandboxOptions {
        extra_conf: "protocols = imap lmtp\n\
                     auth_username_format = %Ln\n\
                     postmaster_address = postmaster@example.com\n\
                     service lmtp {\n  unix_listener lmtp {\n    mode = 0666\n  }\n}\n"
            .into(),
        ..crate::cast()
    }
}

/// What the server should do wrong, on purpose.
#[derive(Default, Clone)]
pub struct Quirks {
    /// RCPT TO addresses containing this get 550.
    pub reject: Option<String>,
    /// The first N DATA get 451.
    pub tempfail: u32,
    /// Offer AUTH XOAUTH2 and accept these access tokens.
    pub oauth_tokens: Vec<String>,
    /// TLS from the first byte (port 465 style) instead of STARTTLS.
    pub implicit_tls: bool,
}

/// The server's files and, once started, its process and port.
pub struct Smtp {
    /// The port; 0 until [`Smtp::start`] or [`Smtp::start_down`].
    pub port: u16,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    lmtp: PathBuf,
    /// One line per accepted message: its Message-ID.
    pub log: PathBuf,
    child: Option<Child>,
    stdout: Option<Receiver<String>>,
}

/// Checks the test's one non-Rust dependency with an actionable message.
fn assert_aiosmtpd() {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need Python's aiosmtpd: pip install aiosmtpd (scripts/install-deps.sh does)"
    );
}

impl Smtp {
    /// Prepares a server for `env` (a Dovecot started with [`lmtp_options`]): its certificate,
    /// signed by a fresh CA. Not started.
    pub fn new(env: &Env) -> Smtp {
        assert_aiosmtpd();
        let (ca, files) = crate::pki::pki(&env.work.join("smtp-pki"));
        Smtp {
            port: 0,
            ca,
            cert: files.cert_pem,
            key: files.key_pem,
            lmtp: env.dovecot.dir.join("run").join("lmtp"),
            log: env.work.join("smtp-accepted.log"),
            child: None,
            stdout: None,
        }
    }

    /// Starts the server and waits until it serves.
    pub fn start(&mut self, q: &Quirks) {
        self.launch(q, false);
        self.expect_line("ready");
    }

    /// Starts the server "down": its port is known and bound, connections are refused, until
    /// [`Smtp::come_up`].
    pub fn start_down(&mut self, q: &Quirks) {
        self.launch(q, true);
    }

    /// Brings a server started with [`Smtp::start_down`] up, on its port, and waits until it
    /// serves.
    pub fn come_up(&mut self) {
        let pid = self
            .child
            .as_ref()
            .expect("the SMTP server was started")
            .id();
        let ok = Command::new("kill")
            .args(["-USR1", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -USR1 {pid}");
        self.expect_line("ready");
    }

    fn launch(&mut self, q: &Quirks, down: bool) {
        self.stop();
        let mut cmd = Command::new("python3");
        cmd.arg(SCRIPT)
            .arg("--lmtp")
            .arg(&self.lmtp)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(["--users", &format!("alice:{PASSWORD},carol:{PASSWORD}")])
            .arg("--log")
            .arg(&self.log)
            .args(["--tempfail", &q.tempfail.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(r) = &q.reject {
            cmd.args(["--reject", r]);
        }
        if q.implicit_tls {
            cmd.arg("--implicit-tls");
        }
        if !q.oauth_tokens.is_empty() {
            cmd.args(["--oauth-tokens", &q.oauth_tokens.join(",")]);
        }
        if down {
            cmd.arg("--down");
        }
        let mut child = cmd.spawn().expect("start the SMTP test server");
        let out = child.stdout.take().expect("the server's stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        self.child = Some(child);
        self.stdout = Some(rx);
        let line = self.next_line();
        self.port = line
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the SMTP test server said {line:?}, not `port N`"));
    }

    fn next_line(&mut self) -> String {
        let rx = self.stdout.as_ref().expect("the SMTP server was started");
        rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|e| {
            panic!("the SMTP test server said nothing more within {START_TIMEOUT:?} ({e}): see its stderr above")
        })
    }

    fn expect_line(&mut self, want: &str) {
        let line = self.next_line();
        assert_eq!(line, want, "the SMTP test server's output");
    }

    /// Stops the server (its port is released).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdout = None;
    }

    /// Message-IDs the server accepted, in order (a message sent twice appears twice).
    pub fn accepted(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `[mailbox.smtp]` for the alice mailbox: STARTTLS with our CA, AUTH as alice with the
    /// password file, quick retries.
    pub fn config_table(&self) -> String {
        self.table(
            "starttls",
            true,
            &format!("password_file = \"{PASSWORD_FILE}\""),
        )
    }

    /// `[mailbox.smtp]` with TLS `mode`, our CA trusted or not, and `login` (TOML: a
    /// `password_file = …` or `auth = "xoauth2"` line); user alice, quick retries.
    pub fn table(&self, mode: &str, trust_ca: bool, login: &str) -> String {
        assert_ne!(
            self.port, 0,
            "start the SMTP server before writing its config"
        );
        let ca = if trust_ca {
            format!("  ca_file = \"{}\"\n", self.ca.display())
        } else {
            String::new()
        };
        format!(
            "  [mailbox.smtp]\n  host = \"127.0.0.1\"\n  port = {}\n  tls = \"{mode}\"\n{ca}  user = \"alice\"\n  {login}\n  retry_initial = 1\n  retry_max = 2\n  timeout = 10\n",
            self.port
        )
    }

    /// Sends `raw` from `from` to `to` through this server as user `carol` (the customer
    /// replying), with Python's smtplib: STARTTLS, AUTH, like any mail client.
    pub fn submit_as_carol(&self, from: &str, to: &str, raw: &[u8]) {
        let script = format!(
            "import smtplib,ssl,sys\n\
             ctx=ssl.create_default_context(cafile={ca:?})\n\
             s=smtplib.SMTP('127.0.0.1',{port})\n\
             s.starttls(context=ctx)\n\
             s.login('carol',{pw:?})\n\
             s.sendmail({from:?},[{to:?}],sys.stdin.buffer.read())\n\
             s.quit()\n",
            ca = self.ca.display().to_string(),
            port = self.port,
            pw = PASSWORD,
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run python3");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(raw)
            .expect("hand the message to smtplib");
        assert!(
            child.wait().is_ok_and(|s| s.success()),
            "smtplib submission failed"
        );
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}
