//! A real SMTP submission server for the outgoing tests: `tests/support/smtp_server.py`
//! (aiosmtpd: STARTTLS required, AUTH PLAIN/LOGIN), handing each message over LMTP to the
//! test's Dovecot, so what foldertrack sends lands in the recipient's mailbox.

use super::{Env, PASSWORD};
use foldertrack::sandbox::SandboxOptions;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Dovecot with LMTP on `run/lmtp`; RCPT `name@any.domain` is delivered to user `name`.
pub fn lmtp_options() -> SandboxOptions {
    SandboxOptions {
        extra_conf: "protocols = imap lmtp\n\
                     auth_username_format = %Ln\n\
                     postmaster_address = postmaster@example.com\n\
                     service lmtp {\n  unix_listener lmtp {\n    mode = 0666\n  }\n}\n"
            .into(),
        ..Default::default()
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

/// The server's address and files; it is started (and restarted) on the same port.
pub struct Smtp {
    pub port: u16,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    lmtp: PathBuf,
    /// One line per accepted message: its Message-ID.
    pub log: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    /// Prepares a server for `env` (a Dovecot started with [`lmtp_options`]) without starting it:
    /// its port is reserved by number only, so a test can start it later ("server down").
    pub fn new(env: &Env) -> Smtp {
        assert_aiosmtpd();
        let dir = env.work.join("smtp-pki");
        let (ca, files) = super::pki::pki(&dir);
        Smtp {
            port: free_port(),
            ca,
            cert: files.cert_pem,
            key: files.key_pem,
            lmtp: env.dovecot.dir.join("run").join("lmtp"),
            log: env.work.join("smtp-accepted.log"),
            child: None,
        }
    }

    pub fn start(&mut self, q: &Quirks) {
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/smtp_server.py"
        ))
        .args(["--port", &self.port.to_string()])
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
        .stdout(Stdio::null())
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
        self.child = Some(cmd.spawn().expect("start the SMTP test server"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "SMTP test server did not listen in 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Message-IDs the server accepted, in order (a message sent twice appears twice).
    pub fn accepted(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `[mailbox.smtp]` for the alice mailbox: STARTTLS with our CA, AUTH as alice, quick retries.
    pub fn config_table(&self) -> String {
        format!(
            "[mailbox.smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nuser = \"alice\"\npassword_file = \"password\"\nretry_initial = 1\nretry_max = 2\ntimeout = 10\n",
            self.port,
            self.ca.display()
        )
    }

    /// Sends `raw` from `from` to `to` through this server as user `carol` (the customer replying),
    /// with Python's smtplib: STARTTLS, AUTH, like any mail client.
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
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(raw).unwrap();
        assert!(child.wait().unwrap().success(), "smtplib submission failed");
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        self.stop();
    }
}
