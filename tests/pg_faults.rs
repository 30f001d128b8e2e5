//! Faults on the PostgreSQL engine (issue 16), each against a real server: a private cluster
//! (`testkit::pg::PgCluster`) that the tests stop, start, lock and fill, and a private Dovecot.
//!
//! - a URL that is not one, and a refused password: exit 2, a clear error, never the password;
//! - the database down when `sync` (or `run`) starts: exit 1, the error names host, database
//!   and user, never the password; the next `sync` tracks everything once;
//! - the database down, then restarted, while `run` goes on: the mailbox backs off, `/healthz`
//!   says 503 naming the database, an alert is raised, and when it is back the agent resumes on
//!   its own: every message delivered before, during and after the outage tracked once;
//! - a statement stuck behind a lock: `[store] statement_timeout` cancels it, the agent backs
//!   off, and tracks everything once the lock is gone;
//! - a full disk under the database (its tables on a small tmpfs tablespace; root only): a
//!   clear error, the reason in `status` while it lasts, nothing lost, everything tracked once
//!   there is room, and then the outage and its alert written.
//!
//! `foldertrack` killed with SIGKILL mid-batch on PostgreSQL is `tests/crashloop.rs`, which
//! `scripts/test.sh` runs again with `FOLDERTRACK_TEST_ENGINE=postgres`.
//!
//! Without PostgreSQL these tests print `SKIPPED` and pass; under CI that is a failure.

use serde_json::Value;
use std::time::{Duration, Instant};
use testkit::pg::PgCluster;
use testkit::*;

/// The database password of the tests' role: it must appear in no output and no log.
const SECRET: &str = "s3cret-pw";

/// A private cluster with a role `ft` that logs in with [`SECRET`]: the cluster and that
/// role's URL. `None` (the test skips) without PostgreSQL, or on `FOLDERTRACK_TEST_PG_URL`.
fn cluster(what: &str) -> Option<(PgCluster, String)> {
    let pg = PgCluster::start()?;
    if !pg.require_private(what) {
        return None;
    }
    let url = pg.create_login("ft", SECRET);
    Some((pg, url))
}

/// The `[store]` table for `url`, plus `extra` lines.
fn store(url: &str, extra: &str) -> String {
    format!(
        "engine = \"postgres\"\nurl = \"{url}\"\ntls = \"disable\"\nallow_plaintext = true\n{extra}"
    )
}

/// Alice's mailbox with the Acme rule on `url`'s database, with `/metrics` and `/healthz`;
/// the folders created and the standard records imported.
fn setup(e: &Env, url: &str, extra: &str) {
    setup_with(e, url, extra, "");
}

/// [`setup`] with `top` as top-level settings.
fn setup_with(e: &Env, url: &str, extra: &str, top: &str) {
    e.create_folders("alice", &["INBOX/Tracked", ACME]);
    Config::new()
        .top(top)
        .mailbox(e.mailbox("alice").rule(acme()))
        .metrics()
        .store(&store(url, extra))
        .write(&e.work);
    e.import_records(RECORDS);
}

/// Appends messages `from..to` (subject `pg i`, Message-ID `<pgi@acme.com>`) to Acme.
fn deliver(e: &Env, from: usize, to: usize) {
    let mut c = e.imap("alice");
    for i in from..to {
        c.append(
            ACME,
            &mail(&format!("pg {i}"), &format!("<pg{i}@acme.com>")),
        );
    }
}

/// An SQL session on the tests' database, as its owner `ft`. Its statements give up after
/// 30 s: a test that waits for a lock fails, it does not hang.
fn sql(url: &str) -> postgres::Client {
    let mut c =
        postgres::Client::connect(url, postgres::NoTls).expect("an SQL session on the database");
    c.batch_execute("SET statement_timeout = '30s'").unwrap();
    c
}

/// (activities, distinct Message-IDs, sources) in the database, read with SQL.
fn counts(url: &str) -> (i64, i64, i64) {
    let row = sql(url)
        .query_one(
            "SELECT (SELECT count(*) FROM activities),
                    (SELECT count(DISTINCT message_id) FROM activities),
                    (SELECT count(*) FROM sources)",
            &[],
        )
        .expect("counting with SQL");
    (row.get(0), row.get(1), row.get(2))
}

/// Waits until the database holds `n` activities (read with SQL every 50 ms): the time it took.
fn wait_tracked(url: &str, n: i64, secs: u64) -> Duration {
    let t = Instant::now();
    wait_for(&format!("{n} activities in the database"), secs, || {
        counts(url).0 >= n
    });
    t.elapsed()
}

/// Asserts, through the CLI and with SQL, that messages `0..n` are each tracked once, from
/// one source each: nothing lost, nothing doubled.
fn assert_tracked_once(e: &Env, url: &str, n: usize) {
    let acts = e.activities();
    assert_each_once(&acts, n);
    for i in 0..n {
        assert_eq!(
            by_subject(&acts, &format!("pg {i}")).len(),
            1,
            "`pg {i}` tracked once"
        );
    }
    let n = n as i64;
    assert_eq!(counts(url), (n, n, n), "(activities, Message-IDs, sources)");
}

/// A command's stdout and stderr.
fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn sync_with_the_database_down_exits_1_naming_host_database_and_user_never_the_password() {
    let e = env();
    let Some((pg, url)) = cluster("stopping the database") else {
        return;
    };
    setup(&e, &url, "");
    deliver(&e, 0, 3);
    e.ok(&["sync"]);
    assert_tracked_once(&e, &url, 3);
    pg.stop_server("fast");
    deliver(&e, 3, 5);
    let sock = pg.socket_dir().unwrap().display().to_string();
    // `run` too (a service manager starts it again: exit 1, not 2).
    for cmd in ["sync", "run"] {
        let (code, out) = run_traced(&e, &[cmd]);
        assert_eq!(code, Some(1), "`{cmd}`: a runtime failure: {out}");
        assert!(out.contains(&sock), "names the host: {out}");
        assert!(out.contains("database \"ft\""), "names the database: {out}");
        assert!(out.contains("user \"ft\""), "names the user: {out}");
        assert!(
            out.contains("is the server running"),
            "says what to check: {out}"
        );
        assert!(!out.contains(SECRET), "never the password: {out}");
    }
    pg.start_server();
    e.ok(&["sync"]);
    assert_tracked_once(&e, &url, 5);
}

/// The next watched log line holding `what`, within `secs` seconds.
fn next_line(agent: &Agent, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match agent.lines().recv_timeout(left) {
            Ok((_, line)) if line.contains(what) => return line,
            Ok(_) => {}
            Err(_) => panic!(
                "no log line with `{what}` in {secs} s; log:\n{}",
                agent.log_text()
            ),
        }
    }
}

/// The `delay_ms` of a "backing off" log line.
fn delay_ms(line: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("delay_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no delay_ms in `{line}`"))
}

#[test]
fn database_down_while_run_goes_on_backs_off_says_503_alerts_and_resumes_losing_nothing() {
    let e = env();
    let Some((pg, url)) = cluster("stopping the database under a running agent") else {
        return;
    };
    setup(&e, &url, "");
    // Every line of every crate: the password must be in none.
    let spec = e.agent().rust_log("trace");
    let agent = e.start_agent_with(&spec.watch(&["backing off", "store answers again"]));
    let port = agent.metrics_addr();
    deliver(&e, 0, 5);
    wait_tracked(&url, 5, 30);
    assert_eq!(testkit::http::get(port, "/healthz"), (200, "ok\n".into()));

    // Down as if it crashed, while mail keeps arriving.
    pg.stop_server("immediate");
    let down = Instant::now();
    deliver(&e, 5, 10);
    let mut body = String::new();
    wait_for("/healthz to say 503 naming the database", 10, || {
        let (code, b) = testkit::http::get(port, "/healthz");
        body = b;
        code == 503
    });
    let sock = pg.socket_dir().unwrap().display().to_string();
    assert!(
        body.starts_with("store: cannot read postgres (") && body.contains(&sock),
        "names the database: {body}"
    );
    assert!(body.contains("database ft"), "{body}");
    // The mailbox backs off, longer each time (1, 2, 4 s ± 20 %).
    let delays: Vec<u64> = (0..3)
        .map(|_| delay_ms(&next_line(&agent, "backing off", 30)))
        .collect();
    assert!(
        delays.windows(2).all(|w| w[1] > w[0]),
        "the backoff grows: {delays:?} ms"
    );

    pg.start_server();
    let outage = down.elapsed();
    deliver(&e, 10, 15);
    let resumed = wait_tracked(&url, 15, 120);
    next_line(&agent, "store answers again", 10);
    wait_for("/healthz to say ok again", 10, || {
        testkit::http::get(port, "/healthz").0 == 200
    });
    assert_tracked_once(&e, &url, 15);
    let st = e.status();
    let alert = st["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["message"]
                .as_str()
                .unwrap()
                .contains("store could not be used")
        })
        .unwrap_or_else(|| panic!("an alert for the outage: {st}"));
    let message = alert["message"].as_str().unwrap();
    assert!(message.contains("PostgreSQL"), "{message}");
    let outages = st["mailboxes"][0]["outages"].as_array().unwrap();
    let last = outages
        .last()
        .expect("the outage is in the mailbox's health");
    assert!(last["to"].is_string(), "and closed: {last}");
    assert!(
        !agent.log_text().contains(SECRET),
        "never the password in the log"
    );
    eprintln!(
        "database down {:.1} s (5 messages delivered meanwhile); all 15 tracked {:.1} s after it \
         was back; backoff {delays:?} ms",
        outage.as_secs_f64(),
        resumed.as_secs_f64()
    );

    // Restarted while mail arrives one message at a time: the agent's pooled sessions are
    // gone with the old server; it reconnects and tracks each message once.
    let restarted = std::thread::scope(|s| {
        let mail = s.spawn(|| deliver(&e, 15, 30));
        pg.stop_server("fast");
        pg.start_server();
        let t = Instant::now();
        mail.join().unwrap();
        wait_tracked(&url, 30, 120);
        t.elapsed()
    });
    assert_tracked_once(&e, &url, 30);
    assert!(
        !agent.log_text().contains(SECRET),
        "never the password in the log"
    );
    eprintln!(
        "restarted under 15 arriving messages: all tracked {:.1} s after the restart",
        restarted.as_secs_f64()
    );
}

/// `foldertrack ARGS` with every log line (`RUST_LOG=trace`): its status code and its output.
fn run_traced(e: &Env, args: &[&str]) -> (Option<i32>, String) {
    let o = e
        .command()
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .expect("run foldertrack");
    (o.status.code(), text(&o))
}

#[test]
fn a_url_that_is_not_one_and_a_refused_password_exit_2_with_a_clear_error_never_the_password() {
    let e = env();
    let Some((pg, url)) = cluster("a role with a password") else {
        return;
    };
    setup(&e, &url, "");
    let config = e.config_path();
    let good = std::fs::read_to_string(&config).unwrap();

    // Not a URL: the config's own error (file, line, key), the password masked.
    let bad = format!("postgresql://ft:{SECRET}@[::1:bad/ft");
    std::fs::write(&config, good.replace(&url, &bad)).unwrap();
    for cmd in ["sync", "run", "status"] {
        let (code, out) = run_traced(&e, &[cmd]);
        assert_eq!(code, Some(2), "`{cmd}`: a config error: {out}");
        assert!(out.contains("store.url"), "names the key: {out}");
        assert!(
            out.contains("is not a PostgreSQL connection string"),
            "says what is wrong: {out}"
        );
        assert!(!out.contains(SECRET), "never the password: {out}");
    }

    // A wrong password: refused by the server, named with host, database and user.
    let wrong = "n0t-the-pw";
    std::fs::write(&config, good.replace(SECRET, wrong)).unwrap();
    let sock = pg.socket_dir().unwrap().display().to_string();
    for cmd in ["sync", "run", "status"] {
        let (code, out) = run_traced(&e, &[cmd]);
        assert_eq!(code, Some(2), "`{cmd}`: the configuration's mistake: {out}");
        for part in [
            "cannot connect to PostgreSQL at",
            sock.as_str(),
            "database \"ft\", user \"ft\"",
            "password authentication failed for user \"ft\"",
            "check the user, password and database of [store] url",
        ] {
            assert!(out.contains(part), "`{cmd}` says `{part}`: {out}");
        }
        assert!(
            !out.contains(wrong) && !out.contains(SECRET),
            "never a password: {out}"
        );
    }
    // The server logged the refusal (the test is real), and the right password works.
    let server_log = std::fs::read_to_string(pg.socket_dir().unwrap().join("log")).unwrap();
    assert!(server_log.contains("password authentication failed for user \"ft\""));
    std::fs::write(&config, good).unwrap();
    e.ok(&["sync"]);
}

#[test]
fn a_statement_stuck_behind_a_lock_times_out_and_the_agent_tracks_all_once_it_is_released() {
    let e = env();
    let Some((_pg, url)) = cluster("a statement timeout") else {
        return;
    };
    setup(&e, &url, "statement_timeout = 1\n");
    let agent = e.start_agent_with(&e.agent().watch(&["pass failed", "backing off"]));
    deliver(&e, 0, 3);
    wait_tracked(&url, 3, 30);

    // Another session holds the activities table; mail arrives meanwhile.
    let mut locker = sql(&url);
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let locked = Instant::now();
    deliver(&e, 3, 6);
    let failed = next_line(&agent, "pass failed", 30);
    let to_fail = locked.elapsed();
    for part in [
        "canceling statement due to statement timeout",
        "SQLSTATE 57014",
        "statement_timeout",
    ] {
        assert!(failed.contains(part), "the error says `{part}`: {failed}");
    }
    // It backs off and tries again, and fails again while the lock is held.
    next_line(&agent, "backing off", 30);
    next_line(&agent, "pass failed", 30);
    // (Read in the lock's own transaction: any other session would wait for it.)
    let n: i64 = lock
        .query_one("SELECT count(*) FROM activities", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3, "nothing half-written");
    lock.rollback().unwrap();
    let released = Instant::now();
    wait_tracked(&url, 6, 60);
    let resumed = released.elapsed();
    assert_tracked_once(&e, &url, 6);
    let st = e.status();
    assert!(
        st["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["message"].as_str().unwrap().contains("statement timeout")),
        "an alert: {st}"
    );
    eprintln!(
        "statement_timeout = 1 s: the first pass failed {:.1} s after the lock; all tracked \
         {:.1} s after it was released",
        to_fail.as_secs_f64(),
        resumed.as_secs_f64()
    );
}

/// A message to alice with an attachment of `bytes` random (incompressible) bytes.
fn with_random_attachment(i: usize, bytes: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: pg {i}\r\nMessage-ID: <pg{i}@acme.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nsee file\r\n--b\r\nContent-Type: application/octet-stream; name=f{i}.bin\r\n\
         Content-Disposition: attachment; filename=f{i}.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

/// Bytes used on the filesystem holding `path` (statvfs).
fn used_bytes(path: &std::path::Path) -> u64 {
    let o = std::process::Command::new("df")
        .args(["-B1", "--output=used"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's used bytes")
}

/// The database's tables on a 3 MB tmpfs (a tablespace; root only: elsewhere `SKIPPED`, and a
/// failure under CI), its WAL not: the tables run out of room while the server runs on.
#[test]
fn a_full_database_disk_fails_clearly_with_an_alert_and_loses_nothing_once_there_is_room() {
    let e = env();
    let Some((pg, url)) = cluster("a full database disk") else {
        return;
    };
    // One message per batch: the batches before the disk fills stay committed.
    setup_with(&e, &url, "", "batch_messages = 1\n");
    let at = pg.tmpfs_tablespace("small", 3);
    if !require(at.is_some(), "cannot mount a tmpfs here (needs root)") {
        return;
    }
    let at = at.unwrap();
    pg.client()
        .batch_execute("GRANT CREATE ON TABLESPACE small TO ft")
        .unwrap();
    sql(&url)
        .batch_execute(
            "ALTER TABLE ALL IN TABLESPACE pg_default OWNED BY ft SET TABLESPACE small;
             ALTER INDEX ALL IN TABLESPACE pg_default OWNED BY ft SET TABLESPACE small",
        )
        .unwrap();
    let empty = used_bytes(&at);
    let mut rng = Rng::new(16);
    let files: Vec<Vec<u8>> = (0..8)
        .map(|_| (0..600_000).map(|_| rng.next_u64() as u8).collect())
        .collect();
    let mut c = e.imap("alice");
    for (i, f) in files.iter().enumerate() {
        c.append(ACME, &with_random_attachment(i, f));
    }
    let (code, out) = run_traced(&e, &["sync"]);
    assert_eq!(code, Some(1), "a runtime failure: {out}");
    for part in [
        "No space left on device",
        "SQLSTATE 53100",
        "out of disk space",
    ] {
        assert!(out.contains(part), "the error says `{part}`: {out}");
    }
    let full = used_bytes(&at);
    let before = counts(&url).0;
    assert!(
        (1..8).contains(&before),
        "the disk filled between batches: {before}"
    );

    // The agent on the full disk: it cannot even register (its lease row is on the full disk
    // too), so it backs off, and `status` shows why while the alert cannot be written.
    let agent = e
        .agent()
        .watch(&["cannot register this agent", "store answers again"])
        .start();
    let failed = next_line(&agent, "cannot register this agent", 30);
    assert!(failed.contains("No space left on device"), "{failed}");
    let mut live = Value::Null;
    wait_for("status to show the mailbox backing off", 30, || {
        live = e.status()["mailboxes"][0]["live"].clone();
        live["state"] == "backing off"
    });
    let detail = live["detail"].as_str().unwrap();
    assert!(detail.contains("No space left on device"), "{live}");
    // Room again: the agent tracks the rest on its own, each once, every attachment whole,
    // and records the outage and its alert.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=128m"])
        .arg(&at)
        .status()
        .unwrap();
    assert!(grown.success());
    let room = Instant::now();
    wait_tracked(&url, 8, 120);
    let resumed = room.elapsed();
    next_line(&agent, "store answers again", 10);
    assert_tracked_once(&e, &url, 8);
    let st = e.status();
    assert!(
        st["alerts"].as_array().unwrap().iter().any(|a| {
            let m = a["message"].as_str().unwrap();
            m.contains("store could not be used") && m.contains("No space left on device")
        }),
        "an alert: {st}"
    );
    let outage = st["mailboxes"][0]["outages"]
        .as_array()
        .unwrap()
        .last()
        .cloned();
    assert!(
        outage
            .is_some_and(|o| o["to"].is_string() && o["error"].as_str().unwrap().contains("53100")),
        "the outage, closed: {st}"
    );
    eprintln!(
        "tables: {empty} bytes on the tmpfs before, {full} when full ({before} of 8 tracked); \
         all 8 tracked {:.1} s after it was grown",
        resumed.as_secs_f64()
    );
    for a in e.activities() {
        let i: usize = a["subject"].as_str().unwrap()[3..].parse().unwrap();
        let o = e.run(&["activities", "attachment", &a["id"].to_string(), "1"]);
        assert!(o.status.success(), "attachment of {}", a["subject"]);
        assert!(
            o.stdout == files[i],
            "attachment of {} intact",
            a["subject"]
        );
    }
}
