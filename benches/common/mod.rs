//! What the bench binaries share: a minimal IMAP client for delivering mail and reading the
//! server's answers (no parsing beyond the tagged line), percentiles, and env knobs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// A logged-in plaintext IMAP connection to the bench's Dovecot (loopback, password `pass`).
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u32,
}

impl Conn {
    pub fn login(port: u16, user: &str) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut c = Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
            n: 0,
        };
        c.line();
        c.cmd(&format!("LOGIN {user} pass"));
        c
    }

    /// One line from the server; panics when the connection is closed.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.r.read_line(&mut l).unwrap() > 0, "connection closed");
        l
    }

    /// Sends a command and waits for its tagged answer, which must be OK.
    pub fn cmd(&mut self, c: &str) {
        self.n += 1;
        let tag = format!("x{}", self.n);
        write!(self.w, "{tag} {c}\r\n").unwrap();
        self.ok(&tag, c);
    }

    /// APPENDs `msg` with LITERAL+ (one round trip) and waits for its OK.
    pub fn append(&mut self, folder: &str, msg: &str) {
        self.n += 1;
        let tag = format!("x{}", self.n);
        write!(
            self.w,
            "{tag} APPEND {folder} {{{}+}}\r\n{msg}\r\n",
            msg.len()
        )
        .unwrap();
        self.ok(&tag, "APPEND");
    }

    /// Sends raw bytes (e.g. `DONE` to end an IDLE).
    pub fn send(&mut self, raw: &str) {
        self.w.write_all(raw.as_bytes()).unwrap();
    }

    fn ok(&mut self, tag: &str, what: &str) {
        loop {
            let l = self.line();
            if let Some(rest) = l.strip_prefix(tag) {
                assert!(rest.trim_start().starts_with("OK"), "{what}: {l}");
                return;
            }
        }
    }
}

/// p50, p90 and p99 of `v`.
pub fn pct(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.9), p(0.99))
}

/// A numeric knob from the environment, or `default`.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `foldertrack run` in `work` (with a fresh data dir) and sends its log lines that hold
/// any of `wanted`, time-stamped as read, on a channel. With the env variable `debug_var` set,
/// every line is echoed.
pub fn start_agent(
    work: &Path,
    debug_var: &str,
    wanted: &'static [&'static str],
) -> (Child, mpsc::Receiver<(Instant, String)>) {
    let _ = std::fs::remove_dir_all(work.join("data"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_foldertrack"))
        .current_dir(work)
        .args(["--config", "foldertrack.toml", "run"])
        .env("RUST_LOG", "foldertrack=debug")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let debug = std::env::var(debug_var).is_ok();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if debug {
                eprintln!("agent: {line}");
            }
            if wanted.iter().any(|w| line.contains(w)) {
                let _ = tx.send((Instant::now(), line));
            }
        }
    });
    (child, rx)
}
