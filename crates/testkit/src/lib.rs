//! foldertrack's test kit: what the integration tests, the benches and `foldertrack demo` need
//! to run the real binary against real servers on loopback, written once.
//!
//! - [`sandbox`]: a private, throw-away Dovecot (always built; the demo uses only this).
//! - [`imap`]: the one blocking IMAP client, for set-up and raw protocol work.
//! - [`config`]: the config builder (mailboxes, rules, settings) and the standard [`RECORDS`].
//! - [`env`]: one test's world (a Dovecot with the standard users, a work dir, the binary).
//! - [`agent`]: `foldertrack run` as a child process, ready from its log, killed on drop.
//! - [`smtp`]: the aiosmtpd test server, delivering over LMTP into the test's Dovecot.
//! - [`pki`]: a throw-away CA and server certificate.
//! - [`pg`]: a private, throw-away PostgreSQL cluster (or a fresh database on a given server).
//! - [`browser`]: headless Chromium over WebDriver, for the web pages' browser tests.
//! - [`alloc`]: a counting allocator, for tests that measure memory in bytes.
//!
//! Everything but [`sandbox`] is behind the default `harness` feature. The harness is test code:
//! it panics, naming what failed, because a set-up step that fails is the test's failure. The
//! sandbox is also product code (the demo) and returns errors instead.
//!
//! The kit does not depend on foldertrack (foldertrack depends on it for the demo): it finds the
//! binary at run time ([`env::foldertrack_bin`]) and encodes folder names itself.

pub mod sandbox;

#[cfg(feature = "harness")]
pub mod agent;
#[cfg(feature = "harness")]
pub mod alloc;
#[cfg(feature = "harness")]
pub mod browser;
#[cfg(feature = "harness")]
pub mod config;
#[cfg(feature = "harness")]
pub mod env;
#[cfg(feature = "harness")]
pub mod http;
#[cfg(feature = "harness")]
pub mod imap;
#[cfg(feature = "harness")]
pub mod pg;
#[cfg(feature = "harness")]
pub mod pki;
#[cfg(feature = "harness")]
pub mod smtp;

#[cfg(feature = "harness")]
pub use crate::{
    agent::{Agent, AgentSpec},
    config::{acme, standard_rules, Config, Mailbox, Rule, ACME, RECORDS},
    env::{cast, env, env_with, postgres, sled_only, Env},
    imap::Imap,
};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The password of every sandbox user the tests create.
pub const PASSWORD: &str = "pass";

/// Whether the tool `name` (a command on `PATH`, in `/usr/sbin` or `/sbin`, or a path) is
/// installed. When it is not: under CI (env `CI` set) that is a broken set-up, so this panics;
/// elsewhere it prints `SKIPPED: …` on stderr and returns false, and the caller skips.
pub fn require_tool(name: &str) -> bool {
    if tool_path(name).is_some() {
        return true;
    }
    skip_or_fail(&format!("`{name}` is not installed"))
}

/// [`require_tool`] for something other than a command: `available` says whether it is there,
/// `missing` what is missing.
pub fn require(available: bool, missing: &str) -> bool {
    available || skip_or_fail(missing)
}

fn skip_or_fail(reason: &str) -> bool {
    assert!(
        std::env::var_os("CI").is_none(),
        "{reason}: CI must install it (a test skipped in CI would hide the broken set-up)"
    );
    // Straight to the process's stderr, past the test harness's capture of `eprintln!`: a skip
    // must be seen in a passing run.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
    false
}

fn tool_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        return executable(Path::new(name)).then(|| PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| executable(p))
}

/// Polls `cond` every 50 ms until it holds, or panics after `secs` seconds naming `what`: the
/// way a test waits for an event instead of sleeping and hoping.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// xorshift64*: enough randomness for timings, choices and generated mail, reproducible from
/// its state (tests print their seed so that a failure can be replayed).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed` (any value: it is mixed, and never left 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n)
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

/// The usual test message: from bob@acme.com (Bob Builder's contact) to alice, with a subject
/// and a Message-ID.
pub fn mail(subject: &str, message_id: &str) -> Vec<u8> {
    message(
        "bob@acme.com",
        "alice@example.com",
        subject,
        Some(message_id),
    )
}

/// The mail fixtures (`fixtures/mail/` of the repository).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mail")
}

/// Asserts `acts` holds exactly `n` activities with `n` different Message-IDs: nothing lost,
/// nothing doubled.
#[cfg(feature = "harness")]
pub fn assert_each_once(acts: &[serde_json::Value], n: usize) {
    assert_eq!(acts.len(), n, "nothing lost");
    let mut ids: Vec<&str> = acts
        .iter()
        .map(|a| a["message_id"].as_str().expect("a Message-ID"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "nothing doubled");
}

/// Activities whose subject equals `s`.
#[cfg(feature = "harness")]
pub fn by_subject<'a>(acts: &'a [serde_json::Value], s: &str) -> Vec<&'a serde_json::Value> {
    acts.iter().filter(|a| a["subject"] == s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_found_on_the_path_and_by_path() {
        assert!(tool_path("sh").is_some());
        assert!(tool_path("/bin/sh").is_some());
        assert!(tool_path("no-such-tool-ft").is_none());
        assert!(require_tool("sh"));
        if std::env::var_os("CI").is_none() {
            assert!(!require_tool("no-such-tool-ft"));
        }
    }

    #[test]
    fn the_fixtures_are_found() {
        assert!(fixtures_dir().join("expected.json").is_file());
    }
}
