//! The one way tests and benches start the agent: `foldertrack run` as a child process, its log
//! read as it is written, ready when it says so, killed when the handle is dropped.
//!
//! Readiness comes from the agent's own log lines ("agent running", and the bound address in
//! "serving /metrics and /healthz" when `[metrics] listen` asks for port 0), not from a sleep or
//! a port probe: whatever the machine's load, a test starts working when the agent has.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line the agent logs once its mailbox tasks are started (after the metrics endpoint).
pub const RUNNING: &str = "agent running";
/// The line that names the metrics endpoint's bound address in its `addr` field.
pub const SERVING: &str = "serving /metrics and /healthz";

/// What the log reader saw so far.
#[derive(Default)]
struct Seen {
    running: bool,
    metrics: Option<SocketAddr>,
    /// The log ended: the process closed stderr (it exited).
    ended: bool,
}

/// How to start an agent: which binary, in which directory, where its log goes, which of its log
/// lines a test wants to receive.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    bin: PathBuf,
    work: PathBuf,
    log: PathBuf,
    watch: Vec<String>,
    echo: bool,
    rust_log: String,
    /// Arguments after `run` (`--data-dir DIR`).
    args: Vec<String>,
    /// Environment variables set for the process (fail points).
    envs: Vec<(String, String)>,
}

impl AgentSpec {
    /// `bin --config foldertrack.toml run` in `work`, debug logs appended to `work/agent.log`.
    pub fn new(bin: &Path, work: &Path) -> AgentSpec {
        AgentSpec {
            bin: bin.to_path_buf(),
            work: work.to_path_buf(),
            log: work.join("agent.log"),
            watch: Vec::new(),
            echo: false,
            rust_log: "foldertrack=debug".into(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// One more argument after `run` (e.g. `--data-dir`, to run several agents of one config).
    pub fn arg(mut self, a: &str) -> AgentSpec {
        self.args.push(a.to_string());
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> AgentSpec {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Another log file than `work/agent.log` (several agents in one work dir).
    pub fn log(mut self, path: &Path) -> AgentSpec {
        self.log = path.to_path_buf();
        self
    }

    /// Log lines holding any of `patterns` are sent, time-stamped as read, to
    /// [`Agent::lines`].
    pub fn watch(mut self, patterns: &[&str]) -> AgentSpec {
        self.watch.extend(patterns.iter().map(|p| p.to_string()));
        self
    }

    /// Another `RUST_LOG` than `foldertrack=debug` (`trace`: every crate's every line, for a
    /// test that no secret is ever logged).
    pub fn rust_log(mut self, filter: &str) -> AgentSpec {
        self.rust_log = filter.to_string();
        self
    }

    /// Echo every log line on stderr (a bench's debug knob).
    pub fn echo(mut self, on: bool) -> AgentSpec {
        self.echo = on;
        self
    }

    /// Starts the process and returns at once: a test that kills it during its start-up wants
    /// exactly that.
    pub fn spawn(&self) -> Agent {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log.display()));
        let mut child = Command::new(&self.bin)
            .current_dir(&self.work)
            .args(["--config", "foldertrack.toml", "run"])
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", &self.rust_log)
            .env_remove("FOLDERTRACK_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} run: {e}", self.bin.display()));
        let stderr = child.stderr.take().expect("the agent's stderr is piped");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, lines) = mpsc::channel();
        let (watch, echo, seen2) = (self.watch.clone(), self.echo, seen.clone());
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let at = Instant::now();
                // The file is the record a failing test prints; write each line as it comes.
                let _ = writeln!(log, "{line}");
                if echo {
                    eprintln!("agent: {line}");
                }
                {
                    let mut s = seen2.lock().unwrap_or_else(|p| p.into_inner());
                    if line.contains(SERVING) {
                        s.metrics = field(&line, "addr").and_then(|a| a.parse().ok());
                    }
                    s.running |= line.contains(RUNNING);
                }
                if watch.iter().any(|w| line.contains(w.as_str())) {
                    let _ = tx.send((at, line));
                }
            }
            seen2.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        });
        Agent {
            child,
            log: self.log.clone(),
            seen,
            lines,
            reader: Some(reader),
        }
    }

    /// Starts the process and waits (up to 60 s) until it logs that it is running.
    pub fn start(&self) -> Agent {
        let mut agent = self.spawn();
        agent.wait_running(Duration::from_secs(60));
        agent
    }
}

/// What `foldertrack run` and `foldertrack web` log, with `addr=`, once the web pages are served.
pub const WEB_SERVING: &str = "serving the web pages";

/// The address in a log line's `addr=` field (the web pages' [`WEB_SERVING`] line, say);
/// panics naming the line when it has none.
pub fn logged_addr(line: &str) -> SocketAddr {
    field(line, "addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// The value of `name=` in a text log line (`addr=127.0.0.1:40123`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// A running `foldertrack run`, killed (SIGKILL) when dropped if still alive.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its log file (appended to: several agents of one test may share it).
    pub log: PathBuf,
    seen: Arc<Mutex<Seen>>,
    lines: Receiver<(Instant, String)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Waits until the agent logged [`RUNNING`]; panics with its log if it exits first or
    /// takes longer than `timeout`.
    pub fn wait_running(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (running, ended) = {
                let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                (s.running, s.ended)
            };
            if running {
                return;
            }
            if ended || self.child.try_wait().ok().flatten().is_some() {
                let st = self.child.wait();
                panic!(
                    "the agent exited ({st:?}) before it was running; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent was not running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the metrics endpoint is bound to, from the agent's log.
    pub fn metrics_addr(&self) -> SocketAddr {
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.metrics.unwrap_or_else(|| {
            panic!(
                "the agent logged no `{SERVING} addr=…` line (is [metrics] listen set?); log:\n{}",
                self.log_text()
            )
        })
    }

    /// The watched log lines ([`AgentSpec::watch`]), with the time each was read.
    pub fn lines(&self) -> &Receiver<(Instant, String)> {
        &self.lines
    }

    /// SIGTERM, and the exit status (panics if it does not stop within 30 s).
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for the agent") {
                self.join_reader();
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and waits for the process to be gone and its last log line to be in the file.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the agent");
        self.child.wait().expect("wait for the agent");
        self.join_reader();
    }

    /// Waits until the log reader has written everything the process logged.
    fn join_reader(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Sends `sig` (`HUP`, `TERM`, …).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {}", self.child.id());
    }

    /// The whole log file.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_read_from_text_log_lines() {
        let l = "2026-01-01T00:00:00Z  INFO foldertrack::supervisor: serving /metrics and /healthz addr=127.0.0.1:40123";
        assert_eq!(super::field(l, "addr"), Some("127.0.0.1:40123"));
        assert_eq!(super::field(l, "port"), None);
    }
}
