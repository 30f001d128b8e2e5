//! Shared harness of the integration tests: a private Dovecot per test (real server, free
//! loopback port, temp dir), a tiny synchronous IMAP client to set up folders and mail, and
//! helpers to write a config and run the real `foldertrack` binary against it.

#![allow(dead_code)]

pub mod pki;
pub mod smtp;

use foldertrack::sandbox::{Sandbox, SandboxOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "pass";

/// One test's world: a Dovecot, a work dir with config and data dir.
pub struct Env {
    pub dovecot: Sandbox,
    pub work: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Fails loudly when Dovecot is missing: CI installs it, so a skip would hide a broken setup.
pub fn env() -> Env {
    env_with(SandboxOptions::default())
}

pub fn env_with(mut opts: SandboxOptions) -> Env {
    assert!(
        foldertrack::sandbox::dovecot_available(),
        "these tests need Dovecot: apt-get install dovecot-imapd (README: the test command installs it)"
    );
    opts.users = ["alice", "bob", "carol", "user1"]
        .iter()
        .map(|u| (u.to_string(), PASSWORD.to_string()))
        .collect();
    let tmp = tempfile::Builder::new()
        .prefix("ft-test-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &opts).expect("start dovecot");
    std::fs::write(work.join("password"), PASSWORD).unwrap();
    Env {
        dovecot,
        work,
        _tmp: tmp,
    }
}

impl Env {
    pub fn imap(&self, user: &str) -> Imap {
        Imap::login(self.dovecot.port, user)
    }

    /// Writes `foldertrack.toml` with one mailbox per `(name, user, rules_toml)`; every mailbox
    /// points at this Dovecot in plaintext on loopback.
    pub fn write_config(&self, mailboxes: &[(&str, &str, &str)], extra_top: &str) -> PathBuf {
        let mut t = format!("data_dir = \"data\"\n{extra_top}\n");
        for (name, user, rules) in mailboxes {
            t.push_str(&format!(
                "[[mailbox]]\nname = \"{name}\"\nowner = \"systemuser:{user}\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nallow_plaintext = true\nuser = \"{user}\"\naddress = \"{user}@example.com\"\npassword_file = \"password\"\n{rules}\n",
                self.dovecot.port
            ));
        }
        let p = self.work.join("foldertrack.toml");
        std::fs::write(&p, t).unwrap();
        p
    }

    /// Runs the binary with this env's config.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_foldertrack"))
            .current_dir(&self.work)
            .arg("--config")
            .arg(self.work.join("foldertrack.toml"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run foldertrack")
    }

    /// Runs and asserts success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "foldertrack {args:?} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn activities(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["activities", "list", "--json"])).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Gives the config's last mailbox a wrong password (from the file `bad-password`).
    pub fn break_last_password(&self) {
        let cfg = self.work.join("foldertrack.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let key = "password_file = \"password\"";
        let i = text.rfind(key).unwrap();
        let text = format!(
            "{}password_file = \"bad-password\"{}",
            &text[..i],
            &text[i + key.len()..]
        );
        std::fs::write(&cfg, text).unwrap();
        std::fs::write(self.work.join("bad-password"), "wrong").unwrap();
    }

    pub fn import_records(&self, jsonl: &str) {
        let p = self.work.join("records.jsonl");
        std::fs::write(&p, jsonl).unwrap();
        self.ok(&["records", "import", p.to_str().unwrap()]);
    }
}

/// The standard cast of records the fixtures use.
pub const RECORDS: &str = r#"{"type":"systemuser","key":"alice","name":"Alice Example","emails":["alice@example.com"]}
{"type":"systemuser","key":"bob","name":"Bob User","emails":["bob@example.com"]}
{"type":"account","key":"acme","name":"Acme","emails":["sales@acme.com"],"owner":"alice"}
{"type":"account","key":"globex","name":"Globex","emails":["info@globex.com"],"owner":"alice"}
{"type":"contact","key":"bob-builder","name":"Bob Builder","emails":["bob@acme.com"],"owner":"alice"}
{"type":"contact","key":"carol","name":"Carol Shaw","emails":["carol@globex.com"],"owner":"alice"}
{"type":"lead","key":"carol-lead","name":"Carol Shaw (lead)","emails":["carol@globex.com"],"owner":"alice"}
"#;

/// A small synchronous IMAP client for test set-up; it checks every tagged answer is OK.
pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
    pub sep: char,
}

impl Imap {
    pub fn login(port: u16, user: &str) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to dovecot");
        let w = s.try_clone().unwrap();
        let mut c = Imap {
            r: BufReader::new(s),
            w,
            tag: 0,
            sep: '.',
        };
        let mut greet = String::new();
        c.r.read_line(&mut greet).unwrap();
        assert!(greet.starts_with("* OK"), "{greet}");
        c.cmd(&format!("LOGIN {user} {PASSWORD}"));
        let list = c.cmd("LIST \"\" \"\"");
        if let Some(l) = list.iter().find(|l| l.starts_with("* LIST")) {
            if let Some(q) = l.split('"').nth(1) {
                c.sep = q.chars().next().unwrap_or('.');
            }
        }
        c
    }

    /// Sends one command; returns the untagged lines. Panics unless the answer is OK.
    pub fn cmd(&mut self, c: &str) -> Vec<String> {
        let (ok, lines) = self.try_cmd(c);
        assert!(ok, "IMAP `{c}` failed: {lines:?}");
        lines
    }

    pub fn try_cmd(&mut self, c: &str) -> (bool, Vec<String>) {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        write!(self.w, "{tag} {c}\r\n").unwrap();
        self.read_until(&tag)
    }

    fn read_until(&mut self, tag: &str) -> (bool, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).unwrap();
            assert!(n > 0, "connection closed");
            if let Some(rest) = l.strip_prefix(&format!("{tag} ")) {
                return (rest.starts_with("OK"), lines);
            }
            // skip literals in untagged data
            if let Some(len) = l
                .trim_end()
                .strip_suffix('}')
                .and_then(|x| x.rsplit('{').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                let mut buf = vec![0; len];
                self.r.read_exact(&mut buf).unwrap();
            }
            lines.push(l.trim_end().to_string());
        }
    }

    /// Folder in config form → server name.
    pub fn name(&self, folder: &str) -> String {
        foldertrack::imap::folders::to_server_name(folder, Some(self.sep))
    }

    pub fn create(&mut self, folder: &str) {
        let n = self.name(folder);
        self.cmd(&format!("CREATE {}", foldertrack::imap::quote(&n)));
    }

    /// APPENDs many messages pipelined with LITERAL+ (fast: one round trip for all).
    pub fn append_many(&mut self, folder: &str, msgs: &[Vec<u8>], flags: &str) {
        let n = self.name(folder);
        let first = self.tag + 1;
        let mut buf = Vec::new();
        for m in msgs {
            self.tag += 1;
            buf.extend_from_slice(
                format!(
                    "t{} APPEND {} ({flags}) {{{}+}}\r\n",
                    self.tag,
                    foldertrack::imap::quote(&n),
                    m.len()
                )
                .as_bytes(),
            );
            buf.extend_from_slice(m);
            buf.extend_from_slice(b"\r\n");
            if buf.len() > 1 << 20 {
                self.w.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        self.w.write_all(&buf).unwrap();
        for t in first..=self.tag {
            let (ok, lines) = self.read_until(&format!("t{t}"));
            assert!(ok, "APPEND failed: {lines:?}");
        }
    }

    pub fn append(&mut self, folder: &str, msg: &[u8]) {
        self.append_many(folder, &[msg.to_vec()], "");
    }

    /// FLAGS of every message of a folder, by UID.
    pub fn flags(&mut self, folder: &str) -> Vec<String> {
        let n = self.name(folder);
        self.cmd(&format!("EXAMINE {}", foldertrack::imap::quote(&n)));
        self.cmd("UID FETCH 1:* (FLAGS)")
            .into_iter()
            .filter(|l| l.contains("FETCH"))
            .collect()
    }
}

/// A simple, valid message.
pub fn message(from: &str, to: &str, subject: &str, message_id: Option<&str>) -> Vec<u8> {
    let mut m = format!("From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\n");
    if let Some(id) = message_id {
        m.push_str(&format!("Message-ID: {id}\r\n"));
    }
    m.push_str("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n");
    m.push_str(&format!("Body of {subject}.\r\n"));
    m.into_bytes()
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join("mail")
}

/// Asserts `acts` holds exactly `n` activities with `n` different Message-IDs: nothing lost,
/// nothing doubled.
pub fn assert_each_once(acts: &[serde_json::Value], n: usize) {
    assert_eq!(acts.len(), n, "nothing lost");
    let mut ids: Vec<&str> = acts
        .iter()
        .map(|a| a["message_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing doubled");
}

/// Activities whose subject equals `s`.
pub fn by_subject<'a>(acts: &'a [serde_json::Value], s: &str) -> Vec<&'a serde_json::Value> {
    acts.iter().filter(|a| a["subject"] == s).collect()
}

/// A running `foldertrack run`, stopped (SIGKILL) when dropped if still alive.
pub struct Agent {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Env {
    /// Starts `foldertrack run` with debug logs into `work/agent.log`, and waits until every
    /// mailbox has finished its first pass.
    pub fn start_agent(&self) -> Agent {
        let log = self.work.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_foldertrack"))
            .current_dir(&self.work)
            .args(["--config", "foldertrack.toml", "run"])
            .env("RUST_LOG", "foldertrack=debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start foldertrack run");
        let agent = Agent { child, log };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let o = self.run(&["status", "--json"]);
            let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            let running = st["agent"]
                .as_str()
                .is_some_and(|a| a.starts_with("running"));
            let passed = st["mailboxes"].as_array().is_some_and(|m| {
                m.iter()
                    .all(|m| m["live"]["last_pass"].is_string() || m["live"]["state"] == "disabled")
            });
            if o.status.success() && running && passed {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent's first pass did not happen in 30 s; status:\n{}{}\nlog:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                agent.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        agent
    }
}

impl Agent {
    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent did not stop on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 50 ms until it holds, or panics after `secs` seconds naming `what`.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
