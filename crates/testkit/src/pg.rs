//! A private, throw-away PostgreSQL for the PostgreSQL engine's tests: a cluster of its own in
//! a temp dir, reached over a Unix socket in that dir (no TCP port, so parallel tests never
//! collide), stopped on drop. With `FOLDERTRACK_TEST_PG_URL` set, a fresh database on that
//! server instead (a CI service, CockroachDB, YugabyteDB), dropped on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser the private cluster is created with.
pub const USER: &str = "foldertrack";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's PostgreSQL database.
pub struct PgCluster {
    url: String,
    kind: Kind,
}

enum Kind {
    /// A cluster this process started: its dir, its binaries, whether they run as `postgres`,
    /// and the server options it was started with (to start it again alike).
    Private {
        dir: tempfile::TempDir,
        bin: PathBuf,
        as_postgres: bool,
        opts: String,
        port: u32,
        /// tmpfs mounted in `dir` ([`PgCluster::tmpfs_tablespace`]), unmounted after the stop.
        mounts: std::sync::Mutex<Vec<PathBuf>>,
    },
    /// A database created on the server of `FOLDERTRACK_TEST_PG_URL`.
    External { server: String, database: String },
}

impl PgCluster {
    /// Starts a private cluster, or creates a database on `FOLDERTRACK_TEST_PG_URL`'s server.
    /// `None` when PostgreSQL is not installed outside CI (the test prints SKIPPED and
    /// returns); under CI (env `CI` set) a missing PostgreSQL panics.
    pub fn start() -> Option<PgCluster> {
        if let Ok(server) = std::env::var("FOLDERTRACK_TEST_PG_URL") {
            return Some(external(&server));
        }
        let bin = bin_dir();
        if !crate::require(
            bin.is_some(),
            "PostgreSQL (/usr/lib/postgresql/*/bin/initdb)",
        ) {
            return None;
        }
        Some(private(bin.expect("checked above"), None))
    }

    /// A private cluster that also listens on 127.0.0.1 with TLS on (`tls`: its certificate
    /// and key), its URL over TCP to `localhost`, for the engine's TLS tests. `None` as
    /// [`PgCluster::start`], and on `FOLDERTRACK_TEST_PG_URL` (an external server's TLS is not
    /// ours to set up).
    pub fn start_tls(tls: &crate::sandbox::TlsFiles) -> Option<PgCluster> {
        if std::env::var_os("FOLDERTRACK_TEST_PG_URL").is_some() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: a TLS test needs a private cluster, not FOLDERTRACK_TEST_PG_URL"
            );
            return None;
        }
        let bin = bin_dir();
        if !crate::require(
            bin.is_some(),
            "PostgreSQL (/usr/lib/postgresql/*/bin/initdb)",
        ) {
            return None;
        }
        Some(private(bin.expect("checked above"), Some(tls)))
    }

    /// The connection URL of the test's database (for psql and for the engine).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The Unix socket directory of a private cluster (`None` on an external server).
    pub fn socket_dir(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Private { dir, .. } => Some(dir.path()),
            Kind::External { .. } => None,
        }
    }

    /// Whether this is a private cluster, which [`PgCluster::stop_server`],
    /// [`PgCluster::start_server`] and [`PgCluster::create_login`] need. On an external server
    /// (`FOLDERTRACK_TEST_PG_URL`) this prints `SKIPPED: …` with `what` and returns false: the
    /// test cannot stop a shared server or change its authentication.
    pub fn require_private(&self, what: &str) -> bool {
        if matches!(self.kind, Kind::Private { .. }) {
            return true;
        }
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {what} needs a private cluster, not FOLDERTRACK_TEST_PG_URL"
        );
        false
    }

    /// The data dir of a private cluster.
    pub fn data_dir(&self) -> PathBuf {
        let Kind::Private { dir, .. } = &self.kind else {
            panic!("an external server's data dir is not ours")
        };
        dir.path().join("data")
    }

    /// Stops the private cluster's server with `pg_ctl stop -m mode`: `fast` disconnects the
    /// clients and shuts down cleanly, `immediate` ends every server process at once (as a
    /// crash would; the next start recovers from the WAL). Returns once it is down.
    pub fn stop_server(&self, mode: &str) {
        let Kind::Private {
            dir,
            bin,
            as_postgres,
            ..
        } = &self.kind
        else {
            panic!("an external server is not ours to stop")
        };
        let data = dir.path().join("data").display().to_string();
        run(
            bin,
            *as_postgres,
            "pg_ctl",
            &["-D", &data, "-m", mode, "-w", "stop"],
        );
    }

    /// Starts the private cluster's server again after [`PgCluster::stop_server`]: the same
    /// data dir, port and options. Returns once it accepts connections.
    pub fn start_server(&self) {
        let Kind::Private {
            dir,
            bin,
            as_postgres,
            opts,
            ..
        } = &self.kind
        else {
            panic!("an external server is not ours to start")
        };
        pg_ctl_start(bin, *as_postgres, dir.path(), opts);
    }

    /// A tablespace `name` on a tmpfs of `megabytes` mounted in the private cluster's dir (root
    /// only), which the database's tables can be moved to so that they run out of space while
    /// the server's own files (its WAL) do not; unmounted after the server stops on drop. The
    /// mount point, or `None` when it cannot be mounted (not root).
    pub fn tmpfs_tablespace(&self, name: &str, megabytes: u32) -> Option<PathBuf> {
        let Kind::Private {
            dir,
            as_postgres,
            mounts,
            ..
        } = &self.kind
        else {
            panic!("an external server's disks are not ours")
        };
        let at = dir.path().join(name);
        std::fs::create_dir_all(&at).expect("creating the tablespace's mount point");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            return None;
        }
        mounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(at.clone());
        if *as_postgres {
            let st = Command::new("chown")
                .args(["postgres:", &at.display().to_string()])
                .status()
                .expect("running chown");
            assert!(st.success(), "chown postgres: {}", at.display());
        }
        let sql = format!("CREATE TABLESPACE {name} LOCATION '{}'", at.display());
        self.client()
            .batch_execute(&sql)
            .expect("CREATE TABLESPACE");
        Some(at)
    }

    /// A superuser SQL session on the test's database.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the test's PostgreSQL: {e}"))
    }

    /// On a private cluster (whose other users are trusted), a role `user` that must log in with
    /// `password` (SCRAM-SHA-256, over the socket) and owns a database of its name: the URL of
    /// that database as `user` with `password`, written `postgresql://user:password@/user?host=…`.
    /// Returns once the server asks that role for its password.
    pub fn create_login(&self, user: &str, password: &str) -> String {
        let Kind::Private { dir, port, .. } = &self.kind else {
            panic!("an external server's authentication is not ours to change")
        };
        let mut c = self.client();
        let pw = password.replace('\'', "''");
        c.batch_execute(&format!("CREATE ROLE {user} LOGIN PASSWORD '{pw}'"))
            .expect("CREATE ROLE");
        c.batch_execute(&format!("CREATE DATABASE {user} OWNER {user}"))
            .expect("CREATE DATABASE");
        // The first matching line counts: this role's line goes before the file's `trust` ones.
        let hba = self.data_dir().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("reading pg_hba.conf");
        std::fs::write(&hba, format!("local all {user} scram-sha-256\n{old}"))
            .expect("writing pg_hba.conf");
        c.batch_execute("SELECT pg_reload_conf()")
            .expect("reloading the configuration");
        let sock = dir.path().display();
        let without = format!("postgresql:///{user}?host={sock}&port={port}&user={user}");
        // The reload is asynchronous: wait until a login without the password is refused.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while postgres::Client::connect(&without, postgres::NoTls).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "pg_hba.conf was not reloaded in 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        format!("postgresql://{user}:{password}@/{user}?host={sock}&port={port}")
    }
}

/// The newest `/usr/lib/postgresql/N/bin` that has `initdb`.
fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL program of `bin`, run as the `postgres` user when we are root.
fn command(bin: &Path, as_postgres: bool, program: &str) -> Command {
    let exe = bin.join(program);
    if !as_postgres {
        return Command::new(exe);
    }
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(exe);
    c
}

/// Runs a PostgreSQL program of `bin`, as the `postgres` user when we are root (the server
/// refuses to run as root), and panics with its output if it fails.
fn run(bin: &Path, as_postgres: bool, program: &str, args: &[&str]) {
    let mut cmd = command(bin, as_postgres, program);
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `initdb` and `pg_ctl start` in a fresh temp dir; the socket lives in the dir itself. With
/// `tls`, also a TCP listener on 127.0.0.1 with TLS on, and the URL goes there.
fn private(bin: PathBuf, tls: Option<&crate::sandbox::TlsFiles>) -> PgCluster {
    let dir = tempfile::Builder::new()
        .prefix("ft-pg-")
        .tempdir_in("/tmp")
        .expect("a temp dir for PostgreSQL");
    let as_postgres = crate::sandbox::effective_uid().expect("our uid") == 0;
    if as_postgres {
        let st = Command::new("chown")
            .args(["postgres:", &dir.path().display().to_string()])
            .status()
            .expect("running chown");
        assert!(st.success(), "chown postgres: {}", dir.path().display());
    }
    let data = dir.path().join("data").display().to_string();
    let sock = dir.path().display().to_string();
    run(
        &bin,
        as_postgres,
        "initdb",
        &["-D", &data, "-A", "trust", "-U", USER, "-N"],
    );
    // Any port: with no TCP listener it only names the socket, which is in our own dir. With
    // TLS, a port the system just gave out (PostgreSQL cannot be told to take port 0).
    let port = match tls {
        None => 20_000 + (std::process::id() % 20_000) + COUNTER.fetch_add(1, Ordering::Relaxed),
        Some(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port() as u32,
    };
    let mut opts = format!("-p {port} -k {sock} -c fsync=off");
    match tls {
        None => opts.push_str(" -c listen_addresses=''"),
        Some(files) => {
            let data = dir.path().join("data");
            for (from, to) in [
                (&files.cert_pem, "server.pem"),
                (&files.key_pem, "server.key"),
            ] {
                std::fs::copy(from, data.join(to)).expect("copying the server's TLS files");
                let path = data.join(to).display().to_string();
                if as_postgres {
                    let st = Command::new("chown")
                        .args(["postgres:", &path])
                        .status()
                        .expect("running chown");
                    assert!(st.success(), "chown postgres: {path}");
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod 600 the TLS files");
            }
            opts.push_str(
                " -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file=server.pem \
                 -c ssl_key_file=server.key",
            );
        }
    }
    pg_ctl_start(&bin, as_postgres, dir.path(), &opts);
    let url = match tls {
        None => format!("postgresql:///postgres?host={sock}&port={port}&user={USER}"),
        Some(_) => format!("postgresql://{USER}@localhost:{port}/postgres"),
    };
    PgCluster {
        url,
        kind: Kind::Private {
            dir,
            bin,
            as_postgres,
            opts,
            port,
            mounts: Default::default(),
        },
    }
}

/// `pg_ctl start` of the cluster in `dir` (data in `dir/data`, its log appended to `dir/log`),
/// waiting until it accepts connections.
fn pg_ctl_start(bin: &Path, as_postgres: bool, dir: &Path, opts: &str) {
    let data = dir.join("data").display().to_string();
    let log = dir.join("log").display().to_string();
    run(
        bin,
        as_postgres,
        "pg_ctl",
        &["-D", &data, "-o", opts, "-l", &log, "-w", "start"],
    );
}

/// A fresh database on the server of `server` (a URL), named after this process and a count.
fn external(server: &str) -> PgCluster {
    let database = format!(
        "ft_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let mut c = postgres::Client::connect(server, postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to FOLDERTRACK_TEST_PG_URL: {e}"));
    // One statement per call: several in one string run as one transaction, which CREATE
    // DATABASE refuses.
    for sql in [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
    ] {
        c.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql} on FOLDERTRACK_TEST_PG_URL: {e}"));
    }
    let sep = if server.contains('?') { '&' } else { '?' };
    PgCluster {
        url: format!("{server}{sep}dbname={database}"),
        kind: Kind::External {
            server: server.to_string(),
            database,
        },
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Private {
                dir,
                bin,
                as_postgres,
                mounts,
                ..
            } => {
                let data = dir.path().join("data").display().to_string();
                let mut cmd = command(bin, *as_postgres, "pg_ctl");
                let _ = cmd
                    .args(["-D", &data, "-m", "immediate", "stop"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                // The server is down: nothing holds the mounts' files any more.
                for m in mounts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let _ = Command::new("umount").arg(m).status();
                }
            }
            Kind::External { server, database } => {
                if let Ok(mut c) = postgres::Client::connect(server, postgres::NoTls) {
                    let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {database}"));
                }
            }
        }
    }
}
