//! One test's world: a private Dovecot with the standard users, a work dir with the password
//! files, the config and the data dir, and the real `foldertrack` binary run against them.

use crate::agent::{Agent, AgentSpec};
use crate::config::{Config, Mailbox, RECORDS};
use crate::imap::Imap;
use crate::sandbox::{dovecot_available, Sandbox, SandboxOptions};
use crate::PASSWORD;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The password file every [`Mailbox`] uses unless told otherwise: holds [`PASSWORD`].
pub const PASSWORD_FILE: &str = "password";
/// A password file with a wrong password ([`Mailbox::wrong_password`]).
pub const WRONG_PASSWORD_FILE: &str = "bad-password";

/// The Dovecot users of the tests (alice, bob, carol, user1), all with [`PASSWORD`]; the other
/// options at their defaults, for a test to override.
pub fn cast() -> SandboxOptions {
    SandboxOptions {
        users: ["alice", "bob", "carol", "user1"]
            .iter()
            .map(|u| (u.to_string(), PASSWORD.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// The `foldertrack` binary under test.
///
/// The test kit cannot name it at compile time (`CARGO_BIN_EXE_foldertrack` exists only in the
/// product's own tests, and the kit must not depend on the product), so it is found where Cargo
/// puts it: beside the `deps/` directory holding the running test or bench executable.
/// `FOLDERTRACK_BIN` overrides that.
pub fn foldertrack_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FOLDERTRACK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the path of the running test");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("foldertrack");
    assert!(
        bin.is_file(),
        "{} not found: run the tests through cargo (which builds it), or set FOLDERTRACK_BIN",
        bin.display()
    );
    bin
}

/// A Dovecot with the standard users ([`cast`]) and a work dir. Fails loudly when Dovecot is
/// missing: CI installs it, so a skip would hide a broken set-up.
pub fn env() -> Env {
    env_with(cast())
}

/// [`env`] with other Dovecot options (users included: start from [`cast`]).
pub fn env_with(opts: SandboxOptions) -> Env {
    assert!(
        dovecot_available(),
        "these tests need Dovecot: apt-get install dovecot-imapd (README: the test command installs it)"
    );
    let tmp = tempfile::Builder::new()
        .prefix("ft-test-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).expect("creating the work dir");
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &opts).expect("start dovecot");
    std::fs::write(work.join(PASSWORD_FILE), PASSWORD).expect("writing the password file");
    std::fs::write(work.join(WRONG_PASSWORD_FILE), "wrong").expect("writing a password file");
    let pg = postgres().then(|| {
        crate::pg::PgCluster::start().expect(
            "FOLDERTRACK_TEST_ENGINE=postgres needs PostgreSQL (apt-get install postgresql)",
        )
    });
    Env {
        dovecot,
        work,
        bin: foldertrack_bin(),
        pg,
        _tmp: tmp,
    }
}

/// Whether the tests run the product on PostgreSQL (`FOLDERTRACK_TEST_ENGINE=postgres`): every
/// [`Env`] then has a database of its own, which every config it writes names.
pub fn postgres() -> bool {
    std::env::var("FOLDERTRACK_TEST_ENGINE").is_ok_and(|e| e == "postgres")
}

/// For a test that is about sled by nature (the data dir's lock, its files, a full disk):
/// `true` (and `SKIPPED: …` with `reason` on stderr) when the tests run on PostgreSQL.
pub fn sled_only(reason: &str) -> bool {
    if !postgres() {
        return false;
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED on PostgreSQL: {reason}");
    true
}

/// One test's world; everything is removed (and Dovecot stopped) on drop.
pub struct Env {
    /// The private Dovecot.
    pub dovecot: Sandbox,
    /// The work dir: `foldertrack.toml`, password files, `data/`, `agent.log`.
    pub work: PathBuf,
    bin: PathBuf,
    /// The test's PostgreSQL database when the tests run on PostgreSQL ([`postgres`]); stopped
    /// after everything above it.
    pub pg: Option<crate::pg::PgCluster>,
    // Declared last: dropped after the sandbox, which must stop before its directory goes.
    _tmp: tempfile::TempDir,
}

impl Env {
    /// A logged-in IMAP connection of `user`.
    pub fn imap(&self, user: &str) -> Imap {
        Imap::login(self.dovecot.port, user)
    }

    /// A mailbox of `user` on this Dovecot, for [`Config::mailbox`].
    pub fn mailbox(&self, user: &str) -> Mailbox {
        Mailbox::new(user, self.dovecot.port)
    }

    /// Creates `folders` (config form, in order: parents first) in `user`'s mailbox.
    pub fn create_folders(&self, user: &str, folders: &[&str]) {
        let mut c = self.imap(user);
        for f in folders {
            c.create(f);
        }
    }

    /// The usual start of a test: `folders` created in alice's mailbox, `config` written, the
    /// standard [`RECORDS`] imported.
    pub fn setup(&self, folders: &[&str], config: &Config) {
        self.create_folders("alice", folders);
        self.write_config(config);
        self.import_records(RECORDS);
    }

    /// Writes `work/foldertrack.toml` (with `[store]` naming this env's database on
    /// PostgreSQL); returns its path.
    pub fn write_config(&self, config: &Config) -> PathBuf {
        self.with_store(config).write(&self.work)
    }

    /// `config` as this env runs it: on PostgreSQL, with `[store]` naming its database.
    pub fn with_store(&self, config: &Config) -> Config {
        match &self.pg {
            Some(pg) => config.clone().store(&format!(
                "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n",
                pg.url()
            )),
            None => config.clone(),
        }
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.work.join("foldertrack.toml")
    }

    /// The binary under test.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `foldertrack --config work/foldertrack.toml`, in the work dir, without `RUST_LOG`: add
    /// arguments and environment, then run it.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.current_dir(&self.work)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("RUST_LOG")
            .env_remove("FOLDERTRACK_LOG_FORMAT");
        c
    }

    /// Runs the binary with this env's config.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run foldertrack")
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
        String::from_utf8(o.stdout).expect("UTF-8 output")
    }

    /// `activities list --json`.
    pub fn activities(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["activities", "list", "--json"])).expect("activities JSON")
    }

    /// `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status JSON")
    }

    /// Imports records (JSON lines) with `records import`.
    pub fn import_records(&self, jsonl: &str) {
        let p = self.work.join("records.jsonl");
        std::fs::write(&p, jsonl).expect("writing records.jsonl");
        self.ok(&["records", "import", &p.to_string_lossy()]);
    }

    /// How an agent is started in this env (for a test that wants more than
    /// [`Env::start_agent`]: watched log lines, no waiting).
    pub fn agent(&self) -> AgentSpec {
        AgentSpec::new(&self.bin, &self.work)
    }

    /// Starts `foldertrack run` (debug logs in `work/agent.log`), waits until it is running and
    /// every mailbox has finished its first pass (or is disabled).
    pub fn start_agent(&self) -> Agent {
        self.start_agent_with(&self.agent())
    }

    /// alice's `INBOX/Tracked/Acme` tracked for account:acme by an agent that also serves the
    /// web pages on a free port, `token` the admin's: the agent and the pages' address.
    pub fn serve_web_pages(&self, token: &str) -> (Agent, std::net::SocketAddr) {
        self.setup(
            &["INBOX/Tracked", "INBOX/Tracked/Acme"],
            &Config::new()
                .top("[web]\nlisten = \"127.0.0.1:0\"\n")
                .mailbox(self.mailbox("alice").rule(crate::config::acme())),
        );
        let agent = self.start_agent_with(
            &self
                .agent()
                .env("FOLDERTRACK_WEB_TOKEN", token)
                .watch(&[crate::agent::WEB_SERVING]),
        );
        let (_, line) = agent
            .lines()
            .recv_timeout(Duration::from_secs(10))
            .expect("the agent logs where it serves the pages");
        (agent, crate::agent::logged_addr(&line))
    }

    /// [`Env::start_agent`] as `spec` says (e.g. with watched log lines).
    pub fn start_agent_with(&self, spec: &AgentSpec) -> Agent {
        let agent = spec.start();
        let deadline = Instant::now() + Duration::from_secs(30);
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
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent's first pass did not happen in 30 s; status:\n{}{}\nlog:\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
