//! A hostile or broken IMAP server: a huge literal, a line that never ends, garbage, and a
//! server that stops answering in the middle of a FETCH. Each gives a clear error within the
//! command timeout, bounded memory, and (under `run`) a reconnect. The real Dovecot will not
//! misbehave on purpose, so a small fake server plays the part here.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::env::foldertrack_bin;
use testkit::{AgentSpec, Config, Mailbox, Rule};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    HugeLiteral,
    EndlessLine,
    Garbage,
    Stall,
}

/// Serves connections until `stop`; counts logins. Well-behaved up to the body FETCH.
fn fake_server(mode: Mode, stop: Arc<AtomicBool>, logins: Arc<AtomicU32>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => {
                    let (stop, logins) = (stop.clone(), logins.clone());
                    std::thread::spawn(move || serve(s, mode, stop, logins));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    port
}

fn serve(s: TcpStream, mode: Mode, stop: Arc<AtomicBool>, logins: Arc<AtomicU32>) {
    s.set_nonblocking(false).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let _ = w.write_all(b"* OK fake IMAP ready\r\n");
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let tag = line.split_whitespace().next().unwrap_or("*").to_string();
        let cmd = line[tag.len()..].trim().to_ascii_uppercase();
        let answer = if cmd.starts_with("LOGIN") {
            logins.fetch_add(1, Ordering::Relaxed);
            format!("{tag} OK logged in\r\n")
        } else if cmd.starts_with("CAPABILITY") {
            format!("* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("LIST") {
            format!("* LIST () \".\" INBOX\r\n* LIST () \".\" Tracked\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("STATUS") {
            format!("* STATUS Tracked (UIDNEXT 2 UIDVALIDITY 7)\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("SELECT") || cmd.starts_with("EXAMINE") {
            format!("* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n* OK [PERMANENTFLAGS ()] ok\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("UID FETCH") && !cmd.contains("BODY") {
            format!("* 1 FETCH (UID 1 RFC822.SIZE 100)\r\n{tag} OK done\r\n")
        } else if cmd.starts_with("UID FETCH") {
            match mode {
                Mode::HugeLiteral => {
                    let _ =
                        w.write_all(b"* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[] {3000000000}\r\n");
                }
                Mode::EndlessLine => {
                    let _ = w.write_all(b"* 1 FETCH (UID 1 BODY[] \"");
                    let chunk = vec![b'A'; 64 * 1024];
                    for _ in 0..(400 * 16) {
                        if w.write_all(&chunk).is_err() || stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
                Mode::Garbage => {
                    let junk: Vec<u8> = (0..200_000u32)
                        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                        .collect();
                    let _ = w.write_all(&junk);
                }
                Mode::Stall => {
                    let _ = w.write_all(
                        b"* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[] {100}\r\nFrom: a@b\r\n",
                    );
                }
            }
            // Then say nothing more until the client gives up.
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let mut b = [0u8; 1];
                r.get_mut()
                    .set_read_timeout(Some(Duration::from_millis(10)))
                    .ok();
                if let Ok(0) = std::io::Read::read(r.get_mut(), &mut b) {
                    return;
                }
            }
            return;
        } else if cmd.starts_with("LOGOUT") {
            let _ = w.write_all(format!("* BYE\r\n{tag} OK bye\r\n").as_bytes());
            return;
        } else {
            format!("{tag} OK done\r\n")
        };
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn work(port: u16) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("password"), "x").unwrap();
    Config::new()
        .top("command_timeout = 2")
        .mailbox(Mailbox::new("m", port).rule(Rule::unlinked("Tracked")))
        .write(d.path());
    d
}

/// What `foldertrack sync` against the fake server did.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    /// Peak RSS in kB, and how many times it was read (a bound checked on no sample is none).
    peak_kb: u64,
    samples: usize,
    took: Duration,
}

/// Runs `foldertrack sync`, watching its peak RSS.
fn sync_against(mode: Mode) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let port = fake_server(mode, stop.clone(), Arc::new(AtomicU32::new(0)));
    let d = work(port);
    let t = Instant::now();
    let mut child = Command::new(foldertrack_bin())
        .current_dir(d.path())
        .args(["--config", "foldertrack.toml", "sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let mut samples = 0;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            if let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kb);
                samples += 1;
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "sync did not give up"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    stop.store(true, Ordering::Relaxed);
    Outcome {
        code: status.code(),
        stderr: err,
        peak_kb: peak,
        samples,
        took: t.elapsed(),
    }
}

/// async-imap alone would reserve 512 MiB for the literal or the line; `limit_mb` leaves room
/// for the 32 MiB line limit plus the buffer async-imap grows on the way.
fn assert_bounded(mode: &str, o: &Outcome, limit_mb: u64) {
    assert!(
        o.samples > 0,
        "{mode}: the memory of the sync was never sampled"
    );
    assert!(
        o.peak_kb < limit_mb * 1024,
        "{mode}: peak RSS {} kB is not bounded by {limit_mb} MB",
        o.peak_kb
    );
}

#[test]
fn huge_literal_is_refused_before_memory_is_reserved() {
    let o = sync_against(Mode::HugeLiteral);
    assert_eq!(o.code, Some(1));
    let err = &o.stderr;
    assert!(
        err.contains("announced a literal of 3000000000 bytes"),
        "{err}"
    );
    assert_bounded("huge literal", &o, 100);
}

#[test]
fn a_line_that_never_ends_is_cut_off() {
    let o = sync_against(Mode::EndlessLine);
    assert_eq!(o.code, Some(1));
    let err = &o.stderr;
    // Cut by the line limit, or by the command timeout first (async-imap re-parses the growing
    // line on every read, so a slow machine may not reach 32 MiB in 2 s): bounded either way.
    assert!(
        err.contains("line longer than") || err.contains("timed out after 2 s"),
        "{err}"
    );
    assert_bounded("endless line", &o, 160);
}

#[test]
fn garbage_gives_a_clear_error() {
    let o = sync_against(Mode::Garbage);
    assert_eq!(o.code, Some(1));
    let err = &o.stderr;
    assert!(
        err.contains("127.0.0.1") && err.contains("UID FETCH"),
        "names the server and the command: {err}"
    );
    assert!(o.took < Duration::from_secs(30));
    assert_bounded("garbage", &o, 100);
}

#[test]
fn a_server_that_stops_answering_mid_fetch_times_out() {
    let o = sync_against(Mode::Stall);
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.contains("timed out after 2 s"), "{}", o.stderr);
    assert!(o.took < Duration::from_secs(20), "took {:?}", o.took);
}

#[test]
fn run_reconnects_after_a_stalled_fetch() {
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicU32::new(0));
    let port = fake_server(Mode::Stall, stop.clone(), logins.clone());
    let d = work(port);
    let agent = AgentSpec::new(&foldertrack_bin(), d.path()).spawn();
    let t = Instant::now();
    while logins.load(Ordering::Relaxed) < 2 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let n = logins.load(Ordering::Relaxed);
    let status = Command::new(foldertrack_bin())
        .current_dir(d.path())
        .args(["--config", "foldertrack.toml", "status", "--json"])
        .output()
        .unwrap();
    drop(agent);
    stop.store(true, Ordering::Relaxed);
    assert!(
        n >= 2,
        "the agent logged in again after the dead FETCH ({n} logins)"
    );
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(
        st["mailboxes"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{st}"
    );
}
