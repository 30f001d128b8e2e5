//! Benchmark: a record's timeline on the web pages (issue 19). One record (account:acme) with
//! N email activities (default 10,000), tracked by one `foldertrack sync` from a private
//! Dovecot, then served by `foldertrack web` alone. Measured per store engine (sled, and a
//! private PostgreSQL cluster over its Unix socket):
//!
//! * the first timeline page, `/records/account/acme`, requested R times (default 100):
//!   p50 / p90 / p99 of the whole request (connect, `Connection: close`, read to the end);
//! * every page of the timeline, following the "Older" link (`?before=ID`) from the first to
//!   the last: pages, activities seen (asserted: all N, no repeats, newest first), the time
//!   for all of them and the slowest page;
//! * the web process's resident set (`VmRSS`) before and after that paging, samples during
//!   it, after a second pass and 5 s later, and its peak (`VmHWM`) over its whole life. On PostgreSQL the server's memory is not
//!   in these numbers: only the reader's.
//!
//! The target: the first page in ≤ 50 ms at p50, the memory flat while paging.
//!
//! Run: `BENCH_WEB=1 ./scripts/bench.sh`, or `cargo bench --bench web`.
//! Knobs: WEB_ACTIVITIES (10000), WEB_REQUESTS (100), WEB_ENGINES (sled,postgres),
//! WEB_DEBUG=1 (echo the web process's log).

mod common;

use common::{knob, loadavg as load, message, pct, proc_kb};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::pg::PgCluster;
use testkit::sandbox::Sandbox;
use testkit::{Config, Imap, Mailbox, Rule};

const TOKEN: &str = "web-bench-token";
/// The mailbox: alice owns account:acme in the standard records, so her mail may link to it.
const USER: &str = "alice";
const FOLDER: &str = "INBOX/Tracked/Acme";
const RECORD: &str = "/records/account/acme";
/// Activities on a timeline page (`src/web`'s `PAGE`).
const PAGE: usize = 25;
/// RSS samples taken while paging (besides before and after).
const SAMPLES: usize = 10;

/// One engine's results.
struct Row {
    engine: String,
    /// The first request of all (the sanity check), ms.
    cold: f64,
    first: Vec<f64>,
    paging: Paging,
    load: (String, String),
    /// PostgreSQL: transactions the database committed per first-page request.
    xacts: Option<f64>,
}

/// What paging through the whole timeline gave.
struct Paging {
    pages: usize,
    seen: usize,
    secs: f64,
    /// Milliseconds per page, with the page's path.
    times: Vec<(f64, String)>,
    rss_before: u64,
    rss_after: u64,
    rss_samples: Vec<u64>,
    /// After a second pass through every page: a one-time warm-up (caches filling) leaves it
    /// where the first pass ended, a growth per request would not.
    rss_second: u64,
    /// Five seconds after that (the trimmer returns freed heap every few seconds).
    rss_settled: u64,
    hwm: u64,
}

/// A private Dovecot with `n` small messages in alice's `INBOX/Tracked/Acme`.
fn dovecot(dir: &Path, n: usize) -> Sandbox {
    let t = Instant::now();
    let sb = Sandbox::start(&dir.join("dovecot"), &testkit::cast()).unwrap();
    let mut c = Imap::login(sb.port, USER);
    c.create("INBOX/Tracked");
    c.create(FOLDER);
    let msgs: Vec<Vec<u8>> = (0..n)
        .map(|i| message("web", USER, i).into_bytes())
        .collect();
    for chunk in msgs.chunks(1000) {
        c.append_many(FOLDER, chunk, "");
    }
    eprintln!(
        "dovecot on 127.0.0.1:{}: {n} messages appended ({:.1} s)",
        sb.port,
        t.elapsed().as_secs_f64()
    );
    sb
}

/// Runs `foldertrack ARGS` in `work`, asserting success; its stdout.
fn ft(work: &Path, args: &[&str]) -> String {
    let o = Command::new(testkit::env::foldertrack_bin())
        .current_dir(work)
        .args(["--config", "foldertrack.toml"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "foldertrack {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The work dir of one engine: config (`[web]` on port 0, the rule linking the folder to
/// account:acme, `store` as the `[store]` table), the standard records, and the folder
/// tracked by one `foldertrack sync` (`$Tracked` cleared first, since another engine's sync
/// set it). Asserts all `n` became activities.
fn track(work: &Path, port: u16, store: Option<&str>, n: usize) {
    std::fs::create_dir_all(work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();
    let mut config = Config::new()
        .top("[web]\nlisten = \"127.0.0.1:0\"\n")
        .mailbox(Mailbox::new(USER, port).rule(Rule::record(FOLDER, "account:acme")));
    if let Some(s) = store {
        config = config.store(s);
    }
    config.write(work);
    std::fs::write(work.join("records.jsonl"), testkit::RECORDS).unwrap();
    ft(work, &["records", "import", "records.jsonl"]);
    let mut c = Imap::login(port, USER);
    let name = testkit::imap::quote(&c.name(FOLDER));
    c.cmd(&format!("SELECT {name}"));
    c.cmd("UID STORE 1:* -FLAGS.SILENT ($Tracked)");
    let t = Instant::now();
    ft(work, &["sync"]);
    let secs = t.elapsed().as_secs_f64();
    let st: serde_json::Value = serde_json::from_str(&ft(work, &["status", "--json"])).unwrap();
    assert_eq!(
        st["activities"].as_u64(),
        Some(n as u64),
        "every message tracked: {st}"
    );
    eprintln!("{n} activities tracked by one sync in {secs:.1} s");
}

/// A `foldertrack web` process, killed when dropped (a failed assertion included).
struct WebProcess(Child);

impl Drop for WebProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `foldertrack web` in `work` and waits for its "serving the web pages" line: the
/// process and the address it serves on. Its log is drained (and echoed with WEB_DEBUG).
fn start_web(work: &Path) -> (WebProcess, SocketAddr) {
    let mut child = WebProcess(
        Command::new(testkit::env::foldertrack_bin())
            .current_dir(work)
            .args(["--config", "foldertrack.toml", "web"])
            .env("FOLDERTRACK_WEB_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .env_remove("FOLDERTRACK_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let echo = std::env::var("WEB_DEBUG").is_ok();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in stderr.lines().map_while(Result::ok) {
            if echo {
                eprintln!("web: {l}");
            }
            if l.contains(testkit::agent::WEB_SERVING) {
                let _ = tx.send(l);
            }
        }
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
        panic!("`foldertrack web` logged no address within 60 s");
    };
    let addr = testkit::agent::logged_addr(&line);
    (child, addr)
}

/// GET `path` with the bearer token, one connection (`Connection: close`), read to its end;
/// asserts 200. The milliseconds it took and the body.
fn get(addr: SocketAddr, path: &str) -> (f64, String) {
    let t = Instant::now();
    let (code, _, body) = testkit::http::raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    );
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(code, 200, "GET {path}: {body}");
    (ms, body)
}

/// The activity ids a timeline page links to, in page order.
fn activity_ids(html: &str) -> Vec<u64> {
    html.split("href=\"/activities/")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .collect()
}

/// The page the "Older" link leads to (`/records/account/acme?before=ID`), if any.
fn older(html: &str) -> Option<String> {
    let rest = html.split(&format!("href=\"{RECORD}?before=")).nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let id: u64 = digits.parse().ok()?;
    Some(format!("{RECORD}?before={id}"))
}

/// Every page of the timeline, from the first, following "Older": asserts all `n` activities
/// seen once each, newest first.
fn page_through(addr: SocketAddr, pid: u32, n: usize) -> Paging {
    let rss_before = proc_kb(pid, "VmRSS");
    let every = (n.div_ceil(PAGE) / SAMPLES).max(1);
    let (mut seen, mut last) = (HashSet::new(), u64::MAX);
    let (mut times, mut rss_samples) = (Vec::new(), Vec::new());
    let mut next = Some(RECORD.to_string());
    let t = Instant::now();
    while let Some(path) = next {
        let (ms, body) = get(addr, &path);
        let ids = activity_ids(&body);
        assert!(!ids.is_empty(), "{path} lists no activity");
        for id in ids {
            assert!(
                id < last,
                "{path}: activity {id} after {last} (newest first)"
            );
            assert!(seen.insert(id), "{path}: activity {id} seen twice");
            last = id;
        }
        next = older(&body);
        times.push((ms, path));
        if times.len() % every == 0 {
            rss_samples.push(proc_kb(pid, "VmRSS"));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(seen.len(), n, "every activity on some page");
    let rss_after = proc_kb(pid, "VmRSS");
    let mut again = Some(RECORD.to_string());
    while let Some(path) = again {
        again = older(&get(addr, &path).1);
    }
    let rss_second = proc_kb(pid, "VmRSS");
    std::thread::sleep(Duration::from_secs(5));
    Paging {
        rss_second,
        rss_settled: proc_kb(pid, "VmRSS"),
        pages: times.len(),
        seen: seen.len(),
        secs,
        times,
        rss_before,
        rss_after,
        rss_samples,
        hwm: proc_kb(pid, "VmHWM"),
    }
}

/// Transactions committed on `url`'s database per first-page request, over 10 requests.
/// PostgreSQL 15 flushes a backend's statistics when it idles, after up to 10 s: a wait
/// before each reading.
fn xacts_per_request(url: &str, addr: SocketAddr) -> f64 {
    const REQUESTS: usize = 10;
    let mut db = postgres::Client::connect(url, postgres::NoTls).expect("an SQL session");
    let mut xacts = || -> i64 {
        std::thread::sleep(Duration::from_secs(11));
        db.query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let x0 = xacts();
    for _ in 0..REQUESTS {
        get(addr, RECORD);
    }
    // Less the reading's own transaction.
    (xacts() - x0 - 1) as f64 / REQUESTS as f64
}

/// One engine: a work dir, the folder tracked, `foldertrack web` started, then measured.
/// `pg`: the private PostgreSQL cluster, or none (sled in the data dir).
fn run_engine(dir: &Path, engine: &str, port: u16, pg: Option<&PgCluster>, n: usize) -> Row {
    let work = dir.join(engine);
    let store = pg.map(|pg| {
        format!(
            "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n",
            pg.url()
        )
    });
    track(&work, port, store.as_deref(), n);
    let (web, addr) = start_web(&work);
    let pid = web.0.id();
    eprintln!(
        "{engine}: serving on {addr}, RSS {:.1} MB",
        proc_kb(pid, "VmRSS") as f64 / 1024.0
    );
    let load_start = load();
    let (cold, body) = get(addr, RECORD);
    let listed = activity_ids(&body).len();
    assert_eq!(
        listed, PAGE,
        "the first page lists {PAGE} activities:\n{body}"
    );
    assert!(older(&body).is_some(), "the first page links to older ones");
    let requests = knob("WEB_REQUESTS", 100);
    let first: Vec<f64> = (0..requests).map(|_| get(addr, RECORD).0).collect();
    let paging = page_through(addr, pid, n);
    let load_end = load();
    let xacts = pg.map(|pg| xacts_per_request(pg.url(), addr));
    drop(web);
    Row {
        engine: engine.to_string(),
        cold,
        first,
        paging,
        load: (load_start, load_end),
        xacts,
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn print_table(n: usize, rows: &[Row]) {
    println!("\n{n} activities on one record (account:acme), `foldertrack web` alone, one connection per request");
    println!("| engine | first page p50 / p90 / p99 ms | pages | activities seen | all pages s | RSS before / after paging MB | growth % | peak RSS (VmHWM) MB | load (1 min) start → end |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (p50, p90, p99) = pct(r.first.clone());
        let p = &r.paging;
        let growth = (p.rss_after as f64 - p.rss_before as f64) / p.rss_before.max(1) as f64;
        println!(
            "| {} | {p50:.1} / {p90:.1} / {p99:.1} | {} | {} | {:.2} | {:.1} / {:.1} | {:+.1} | {:.1} | {} → {} |",
            r.engine,
            p.pages,
            p.seen,
            p.secs,
            mb(p.rss_before),
            mb(p.rss_after),
            growth * 100.0,
            mb(p.hwm),
            r.load.0.split(' ').next().unwrap_or(""),
            r.load.1.split(' ').next().unwrap_or("")
        );
    }
    for r in rows {
        let p = &r.paging;
        let (q50, q90, q99) = pct(p.times.iter().map(|t| t.0).collect());
        let slowest = p.times.iter().max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
        let samples: Vec<String> = p
            .rss_samples
            .iter()
            .map(|&k| format!("{:.1}", mb(k)))
            .collect();
        println!(
            "\n{}: RSS after a second pass through every page {:.1} MB, 5 s later {:.1} MB",
            r.engine,
            mb(p.rss_second),
            mb(p.rss_settled)
        );
        println!(
            "{}: first request {:.1} ms (cold); paging p50 / p90 / p99 {q50:.1} / {q90:.1} / {q99:.1} ms per page, slowest {:.1} ms ({}), last page {:.1} ms; RSS while paging MB: {}",
            r.engine,
            r.cold,
            slowest.0,
            slowest.1,
            p.times.last().map_or(0.0, |t| t.0),
            samples.join(", ")
        );
        if let Some(x) = r.xacts {
            println!(
                "{}: {x:.1} database transactions per first-page request (after the paging)",
                r.engine
            );
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n = knob("WEB_ACTIVITIES", 10_000);
    assert!(
        n > PAGE,
        "WEB_ACTIVITIES must be more than one page ({PAGE})"
    );
    let engines = std::env::var("WEB_ENGINES").unwrap_or_else(|_| "sled,postgres".into());
    let tmp = tempfile::Builder::new()
        .prefix("ft-web-")
        .tempdir_in("/tmp")
        .unwrap();
    let load_start = load();
    let sb = dovecot(tmp.path(), n);
    let mut rows = Vec::new();
    for engine in engines.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match engine {
            "sled" => rows.push(run_engine(tmp.path(), "sled", sb.port, None, n)),
            "postgres" => {
                let pg =
                    PgCluster::start().expect("WEB_ENGINES=postgres needs PostgreSQL installed");
                rows.push(run_engine(tmp.path(), "postgres", sb.port, Some(&pg), n));
            }
            other => panic!("WEB_ENGINES: unknown engine {other} (sled, postgres)"),
        }
    }
    drop(sb);
    print_table(n, &rows);
    println!("\nload average at start {load_start}, at end {}", load());
}
