//! A private, throw-away Dovecot IMAP server for demos, integration tests and
//! benchmarks.
//!
//! This is a Rust port of `bench/dovecot-sandbox.sh`. Everything an instance
//! needs lives under one directory: the generated `dovecot.conf`, `base_dir`
//! (`run/`, with sockets and `master.pid`), `state_dir` (`state/`), the log
//! (`dovecot.log`), the passwd-file (`passwd`) and the maildirs
//! (`mail/<user>/Maildir`). The system Dovecot service is never used, started
//! or stopped, so any number of sandboxes can run side by side (each test gets
//! its own) as long as each has its own directory.
//!
//! # Users and permissions
//!
//! * **As root**, mail processes run as uid/gid [`MAIL_UID`]/[`MAIL_GID`]
//!   (Dovecot refuses uid 0 for mail access), internal processes as the
//!   packaged `dovecot` user and login processes as `dovenull`, exactly like a
//!   packaged install. Those users must be able to reach the sandbox
//!   directory, so [`Sandbox::start`] makes the directory itself 0755 and
//!   refuses to start if any *parent* directory lacks the `o+x` bit. A
//!   `tempfile::TempDir` (mode 0700) can be passed directly as `dir`, but not
//!   used as a parent of `dir`; `/tmp` itself is fine. Files you put into a
//!   maildir behind Dovecot's back must be owned by [`Sandbox::mail_owner`].
//! * **As a normal user**, the "rootless" layout is used: every service runs
//!   as the invoking user and nothing is chrooted.
//!
//! # Lifetime
//!
//! The Dovecot master daemonizes, so it outlives this process if the
//! [`Sandbox`] is leaked or the process is killed (e.g. a test binary
//! aborted with SIGKILL); a panicking test still drops it. [`Sandbox`] stops
//! the instance on drop; declare it *after* the `TempDir` holding it so that
//! it is dropped (and Dovecot stopped) before the directory is removed.
//! Stopping takes about a second (Dovecot's own shutdown), starting well
//! under 100 ms, so tests should run sandboxes in parallel rather than share
//! one through a lock.
//!
//! # Example
//!
//! ```no_run
//! use testkit::sandbox::{dovecot_available, Sandbox, SandboxOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if !dovecot_available() {
//!     return Ok(()); // skip: no Dovecot on this machine
//! }
//! let tmp = tempfile::tempdir()?; // declared first, dropped last
//! let sb = Sandbox::start(tmp.path(), &SandboxOptions::default())?;
//! // IMAP on sb.host:sb.port, users user1..user3 with password "pass",
//! // folders like "INBOX.Tracked" (separator '.').
//! sb.doveadm(&["mailbox", "create", "-u", "user1", "INBOX.Tracked"])?;
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Uid the mail processes run as when the sandbox is started as root.
///
/// Dovecot refuses to access mail as uid 0, and this uid needs no passwd entry.
pub const MAIL_UID: u32 = 5000;
/// Gid the mail processes run as when the sandbox is started as root.
pub const MAIL_GID: u32 = 5000;

/// Where Dovecot is looked for unless `DOVECOT_BIN` is set.
const DEFAULT_DOVECOT_BIN: &str = "/usr/sbin/dovecot";
/// Where doveadm is looked for unless `DOVEADM_BIN` is set.
const DEFAULT_DOVEADM_BIN: &str = "/usr/bin/doveadm";
/// The only address the sandbox listens on: plaintext auth is enabled, so it
/// must never be reachable from outside the machine.
const HOST: &str = "127.0.0.1";
/// How often a fresh pair of ports is tried when another process grabbed the
/// port between our probe bind and Dovecot's bind.
const START_ATTEMPTS: usize = 5;
/// How long to wait for the greeting after the master was started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the master gets to shut down after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the master's children get to exit after the master is gone.
const CHILD_EXIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Sandbox::restart`] keeps retrying while the old ports are still
/// held (e.g. by a login process that has not noticed the shutdown yet).
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);
/// Poll interval for all the waiting loops.
const POLL: Duration = Duration::from_millis(50);
/// Log lines included in error messages.
const ERROR_LOG_LINES: usize = 20;

/// Errors from starting, stopping or talking to a sandbox. Every message says
/// what to do about it, because they mostly surface in test output.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The Dovecot binary is missing or not executable.
    #[error(
        "dovecot not found at {}: install it with `apt-get install dovecot-imapd` \
         (or point DOVECOT_BIN at the binary)",
        path.display()
    )]
    NotInstalled {
        /// The path that was checked.
        path: PathBuf,
    },
    /// A system user Dovecot needs when running as root does not exist.
    #[error(
        "system user `{user}` is missing; it is created by the dovecot-core package \
         (`apt-get install --reinstall dovecot-core`)"
    )]
    MissingSystemUser {
        /// The missing user name.
        user: String,
    },
    /// A parent of the sandbox directory cannot be traversed by the
    /// unprivileged Dovecot processes (only checked as root).
    #[error(
        "{} (mode {mode:04o}) is not traversable by other users, but as root the \
         sandbox's mail (uid {MAIL_UID}), dovecot and dovenull processes must reach the \
         sandbox directory through it: put the sandbox under a world-traversable \
         directory such as /tmp (a 0700 TempDir may be the sandbox dir itself, not its \
         parent) or run `chmod o+x {}`",
        path.display(),
        path.display()
    )]
    ParentNotTraversable {
        /// The offending parent directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A [`SandboxOptions`] value or path cannot be expressed in the config.
    #[error("invalid sandbox option: {0}")]
    InvalidOption(String),
    /// A file system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A Dovecot master from an earlier run still owns the directory.
    #[error(
        "dovecot is already running in {} (pid {pid}); stop it with `kill {pid}` \
         or use another directory",
        dir.display()
    )]
    AlreadyRunning {
        /// The sandbox directory.
        dir: PathBuf,
        /// The running master's pid.
        pid: u32,
    },
    /// `dovecot` exited with an error (usually a config problem).
    #[error(
        "dovecot failed to start ({status}): {output}\n--- tail of {} ---\n{log_tail}",
        log.display()
    )]
    StartFailed {
        /// Exit status of the `dovecot` command or a description.
        status: String,
        /// What `dovecot` printed.
        output: String,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// The listen ports stayed in use by another process.
    #[error(
        "could not listen on 127.0.0.1 port(s) {ports}: address in use after {attempts} \
         attempt(s); another process holds the port (check with `ss -ltnp`)"
    )]
    PortsInUse {
        /// The ports of the last attempt.
        ports: String,
        /// How many attempts were made.
        attempts: usize,
    },
    /// The master started but the IMAP port did not greet in time.
    #[error(
        "dovecot did not greet on {addr} within {secs} s\n--- tail of {} ---\n{log_tail}",
        log.display()
    )]
    NotReady {
        /// The address that was probed.
        addr: String,
        /// The timeout in seconds.
        secs: u64,
        /// The log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// The master survived SIGTERM and SIGKILL.
    #[error("dovecot master (pid {pid}) did not exit after SIGTERM and SIGKILL")]
    StopTimeout {
        /// The master's pid.
        pid: u32,
    },
    /// `doveadm` exited with an error.
    #[error("`doveadm {args}` failed ({status}): {stderr}")]
    Doveadm {
        /// The arguments after `-c <conf>`.
        args: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr (and stdout, if stderr was empty).
        stderr: String,
    },
}

impl SandboxError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Certificate and key for the TLS listeners, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert_pem: PathBuf,
    /// Unencrypted private key (PEM).
    pub key_pem: PathBuf,
}

/// What the sandbox server looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOptions {
    /// `(user, password)` pairs for the passwd-file; default `user1`..`user3`
    /// with password `pass`.
    pub users: Vec<(String, String)>,
    /// Hierarchy separator of the INBOX namespace: `'.'` (Dovecot's maildir
    /// default, the default here) or `'/'`. The on-disk layout is Maildir++
    /// either way.
    pub separator: char,
    /// When set, `ssl = yes` with these files: the plain port then offers
    /// STARTTLS (plaintext LOGIN stays allowed) and an implicit-TLS (imaps)
    /// listener is opened on [`Sandbox::tls_port`].
    pub tls: Option<TlsFiles>,
    /// Declare the special-use mailboxes `Sent` (`\Sent`, auto-created and
    /// subscribed), `Drafts`, `Trash` and `Junk` (flags only, not created).
    pub special_use: bool,
    /// Appended verbatim to `dovecot.conf`, after everything generated, so
    /// later settings override generated ones (e.g.
    /// `mail_max_userip_connections = 5`, or `service imap { process_limit =
    /// 2 }` to provoke connection limits).
    pub extra_conf: String,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            users: (1..=3)
                .map(|i| (format!("user{i}"), "pass".to_string()))
                .collect(),
            separator: '.',
            tls: None,
            special_use: true,
            extra_conf: String::new(),
        }
    }
}

/// A running (or stopped) private Dovecot instance. Stopped on drop.
#[derive(Debug)]
pub struct Sandbox {
    /// The sandbox directory (absolute, canonical).
    pub dir: PathBuf,
    /// Always `"127.0.0.1"`.
    pub host: String,
    /// Plain IMAP port (offers STARTTLS when TLS is configured).
    pub port: u16,
    /// Implicit-TLS (imaps) port, when TLS is configured.
    pub tls_port: Option<u16>,
    /// The generated config file.
    conf: PathBuf,
    /// Master pid while we believe it runs; `None` once stopped.
    pid: Option<u32>,
    /// Owner of the maildirs.
    mail_owner: (u32, u32),
}

/// Who the Dovecot processes run as; decided by whether we are root.
struct Identity {
    rootless: bool,
    mail_uid: u32,
    mail_gid: u32,
    internal_user: String,
    internal_group: String,
    login_user: String,
}

/// Everything the config template needs.
struct ConfParams<'a> {
    dir: &'a str,
    port: u16,
    tls_port: Option<u16>,
    ident: &'a Identity,
    opts: &'a SandboxOptions,
    tls: Option<(String, String)>,
}

/// Outcome of one `dovecot -c conf` run.
enum Launch {
    Started,
    AddrInUse,
}

/// Whether a Dovecot binary is available (`DOVECOT_BIN` or
/// `/usr/sbin/dovecot`, existing and executable). Tests use this to skip
/// instead of failing on machines without Dovecot.
pub fn dovecot_available() -> bool {
    is_executable(&dovecot_bin())
}

fn dovecot_bin() -> PathBuf {
    std::env::var_os("DOVECOT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOVECOT_BIN))
}

fn doveadm_bin() -> PathBuf {
    std::env::var_os("DOVEADM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DOVEADM_BIN))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

impl Sandbox {
    /// Generates the config under `dir` (created if needed) and starts Dovecot
    /// on free loopback ports.
    ///
    /// Ports are found by binding `127.0.0.1:0` and releasing the listener, so
    /// another process can grab one before Dovecot binds it; that case is
    /// detected and retried with new ports (up to 5 attempts). Returns once
    /// the plain port sends its `* OK` greeting (which Dovecot only does
    /// after auth is ready) and the imaps port accepts connections.
    pub fn start(dir: &Path, opts: &SandboxOptions) -> Result<Sandbox, SandboxError> {
        let bin = dovecot_bin();
        if !is_executable(&bin) {
            return Err(SandboxError::NotInstalled { path: bin });
        }
        validate_options(opts)?;
        let ident = identity()?;

        fs::create_dir_all(dir)
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| SandboxError::io(format!("resolving {}", dir.display()), e))?;
        let dir_str = config_safe_path(&dir, "sandbox directory")?;
        if !ident.rootless {
            check_parents_traversable(&dir)?;
        }
        let tls = match &opts.tls {
            Some(t) => Some((
                config_safe_path(&existing(&t.cert_pem, "TLS certificate")?, "cert_pem")?,
                config_safe_path(&existing(&t.key_pem, "TLS key")?, "key_pem")?,
            )),
            None => None,
        };

        let conf = dir.join("dovecot.conf");
        if let Some(pid) = live_master_pid(&dir.join("run/master.pid")) {
            return Err(SandboxError::AlreadyRunning { dir, pid });
        }
        prepare_dirs(&dir, &ident)?;
        write_passwd(&dir, &opts.users)?;

        let mut sandbox = Sandbox {
            dir: dir.clone(),
            host: HOST.to_string(),
            port: 0,
            tls_port: None,
            conf,
            pid: None,
            mail_owner: (ident.mail_uid, ident.mail_gid),
        };
        let mut last_ports = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = pick_ports(if tls.is_some() { 2 } else { 1 })?;
            let port = ports[0];
            let tls_port = ports.get(1).copied();
            last_ports = ports_label(port, tls_port);
            let text = render_conf(&ConfParams {
                dir: &dir_str,
                port,
                tls_port,
                ident: &ident,
                opts,
                tls: tls.clone(),
            });
            write_file(&sandbox.conf, &text, 0o644)?;
            sandbox.port = port;
            sandbox.tls_port = tls_port;
            match sandbox.launch()? {
                Launch::Started => {
                    sandbox.wait_ready()?;
                    return Ok(sandbox);
                }
                Launch::AddrInUse => continue,
            }
        }
        Err(SandboxError::PortsInUse {
            ports: last_ports,
            attempts: START_ATTEMPTS,
        })
    }

    /// Stops the instance: SIGTERM to the master, up to 10 s for it to exit,
    /// then SIGKILL. Also waits (briefly) for the master's child processes so
    /// that the ports are free and nothing writes into the directory
    /// afterwards. Does nothing if it is not running, so it can be called
    /// repeatedly.
    pub fn stop(&mut self) -> Result<(), SandboxError> {
        let pidfile = self.pidfile();
        let pid = match self.pid.filter(|&p| is_dovecot(p)) {
            Some(p) => Some(p),
            None => live_master_pid(&pidfile),
        };
        self.pid = None;
        let Some(pid) = pid else {
            return Ok(());
        };
        let children = children_of(pid);
        signal(pid, "TERM")?;
        if !wait_until(STOP_TIMEOUT, || !is_alive(pid)) {
            signal(pid, "KILL")?;
            if !wait_until(Duration::from_secs(2), || !is_alive(pid)) {
                self.pid = Some(pid);
                return Err(SandboxError::StopTimeout { pid });
            }
            // A killed master leaves its pid file behind, and a later start
            // would refuse to run if that pid got reused by another dovecot.
            let _ = fs::remove_file(&pidfile);
        }
        // The children notice the master's exit on their own; give them a
        // moment, then make sure (they hold the listening sockets too).
        let same = |c: &(u32, u64)| start_time(c.0) == Some(c.1) && is_alive(c.0);
        if !wait_until(CHILD_EXIT_TIMEOUT, || !children.iter().any(same)) {
            for c in children.iter().filter(|c| same(c)) {
                let _ = signal(c.0, "KILL");
            }
        }
        Ok(())
    }

    /// Stops and starts the instance again with the same config and ports,
    /// e.g. to simulate a server outage (open sessions are cut). Retries for
    /// about 5 s while the old ports are still held, then fails with
    /// [`SandboxError::PortsInUse`]; that also happens if an unrelated process
    /// took a port while the sandbox was down, which is unlikely but possible
    /// because the ports are ephemeral ones.
    pub fn restart(&mut self) -> Result<(), SandboxError> {
        self.stop()?;
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.launch()? {
                Launch::Started => return self.wait_ready(),
                Launch::AddrInUse if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(200))
                }
                Launch::AddrInUse => {
                    return Err(SandboxError::PortsInUse {
                        ports: ports_label(self.port, self.tls_port),
                        attempts,
                    })
                }
            }
        }
    }

    /// Whether the master process of this instance is alive.
    pub fn is_running(&self) -> bool {
        match self.pid {
            Some(pid) => is_dovecot(pid),
            None => false,
        }
    }

    /// Runs `doveadm -c <conf> ARGS` against this instance and returns its
    /// stdout; a non-zero exit becomes [`SandboxError::Doveadm`] with stderr.
    /// Example: `sb.doveadm(&["mailbox", "list", "-u", "user1"])`.
    pub fn doveadm(&self, args: &[&str]) -> Result<String, SandboxError> {
        let bin = doveadm_bin();
        let out = Command::new(&bin)
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SandboxError::io(format!("running {}", bin.display()), e))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(SandboxError::Doveadm {
            args: args.join(" "),
            status: status_label(out.status),
            stderr: if stderr.is_empty() {
                stdout.trim().to_string()
            } else {
                stderr
            },
        })
    }

    /// The last `lines` lines of `dovecot.log` (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("dovecot.log"), lines)
    }

    /// The Maildir of `user` (`<dir>/mail/<user>/Maildir`); Dovecot creates
    /// it on the user's first login or doveadm access.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.join("mail").join(user).join("Maildir")
    }

    /// The generated `dovecot.conf`, e.g. for running `doveconf -n -c` on it.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// `(uid, gid)` that owns the maildirs: files written into them directly
    /// (bulk loading) must be chowned to this or Dovecot cannot touch them.
    pub fn mail_owner(&self) -> (u32, u32) {
        self.mail_owner
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("run/master.pid")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dovecot.log")
    }

    /// Runs `dovecot -c conf` (which daemonizes after binding its listeners)
    /// and classifies the result.
    fn launch(&self) -> Result<Launch, SandboxError> {
        // Dovecot reports startup errors on stderr. Its daemon keeps the
        // inherited stderr open, so a pipe would never reach EOF: use a file.
        let out_path = self.dir.join("dovecot.start.out");
        let out = fs::File::create(&out_path)
            .map_err(|e| SandboxError::io(format!("creating {}", out_path.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| SandboxError::io("duplicating a file handle", e))?;
        let bin = dovecot_bin();
        let status = Command::new(&bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| SandboxError::io(format!("running {}", bin.display()), e))?;
        if status.success() {
            return Ok(Launch::Started);
        }
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        if output.contains("Address already in use") {
            return Ok(Launch::AddrInUse);
        }
        Err(SandboxError::StartFailed {
            status: status_label(status),
            output: output.trim().to_string(),
            log: self.log_path(),
            log_tail: self.log_tail(ERROR_LOG_LINES),
        })
    }

    /// Waits for the master pid and the greeting; on failure stops whatever
    /// was started so that no daemon is left behind.
    fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let plain = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut greeted = false;
        loop {
            if self.pid.is_none() {
                self.pid = live_master_pid(&self.pidfile());
            } else if !self.pid.is_some_and(is_alive) {
                self.pid = None;
                return Err(SandboxError::StartFailed {
                    status: "master exited right after starting".to_string(),
                    output: String::new(),
                    log: self.log_path(),
                    log_tail: self.log_tail(ERROR_LOG_LINES),
                });
            }
            if self.pid.is_some() {
                greeted = greeted || greets(plain, deadline);
                let tls_ok = self.tls_port.is_none_or(|p| {
                    TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, p)), POLL)
                        .is_ok()
                });
                if greeted && tls_ok {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let log_tail = self.log_tail(ERROR_LOG_LINES);
                let _ = self.stop();
                return Err(SandboxError::NotReady {
                    addr: ports_label(self.port, self.tls_port),
                    secs: READY_TIMEOUT.as_secs(),
                    log: self.log_path(),
                    log_tail,
                });
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Connects and reads the first line; true if it is an IMAP `* OK` greeting.
fn greets(addr: SocketAddr, deadline: Instant) -> bool {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let Ok(stream) = TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) else {
        return false;
    };
    if stream.set_read_timeout(Some(left)).is_err() {
        return false;
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => line.starts_with("* OK"),
        Err(_) => false,
    }
}

fn ports_label(port: u16, tls_port: Option<u16>) -> String {
    match tls_port {
        Some(t) => format!("{HOST}:{port} (imap) / {HOST}:{t} (imaps)"),
        None => format!("{HOST}:{port}"),
    }
}

fn status_label(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    }
}

/// Binds `n` ephemeral loopback ports at once (so they differ), then releases
/// them for Dovecot.
fn pick_ports(n: usize) -> Result<Vec<u16>, SandboxError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| SandboxError::io("binding 127.0.0.1:0 to find a free port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| SandboxError::io("reading a probe listener's port", e))
}

fn validate_options(opts: &SandboxOptions) -> Result<(), SandboxError> {
    if opts.separator != '.' && opts.separator != '/' {
        return Err(SandboxError::InvalidOption(format!(
            "separator must be '.' or '/', not {:?}",
            opts.separator
        )));
    }
    for (user, pass) in &opts.users {
        // The name becomes a passwd-file key and, via %u, a directory name.
        let bad_user = user.is_empty()
            || user.starts_with('.')
            || user
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ":/%\\\"'".contains(c));
        if bad_user {
            return Err(SandboxError::InvalidOption(format!(
                "user name {user:?} must be non-empty, not start with '.', and contain no \
                 whitespace or any of : / % \\ \" '"
            )));
        }
        if pass.chars().any(|c| c == ':' || c.is_control()) {
            return Err(SandboxError::InvalidOption(format!(
                "password of {user:?} must not contain ':' or control characters \
                 (passwd-file format)"
            )));
        }
    }
    Ok(())
}

/// Paths are pasted into the config unquoted (and into `mail_location`,
/// where `:` and `%` are special), so only a conservative character set is
/// accepted rather than trying to escape.
fn config_safe_path(path: &Path, what: &str) -> Result<String, SandboxError> {
    let s = path.to_str().unwrap_or("");
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@,=~".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(SandboxError::InvalidOption(format!(
            "{what} {} may only contain ASCII letters, digits and / . _ - + @ , = ~ \
             (it is written unquoted into dovecot.conf)",
            path.display()
        )))
    }
}

/// Canonical absolute path of an existing file (Dovecot resolves relative
/// paths against its own working directory, not ours).
fn existing(path: &Path, what: &str) -> Result<PathBuf, SandboxError> {
    path.canonicalize()
        .map_err(|e| SandboxError::io(format!("{what} {}", path.display()), e))
}

/// As root, the mail, dovecot and dovenull users must traverse every parent.
fn check_parents_traversable(dir: &Path) -> Result<(), SandboxError> {
    for parent in dir.ancestors().skip(1) {
        let meta = fs::metadata(parent)
            .map_err(|e| SandboxError::io(format!("checking {}", parent.display()), e))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o001 == 0 {
            return Err(SandboxError::ParentNotTraversable {
                path: parent.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

pub(crate) fn effective_uid() -> Result<u32, SandboxError> {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok());
        if let Some(uid) = euid {
            return Ok(uid);
        }
    }
    let out = run_id(&["-u"])?;
    out.parse().map_err(|_| {
        SandboxError::io(
            "parsing `id -u`",
            io::Error::new(io::ErrorKind::InvalidData, out.clone()),
        )
    })
}

/// Runs `id ARGS` (which, unlike parsing /etc/passwd, sees NSS users).
fn run_id(args: &[&str]) -> Result<String, SandboxError> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::io("running `id`", e))?;
    if !out.status.success() {
        return Err(SandboxError::io(
            format!("`id {}`", args.join(" ")),
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn identity() -> Result<Identity, SandboxError> {
    if effective_uid()? == 0 {
        for user in ["dovecot", "dovenull"] {
            if run_id(&["-u", user]).is_err() {
                return Err(SandboxError::MissingSystemUser {
                    user: user.to_string(),
                });
            }
        }
        return Ok(Identity {
            rootless: false,
            mail_uid: MAIL_UID,
            mail_gid: MAIL_GID,
            internal_user: "dovecot".to_string(),
            internal_group: "dovecot".to_string(),
            login_user: "dovenull".to_string(),
        });
    }
    let num = |flag: &str| -> Result<u32, SandboxError> {
        let s = run_id(&[flag])?;
        s.parse().map_err(|_| {
            SandboxError::io(
                format!("parsing `id {flag}`"),
                io::Error::new(io::ErrorKind::InvalidData, s.clone()),
            )
        })
    };
    let user = run_id(&["-un"])?;
    Ok(Identity {
        rootless: true,
        mail_uid: num("-u")?,
        mail_gid: num("-g")?,
        internal_group: run_id(&["-gn"])?,
        login_user: user.clone(),
        internal_user: user,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::io(format!("chmod {mode:o} {}", path.display()), e))
}

fn prepare_dirs(dir: &Path, ident: &Identity) -> Result<(), SandboxError> {
    for sub in ["run", "state", "mail"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p)
            .map_err(|e| SandboxError::io(format!("creating {}", p.display()), e))?;
    }
    // base_dir and friends must be reachable by the login/internal users.
    for p in [
        dir.to_path_buf(),
        dir.join("run"),
        dir.join("state"),
        dir.join("mail"),
    ] {
        set_mode(&p, 0o755)?;
    }
    if !ident.rootless {
        // The mail processes (uid 5000) create the per-user maildirs here.
        let mail = dir.join("mail");
        std::os::unix::fs::chown(&mail, Some(ident.mail_uid), Some(ident.mail_gid)).map_err(
            |e| {
                SandboxError::io(
                    format!(
                        "chown {}:{} {}",
                        ident.mail_uid,
                        ident.mail_gid,
                        mail.display()
                    ),
                    e,
                )
            },
        )?;
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), SandboxError> {
    fs::write(path, text)
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    set_mode(path, mode)
}

fn write_passwd(dir: &Path, users: &[(String, String)]) -> Result<(), SandboxError> {
    let mut text = String::new();
    for (user, pass) in users {
        let _ = writeln!(text, "{user}:{{PLAIN}}{pass}::::::");
    }
    // Read by the auth process, which runs as the internal user when root.
    write_file(&dir.join("passwd"), &text, 0o644)
}

/// The config, as in `dovecot-sandbox.sh` plus TLS, special-use mailboxes
/// and limits high enough for benchmarks with many connections.
fn render_conf(p: &ConfParams) -> String {
    let dir = p.dir;
    let id = p.ident;
    let mut c = String::new();
    let _ = write!(
        c,
        r#"# generated by foldertrack's test kit (testkit::sandbox): private instance, not the system service
instance_name = ftsb-{port}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
auth_verbose = yes

protocols = imap
listen = {HOST}
# plaintext LOGIN/AUTHENTICATE PLAIN is fine: we only ever listen on loopback
disable_plaintext_auth = no
auth_mechanisms = plain login
"#,
        port = p.port,
    );
    match &p.tls {
        Some((cert, key)) => {
            let _ = write!(c, "ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n");
        }
        None => c.push_str("ssl = no\n"),
    }
    let _ = write!(
        c,
        r#"
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:{dir}/mail/%u/Maildir

# generous limits: benchmarks and parallel tests open many connections
mail_max_userip_connections = 1000
default_process_limit = 1100
default_client_limit = 4000
service imap {{
  process_limit = 1100
}}

namespace inbox {{
  inbox = yes
  prefix =
  separator = {sep}
"#,
        sep = p.opts.separator,
    );
    if p.opts.special_use {
        c.push_str(
            r#"  mailbox Sent {
    special_use = \Sent
    auto = subscribe
  }
  mailbox Drafts {
    special_use = \Drafts
  }
  mailbox Trash {
    special_use = \Trash
  }
  mailbox Junk {
    special_use = \Junk
  }
"#,
        );
    }
    let _ = write!(
        c,
        r#"}}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%u
}}

default_internal_user = {iu}
default_internal_group = {ig}
default_login_user = {lu}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {port}
  }}
"#,
        uid = id.mail_uid,
        gid = id.mail_gid,
        iu = id.internal_user,
        ig = id.internal_group,
        lu = id.login_user,
        port = p.port,
    );
    match p.tls_port {
        Some(tls_port) => {
            let _ = write!(
                c,
                "  inet_listener imaps {{\n    address = {HOST}\n    port = {tls_port}\n    ssl = yes\n  }}\n"
            );
        }
        None => c.push_str("  inet_listener imaps {\n    port = 0\n  }\n"),
    }
    if id.rootless {
        // Rootless layout: no chroot (needs root) and everything runs as us.
        let _ = write!(
            c,
            "  chroot =\n}}\nservice anvil {{\n  chroot =\n}}\nservice auth-worker {{\n  user = {}\n}}\n",
            id.internal_user
        );
    } else {
        c.push_str("}\n");
    }
    if !p.opts.extra_conf.is_empty() {
        c.push_str("\n# extra_conf\n");
        c.push_str(&p.opts.extra_conf);
        if !p.opts.extra_conf.ends_with('\n') {
            c.push('\n');
        }
    }
    c
}

/// The pid in `pidfile` if it is a live dovecot process (guards against pid
/// reuse after a crash).
fn live_master_pid(pidfile: &Path) -> Option<u32> {
    let pid = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    is_dovecot(pid).then_some(pid)
}

fn is_dovecot(pid: u32) -> bool {
    is_alive(pid)
        && fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.contains("dovecot"))
            .unwrap_or(false)
}

/// Fields of `/proc/PID/stat` after the `(comm)` field, which may itself
/// contain spaces and parentheses.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Alive and not a zombie: the daemonized master is reparented to pid 1,
/// which in containers does not always reap promptly.
fn is_alive(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(f) => !matches!(f.first().map(String::as_str), Some("Z" | "X") | None),
        None => false,
    }
}

/// Start time (field 22) identifies a process across pid reuse.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// `(pid, start time)` of every direct child of `parent`: all Dovecot service
/// processes are children of the master.
fn children_of(parent: u32) -> Vec<(u32, u64)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            let ppid: u32 = f.get(1)?.parse().ok()?;
            let start: u64 = f.get(19)?.parse().ok()?;
            (ppid == parent).then_some((pid, start))
        })
        .collect()
}

/// Sends a signal with the `kill` command (keeps this module free of libc).
fn signal(pid: u32, sig: &str) -> Result<(), SandboxError> {
    let out = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SandboxError::io("running `kill`", e))?;
    // The process may have exited on its own in the meantime: not an error.
    if out.status.success() || !is_alive(pid) {
        Ok(())
    } else {
        Err(SandboxError::io(
            format!("kill -{sig} {pid}"),
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ))
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(all(test, feature = "harness"))]
mod tests {
    use super::*;
    use crate::imap::Imap;
    use crate::require;
    use std::io::Write as _;

    /// A sandbox dir under /tmp, or None (skipped, or a failure under CI) without Dovecot.
    fn tmp() -> Option<tempfile::TempDir> {
        if !require(dovecot_available(), "Dovecot is not installed") {
            return None;
        }
        Some(
            tempfile::Builder::new()
                .prefix("ftsb")
                .tempdir_in("/tmp")
                .unwrap(),
        )
    }

    fn login_create_list(sb: &Sandbox, user: &str, folder: &str) -> Vec<String> {
        let mut imap = Imap::connect(sb.port);
        imap.cmd(&format!("LOGIN {user} pass"));
        imap.cmd(&format!("CREATE {folder}"));
        let list = imap.cmd("LIST \"\" \"*\"");
        imap.cmd("LOGOUT");
        list
    }

    #[test]
    fn start_login_create_list_stop() {
        let Some(tmp) = tmp() else { return };
        let mut sb = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap();
        assert!(sb.is_running());
        assert_eq!(sb.host, "127.0.0.1");
        assert_eq!(sb.tls_port, None);
        let list = login_create_list(&sb, "user1", "INBOX.Tracked");
        let joined = list.concat();
        assert!(joined.contains("\"INBOX.Tracked\"") || joined.contains(" INBOX.Tracked"));
        assert!(
            list.iter()
                .any(|l| l.contains("\\Sent") && l.contains("Sent")),
            "{list:?}"
        );
        assert!(sb.maildir("user1").join(".INBOX.Tracked").is_dir());
        let boxes = sb.doveadm(&["mailbox", "list", "-u", "user1"]).unwrap();
        assert!(boxes.contains("INBOX.Tracked"), "{boxes}");
        let err = sb.doveadm(&["mailbox", "status", "-u", "user1", "messages", "Nope"]);
        assert!(matches!(err, Err(SandboxError::Doveadm { .. })), "{err:?}");
        assert!(sb.log_tail(5).contains("Login: user=<user1>"));

        // A wrong password is refused, not an error of the sandbox.
        let mut imap = Imap::connect(sb.port);
        let out = imap.command("LOGIN user1 wrong");
        assert!(out.status.starts_with("NO"), "{out:?}");
        drop(imap);

        sb.stop().unwrap();
        assert!(!sb.is_running());
        assert!(TcpStream::connect((HOST, sb.port)).is_err());
        sb.stop().unwrap(); // idempotent
    }

    #[test]
    fn slash_separator_custom_users_no_special_use() {
        let Some(tmp) = tmp() else { return };
        let opts = SandboxOptions {
            users: vec![("alice".into(), "s3cret pw".into())],
            separator: '/',
            special_use: false,
            ..Default::default()
        };
        let sb = Sandbox::start(&tmp.path().join("nested/dir"), &opts).unwrap();
        let mut imap = Imap::connect(sb.port);
        imap.cmd("LOGIN alice \"s3cret pw\"");
        imap.cmd("CREATE INBOX/Tracked/Acme");
        let list = imap.cmd("LIST \"\" \"*\"");
        assert!(list.iter().any(|l| l.contains("\"/\" INBOX/Tracked/Acme")));
        assert!(!list.concat().contains("\\Sent"), "{list:?}");
        imap.cmd("LOGOUT");
    }

    #[test]
    fn parallel_instances() {
        if !require(dovecot_available(), "Dovecot is not installed") {
            return;
        }
        let handles: Vec<_> = (0..4)
            .map(|i| {
                thread::spawn(move || {
                    let tmp = tmp().unwrap();
                    let sb = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap();
                    let folder = format!("INBOX.T{i}");
                    let list = login_create_list(&sb, "user2", &folder);
                    assert!(list.concat().contains(&folder));
                    let port = sb.port;
                    drop(sb);
                    (port, tmp)
                })
            })
            .collect();
        let mut ports: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap().0).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4);
    }

    #[test]
    fn restart_keeps_ports_and_mail() {
        let Some(tmp) = tmp() else { return };
        let mut sb = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap();
        let port = sb.port;
        // Keep a logged-in session open across the restart, like a client
        // would during an outage.
        let mut held = Imap::connect(port);
        held.cmd("LOGIN user3 pass");
        held.cmd("CREATE INBOX.Before");
        sb.restart().unwrap();
        assert_eq!(sb.port, port);
        assert!(sb.is_running());
        // The old session was cut (at most a BYE, then EOF).
        let _ = held.try_send("c NOOP\r\n");
        let rest = held.rest();
        assert!(!rest.contains("c OK"), "{rest}");
        let list = login_create_list(&sb, "user3", "INBOX.After");
        assert!(list.concat().contains("INBOX.Before"));
        // Restarting twice in a row works too, and after an explicit stop.
        sb.stop().unwrap();
        sb.restart().unwrap();
        assert_eq!(sb.port, port);
        Imap::login(port, "user1");
    }

    #[test]
    fn restart_reports_a_taken_port() {
        let Some(tmp) = tmp() else { return };
        let mut sb = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap();
        sb.stop().unwrap();
        let squatter = TcpListener::bind((HOST, sb.port)).unwrap();
        let err = sb.restart().unwrap_err();
        assert!(matches!(err, SandboxError::PortsInUse { .. }), "{err}");
        assert!(!sb.is_running());
        drop(squatter);
        sb.restart().unwrap();
        Imap::login(sb.port, "user1");
    }

    /// Runs `openssl s_client ARGS`, sends LOGOUT and returns stdout.
    fn s_client(args: &[&str]) -> String {
        let mut child = Command::new("openssl")
            .args(["s_client", "-crlf", "-ign_eof"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"z LOGOUT\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn tls_listeners() {
        let Some(tmp) = tmp() else { return };
        if !crate::require_tool("openssl") {
            return;
        }
        let key = tmp.path().join("k.pem");
        let cert = tmp.path().join("c.pem");
        let gen = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        let o = gen.unwrap();
        assert!(o.status.success(), "{o:?}");
        let opts = SandboxOptions {
            tls: Some(TlsFiles {
                cert_pem: cert,
                key_pem: key,
            }),
            ..Default::default()
        };
        let sb = Sandbox::start(&tmp.path().join("dc"), &opts).unwrap();
        let tls_port = sb.tls_port.unwrap();
        assert_ne!(tls_port, sb.port);
        // Implicit TLS: handshake, then the greeting; LOGOUT makes the server
        // close so that s_client exits.
        let text = s_client(&["-connect", &format!("127.0.0.1:{tls_port}")]);
        assert!(text.contains("* OK"), "{text}");
        assert!(text.contains("BYE"), "{text}");
        // STARTTLS on the plain port.
        let text = s_client(&[
            "-starttls",
            "imap",
            "-connect",
            &format!("127.0.0.1:{}", sb.port),
        ]);
        assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
        assert!(text.contains("BYE"), "{text}");
        let mut imap = Imap::connect(sb.port);
        let caps = imap.cmd("CAPABILITY").concat();
        assert!(caps.contains("STARTTLS"), "{caps}");
        // Plaintext login stays allowed on loopback.
        imap.cmd("LOGIN user1 pass");
    }

    #[test]
    fn errors_are_reported() {
        let Some(tmp) = tmp() else { return };
        // Broken extra config: the start fails with the reason in the error.
        let opts = SandboxOptions {
            extra_conf: "this_is_not_a_setting = 1\n".into(),
            ..Default::default()
        };
        let err = Sandbox::start(tmp.path(), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("this_is_not_a_setting"), "{msg}");

        let opts = SandboxOptions {
            separator: '|',
            ..Default::default()
        };
        assert!(matches!(
            Sandbox::start(tmp.path(), &opts),
            Err(SandboxError::InvalidOption(_))
        ));
        assert!(matches!(
            Sandbox::start(&tmp.path().join("a b"), &SandboxOptions::default()),
            Err(SandboxError::InvalidOption(_))
        ));

        // A second sandbox in the same directory is refused.
        let sb = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap();
        let err = Sandbox::start(tmp.path(), &SandboxOptions::default()).unwrap_err();
        assert!(matches!(err, SandboxError::AlreadyRunning { .. }), "{err}");
        drop(sb);

        if effective_uid().unwrap() == 0 {
            // As root, a 0700 parent is caught up front.
            let inner = tmp.path().join("private");
            fs::create_dir(&inner).unwrap();
            set_mode(&inner, 0o700).unwrap();
            let err = Sandbox::start(&inner.join("sb"), &SandboxOptions::default()).unwrap_err();
            assert!(
                matches!(err, SandboxError::ParentNotTraversable { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn missing_binary_message() {
        let err = SandboxError::NotInstalled {
            path: PathBuf::from(DEFAULT_DOVECOT_BIN),
        };
        assert!(err.to_string().contains("apt-get install dovecot-imapd"));
    }
}
