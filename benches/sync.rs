//! Benchmark: `foldertrack sync` of N messages (default 10,000) from a private Dovecot into an
//! empty store, beside the raw-fetch ceiling (and, when `BENCH_NAIVE=1`, the naive Python
//! ingest) measured in the same run on the same server. Wall time and peak RSS come from
//! `/usr/bin/time`; the table gives each row's ratio to the raw pump.
//!
//! Run: `scripts/bench.sh` (installs Dovecot and `time`, then `cargo bench --bench sync`).
//! Knobs: BENCH_CONFIG (top-level config lines for foldertrack, `\n`-separated, e.g.
//! `batch_bytes = 16777216`), BENCH_SIZES (10000; e.g. 1000,10000,50000), BENCH_RUNS (3), BENCH_NAIVE (0; 1 runs it
//! at BENCH_NAIVE_SIZE, 10000), BENCH_PG (1: the same sync into a private PostgreSQL too, a
//! new cluster per run and a new database of a running cluster per run; 0 skips it),
//! BENCH_SHARED (path of the
//! baseline scripts; default `../shared/bench` beside the repo). Without the baseline scripts
//! the mail is generated here (APPEND) and the raw pump is a built-in socket client.

mod common;

use common::{knob, loadavg};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::sandbox::{Sandbox, SandboxOptions};
use testkit::{Config, Mailbox, Rng, Rule};

struct Measure {
    wall: f64,
    rss_mb: f64,
    cpu: f64,
}

fn timed(cmd: &mut Command) -> Measure {
    let out_file = std::env::temp_dir().join(format!("ft-bench-time-{}", std::process::id()));
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .arg("-f")
        .arg("%e %M %U %S")
        .arg("-o")
        .arg(&out_file)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(d) = cmd.get_current_dir() {
        wrapped.current_dir(d);
    }
    let o = wrapped
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    assert!(
        o.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let t = std::fs::read_to_string(&out_file).unwrap();
    let _ = std::fs::remove_file(&out_file);
    let v: Vec<f64> = t
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Measure {
        wall: v[0],
        rss_mb: v[1] / 1024.0,
        cpu: v[2] + v[3],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Built-in generator, a port of `../shared/bench/populate.py`'s message mix (not byte-identical):
/// ~90 % text 2–20 KB (half of them multipart/alternative with an HTML part, a fifth
/// quoted-printable), ~10 % multipart/mixed with one base64 attachment of 50–500 KB (15 % of
/// them two), ~40 % replies (In-Reply-To + References), ~12 % RFC 2047 UTF-8 subjects, Cc.
fn generate(i: usize, rng: &mut Rng) -> Vec<u8> {
    use base64::Engine;
    let b64 = |bytes: &[u8]| -> String {
        let e = base64::engine::general_purpose::STANDARD.encode(bytes);
        e.as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let words = [
        "order", "widget", "meeting", "quote", "invoice", "renewal", "project", "call", "thanks",
        "schedule", "the", "and", "for", "we", "Grüße", "café", "budget", "review", "deadline",
    ];
    let mut text = String::new();
    let len = rng.range(2_000, 19_999) as usize;
    while text.len() < len {
        text.push_str(words[(rng.next_u64() % words.len() as u64) as usize]);
        text.push(if rng.next_u64().is_multiple_of(12) {
            '\n'
        } else {
            ' '
        });
    }
    let text = text.replace('\n', "\r\n");
    let reply = if i > 0 && rng.next_u64() % 10 < 4 {
        let p = rng.next_u64() % i as u64;
        format!("In-Reply-To: <bench-{p}@example.com>\r\nReferences: <bench-{}@example.com> <bench-{p}@example.com>\r\n", rng.next_u64() % (p + 1))
    } else {
        String::new()
    };
    let subject = if rng.next_u64() % 100 < 12 {
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD
                .encode(format!("Angebot für Bestellung {i} – Rückfrage"))
        )
    } else {
        format!("{} {i}", words[i % words.len()])
    };
    let head = format!(
        "Received: from mx.example.com by imap.example.com; Mon, 2 Sep 2024 10:00:00 +0000\r\nFrom: Sender {n} <sender{n}@acme.com>\r\nTo: alice@example.com\r\nCc: Carol <carol{c}@globex.example>, dave@initech.example\r\nSubject: {subject}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nMessage-ID: <bench-{i}@example.com>\r\n{reply}MIME-Version: 1.0\r\n",
        n = rng.next_u64() % 500,
        c = rng.next_u64() % 50,
    );
    let qp = rng.next_u64().is_multiple_of(5);
    let text_part = if qp {
        let q: String = text
            .replace('ü', "=C3=BC")
            .replace('ß', "=C3=9F")
            .replace('é', "=C3=A9");
        format!("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{q}")
    } else {
        format!("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}")
    };
    if rng.next_u64().is_multiple_of(10) {
        let mut m = format!("{head}Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n{text_part}\r\n");
        let files = if rng.next_u64() % 100 < 15 { 2 } else { 1 };
        for f in 0..files {
            let size = rng.range(50_000, 499_999) as usize;
            let bytes: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
            m.push_str(&format!("--b{i}\r\nContent-Type: application/pdf; name=\"doc{i}-{f}.pdf\"\r\nContent-Disposition: attachment; filename=\"doc{i}-{f}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n", b64(&bytes)));
        }
        m.push_str(&format!("--b{i}--\r\n"));
        m.into_bytes()
    } else if rng.next_u64().is_multiple_of(2) {
        let html = format!(
            "<html><body><p>{}</p></body></html>",
            text.replace("\r\n", "</p>\r\n<p>")
        );
        format!("{head}Content-Type: multipart/alternative; boundary=\"a{i}\"\r\n\r\n--a{i}\r\n{text_part}\r\n--a{i}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--a{i}--\r\n").into_bytes()
    } else {
        format!("{head}{text_part}\r\n").into_bytes()
    }
}

fn imap_cmds(port: u16, cmds: &[Vec<u8>]) -> u64 {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::with_capacity(1 << 20, s);
    let mut buf = Vec::new();
    for c in cmds {
        buf.extend_from_slice(c);
    }
    w.write_all(&buf).unwrap();
    let mut total = 0u64;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

fn populate_builtin(port: u16, count: usize) {
    let mut cmds = vec![
        b"a LOGIN user1 pass\r\n".to_vec(),
        b"b CREATE INBOX.Tracked\r\n".to_vec(),
        b"c CREATE INBOX.Tracked.Acme\r\n".to_vec(),
    ];
    // A fixed state: the built-in data set is the same every run.
    let mut rng = Rng(0x5eed);
    for i in 0..count {
        let m = generate(i, &mut rng);
        let mut c = format!("p{i} APPEND INBOX.Tracked.Acme {{{}+}}\r\n", m.len()).into_bytes();
        c.extend_from_slice(&m);
        c.extend_from_slice(b"\r\n");
        cmds.push(c);
    }
    cmds.push(b"z LOGOUT\r\n".to_vec());
    imap_cmds(port, &cmds);
}

/// One `foldertrack sync` of the folder into the store `work`'s config names (emptied: sled's
/// data dir removed, or a fresh PostgreSQL database); `reset` first clears
/// `$Tracked` so that every run pays the write-back (Dovecot renames each maildir file).
fn sync_once(
    work: &Path,
    bin: &Path,
    port: u16,
    folder: &str,
    count: usize,
    reset: bool,
) -> Measure {
    let _ = std::fs::remove_dir_all(work.join("data"));
    if reset {
        imap_cmds(port, &[format!("a LOGIN user1 pass\r\nb SELECT {folder}\r\nc UID STORE 1:* -FLAGS.SILENT ($Tracked)\r\nd LOGOUT\r\n").into_bytes()]);
    }
    let m =
        timed(
            Command::new(bin)
                .current_dir(work)
                .args(["--config", "foldertrack.toml", "sync"]),
        );
    let out = Command::new(bin)
        .current_dir(work)
        .args(["--config", "foldertrack.toml", "status", "--json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tracked = st["activities"].as_u64().unwrap() + st["quarantined"].as_u64().unwrap();
    assert_eq!(
        tracked as usize, count,
        "every message tracked or quarantined"
    );
    m
}

/// One size: a fresh Dovecot and folder of `count` messages; raw pump, `foldertrack sync` and
/// (when asked) the naive ingest, measured back to back. Rows: (name, median measure).
fn bench_size(count: usize, runs: usize, naive: bool, shared: &Path) -> Vec<(String, Measure)> {
    let have_shared = shared.join("populate.py").exists();
    let tmp = tempfile::Builder::new()
        .prefix("ft-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let opts = SandboxOptions::default(); // user1..user3 / pass, separator '.'
    let dovecot = Sandbox::start(&tmp.path().join("dovecot"), &opts).expect("start dovecot");
    let port = dovecot.port;
    eprintln!(
        "dovecot on 127.0.0.1:{port}; populating {count} messages ({})",
        if have_shared {
            "shared/bench/populate.py, seed 1"
        } else {
            "built-in generator"
        }
    );
    if have_shared {
        let st = Command::new("python3")
            .arg(shared.join("populate.py"))
            .args([
                "--port",
                &port.to_string(),
                "--user",
                "user1",
                "--count",
                &count.to_string(),
                "--seed",
                "1",
                "--sandbox-dir",
            ])
            .arg(&dovecot.dir)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "populate.py failed");
    } else {
        populate_builtin(port, count);
    }
    let folder = "INBOX.Tracked.Acme";
    let fetch_all = format!(
        "a LOGIN user1 pass\r\nb EXAMINE {folder}\r\nc UID FETCH 1:* (BODY.PEEK[])\r\nd LOGOUT\r\n"
    );
    // Warm the page cache and Dovecot's indexes once.
    imap_cmds(port, &[fetch_all.clone().into_bytes()]);
    let cat = shared.join("fetch_cat.sh");
    let mut rows: Vec<(String, Measure)> = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..runs.max(3) {
        raw.push(if cat.exists() {
            timed(
                Command::new("bash")
                    .arg(&cat)
                    .arg(port.to_string())
                    .arg(folder),
            )
        } else {
            let t = std::time::Instant::now();
            imap_cmds(port, &[fetch_all.clone().into_bytes()]);
            Measure {
                wall: t.elapsed().as_secs_f64(),
                rss_mb: f64::NAN,
                cpu: f64::NAN,
            }
        });
    }
    rows.push((
        if cat.exists() {
            "raw pump (shared fetch_cat.sh: bash + dd, no parsing)"
        } else {
            "raw pump (built-in socket reader, no parsing)"
        }
        .into(),
        med(raw),
    ));

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();
    Config::new()
        .top(
            &std::env::var("BENCH_CONFIG")
                .unwrap_or_default()
                .replace("\\n", "\n"),
        )
        .mailbox(Mailbox::new("user1", port).rule(Rule::unlinked("INBOX/Tracked/Acme")))
        .write(&work);
    // BENCH_BIN_B: a second binary (another build of foldertrack), run alternately with the
    // first, run for run, so that an A/B comparison shares the machine's load.
    let mut bins = vec![testkit::env::foldertrack_bin()];
    bins.extend(std::env::var_os("BENCH_BIN_B").map(PathBuf::from));
    let mut ft: Vec<Vec<Measure>> = bins.iter().map(|_| Vec::new()).collect();
    for run in 0..runs {
        for (i, bin) in bins.iter().enumerate() {
            ft[i].push(sync_once(&work, bin, port, folder, count, run + i > 0));
        }
    }
    let mut ft = ft.into_iter();
    rows.push((
        "foldertrack sync (empty store, $Tracked written back)".into(),
        med(ft.next().unwrap_or_default()),
    ));
    if let Some(b) = ft.next() {
        let name = bins[1].display().to_string();
        rows.push((format!("foldertrack sync, B = {name}"), med(b)));
    }
    if knob("BENCH_PG", 1) == 1 {
        if let Some((new, running)) = sync_into_postgres(port, folder, runs, count) {
            rows.push((
                "foldertrack sync into PostgreSQL (a new private cluster per run, Unix socket)"
                    .into(),
                new,
            ));
            rows.push((
                "foldertrack sync into PostgreSQL (a running cluster, a new database per run)"
                    .into(),
                running,
            ));
        }
    }

    if naive && shared.join("naive_ingest.py").exists() {
        let db = tmp.path().join("naive.db");
        let m = timed(
            Command::new("python3")
                .arg(shared.join("naive_ingest.py"))
                .args(["--port", &port.to_string(), "--db"])
                .arg(&db),
        );
        rows.push((
            "naive Python ingest (shared naive_ingest.py, 1 run)".into(),
            m,
        ));
    }
    drop(dovecot);
    rows
}

/// The same sync with `[store] engine = "postgres"`, two ways, run for run alternating:
/// into a new private cluster per run (started before the clock), and into a new database of
/// one cluster that has taken a sync before (an unmeasured one first), over its Unix socket.
/// Why both: a new cluster creates and zero-fills every 16 MB WAL segment the sync writes (430
/// MB for 10,000 messages), where a server that has been writing recycles its old segments;
/// the first is the worst case, the second a server in use. `None` without PostgreSQL.
fn sync_into_postgres(
    port: u16,
    folder: &str,
    runs: usize,
    count: usize,
) -> Option<(Measure, Measure)> {
    let bin = testkit::env::foldertrack_bin();
    let running = testkit::pg::PgCluster::start()?;
    let sync_into = |url: &str| {
        let work = tempfile::Builder::new()
            .prefix("ft-bench-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::write(work.path().join("password"), "pass").unwrap();
        Config::new()
            .store(&format!(
                "engine = \"postgres\"\nurl = \"{url}\"\ntls = \"disable\"\nallow_plaintext = true\n"
            ))
            .mailbox(Mailbox::new("user1", port).rule(Rule::unlinked("INBOX/Tracked/Acme")))
            .write(work.path());
        sync_once(work.path(), &bin, port, folder, count, true)
    };
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        // Run 0 is the warm-up, unmeasured: this cluster has written before.
        let url = new_database(&running, run);
        let m = sync_into(&url);
        // Dropped (50,000 messages are 2 GB); its WAL segments stay for the next run.
        running
            .client()
            .batch_execute(&format!("DROP DATABASE run{run}"))
            .expect("DROP DATABASE");
        if run == 0 {
            continue;
        }
        old.push(m);
        let pg = testkit::pg::PgCluster::start()?;
        new.push(sync_into(pg.url()));
        if run == runs {
            sizes_on_postgres(pg.url(), count);
        }
    }
    Some((med(new), med(old)))
}

/// A new, empty database `run{n}` on `pg`: its URL.
fn new_database(pg: &testkit::pg::PgCluster, n: usize) -> String {
    pg.client()
        .batch_execute(&format!("CREATE DATABASE run{n}"))
        .expect("CREATE DATABASE");
    let url = pg.url();
    assert!(
        url.contains(":///postgres?"),
        "a private cluster's URL names its database: {url}"
    );
    url.replacen(":///postgres?", &format!(":///run{n}?"), 1)
}

/// Where the bytes go on PostgreSQL: the database, and per activity each table with its
/// indexes and TOAST (printed, for README's "where the time goes").
fn sizes_on_postgres(url: &str, count: usize) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect for sizes");
    let db: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .unwrap()
        .get(0);
    let mut line = format!(
        "PostgreSQL after {count} messages: database {:.1} MB",
        db as f64 / 1e6
    );
    for table in [
        "activities",
        "parties",
        "sources",
        "activity_references",
        "attachments",
        "blobs",
    ] {
        let bytes: i64 = c
            .query_one(
                "SELECT pg_total_relation_size($1::text::regclass)",
                &[&table],
            )
            .unwrap()
            .get(0);
        line.push_str(&format!(
            "; {table} {:.0} B/activity",
            bytes as f64 / count.max(1) as f64
        ));
    }
    eprintln!("{line}");
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / listing: nothing to test here
    }
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .or_else(|| std::env::var("BENCH_COUNT").ok())
        .unwrap_or_else(|| "10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs = knob("BENCH_RUNS", 3);
    let naive_at = knob("BENCH_NAIVE_SIZE", 10_000);
    let naive = std::env::var("BENCH_NAIVE").is_ok_and(|v| v == "1");
    let shared = std::env::var("BENCH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench"));
    let mut summary = Vec::new();
    for &count in &sizes {
        let load = loadavg();
        let rows = bench_size(
            count,
            runs,
            naive && (count == naive_at || sizes.len() == 1),
            &shared,
        );
        let load_after = loadavg();
        let raw_wall = rows[0].1.wall;
        let naive_wall = naive_wall(&rows);
        println!(
            "\n{count} messages, median of {runs} runs (raw pump: of {}), load average before {load}, after {load_after}",
            runs.max(3)
        );
        println!("| what | wall s | × raw pump | naive ÷ this | peak RSS MB | CPU s |");
        println!("|---|---|---|---|---|---|");
        for (name, m) in &rows {
            println!(
                "| {name} | {:.3} | {:.2} | {} | {:.1} | {:.2} |",
                m.wall,
                m.wall / raw_wall,
                naive_wall.map_or("–".into(), |n| format!("{:.1}", n / m.wall)),
                m.rss_mb,
                m.cpu
            );
        }
        summary.push((count, rows, load, load_after));
    }
    if summary.len() > 1 {
        println!("\n| messages | raw pump s | sync s | sync × raw | sync CPU s | sync peak RSS MB | naive s | naive ÷ sync | load before → after |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for (count, rows, l0, l1) in &summary {
            let (raw, ft) = (&rows[0].1, &rows[1].1);
            let naive = naive_wall(rows);
            println!(
                "| {count} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {} | {} | {l0} → {l1} |",
                raw.wall,
                ft.wall,
                ft.wall / raw.wall,
                ft.cpu,
                ft.rss_mb,
                naive.map_or("–".into(), |n| format!("{n:.2}")),
                naive.map_or("–".into(), |n| format!("{:.1}", n / ft.wall)),
            );
        }
    }
}

/// The naive ingest's wall time, when it ran at this size (found by name: the PostgreSQL and
/// B rows come before it, and a size without it has them in its place).
fn naive_wall(rows: &[(String, Measure)]) -> Option<f64> {
    rows.iter()
        .find(|(name, _)| name.starts_with("naive"))
        .map(|r| r.1.wall)
}

fn med(v: Vec<Measure>) -> Measure {
    Measure {
        wall: median(v.iter().map(|m| m.wall).collect()),
        rss_mb: median(v.iter().map(|m| m.rss_mb).collect()),
        cpu: median(v.iter().map(|m| m.cpu).collect()),
    }
}
