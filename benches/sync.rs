//! Benchmark: `foldertrack sync` of N messages (default 10,000) from a private Dovecot into an
//! empty store, beside the raw-fetch ceiling (and, when `BENCH_NAIVE=1`, the naive Python
//! ingest) measured in the same run on the same server. Wall time and peak RSS come from
//! `/usr/bin/time`; the table gives each row's ratio to the raw pump.
//!
//! Run: `scripts/bench.sh` (installs Dovecot and `time`, then `cargo bench --bench sync`).
//! Knobs: BENCH_COUNT (10000), BENCH_RUNS (3), BENCH_NAIVE (0), BENCH_SHARED (path of the
//! baseline scripts; default `../shared/bench` beside the repo). Without the baseline scripts
//! the mail is generated here (APPEND) and the raw pump is a built-in socket client.

use foldertrack::sandbox::{Sandbox, SandboxOptions};
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Tiny deterministic PRNG (xorshift64*), so the built-in data set is the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Built-in generator, shaped like the baseline's: ~90 % text 2–20 KB, ~10 % with a 50–500 KB
/// base64 attachment, ~40 % replies.
fn generate(i: usize, rng: &mut Rng) -> Vec<u8> {
    let words = [
        "order", "widget", "meeting", "quote", "invoice", "renewal", "project", "call", "thanks",
        "schedule", "the", "and", "for", "we",
    ];
    let mut text = String::new();
    let len = rng.range(2_000, 20_000) as usize;
    while text.len() < len {
        text.push_str(words[(rng.next() % words.len() as u64) as usize]);
        text.push(if rng.next().is_multiple_of(12) {
            '\n'
        } else {
            ' '
        });
    }
    let text = text.replace('\n', "\r\n");
    let reply = if i > 0 && rng.next() % 10 < 4 {
        format!(
            "In-Reply-To: <bench-{}@example.com>\r\n",
            rng.next() % i as u64
        )
    } else {
        String::new()
    };
    let head = format!(
        "Received: from mx.example.com by imap.example.com; Mon, 2 Sep 2024 10:00:00 +0000\r\nFrom: Sender {n} <sender{n}@acme.com>\r\nTo: alice@example.com\r\nSubject: {w} {i}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nMessage-ID: <bench-{i}@example.com>\r\n{reply}MIME-Version: 1.0\r\n",
        n = rng.next() % 500,
        w = words[i % words.len()]
    );
    if rng.next().is_multiple_of(10) {
        let size = rng.range(50_000, 500_000) as usize;
        let bytes: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let wrapped: Vec<&str> = b64
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("{head}Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--b{i}\r\nContent-Type: application/pdf; name=\"doc{i}.pdf\"\r\nContent-Disposition: attachment; filename=\"doc{i}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b{i}--\r\n", wrapped.join("\r\n")).into_bytes()
    } else {
        format!("{head}Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n").into_bytes()
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

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / listing: nothing to test here
    }
    let count: usize = std::env::var("BENCH_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let shared = std::env::var("BENCH_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench"));
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
            .status()
            .unwrap();
        assert!(st.success(), "populate.py failed");
    } else {
        populate_builtin(port, count);
    }
    let folder = "INBOX.Tracked.Acme";
    let bytes = imap_cmds(
        port,
        &[
            format!("a LOGIN user1 pass\r\nb STATUS {folder} (MESSAGES)\r\nc LOGOUT\r\n")
                .into_bytes(),
        ],
    );
    assert!(bytes > 0);

    let mut rows: Vec<(String, Measure)> = Vec::new();
    // Warm the page cache and Dovecot's indexes once.
    imap_cmds(port, &[format!("a LOGIN user1 pass\r\nb EXAMINE {folder}\r\nc UID FETCH 1:* (BODY.PEEK[])\r\nd LOGOUT\r\n").into_bytes()]);
    let raw_name = if shared.join("fetch_cat.sh").exists() {
        "raw pump (shared fetch_cat.sh)"
    } else {
        "raw pump (built-in)"
    };
    let mut raw = Vec::new();
    for _ in 0..runs.max(3) {
        let m = if shared.join("fetch_cat.sh").exists() {
            timed(
                Command::new("bash")
                    .arg(shared.join("fetch_cat.sh"))
                    .arg(port.to_string())
                    .arg(folder),
            )
        } else {
            let t = std::time::Instant::now();
            imap_cmds(port, &[format!("a LOGIN user1 pass\r\nb EXAMINE {folder}\r\nc UID FETCH 1:* (BODY.PEEK[])\r\nd LOGOUT\r\n").into_bytes()]);
            Measure {
                wall: t.elapsed().as_secs_f64(),
                rss_mb: f64::NAN,
                cpu: f64::NAN,
            }
        };
        raw.push(m);
    }
    rows.push((raw_name.into(), med(raw)));

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("password"), "pass").unwrap();
    std::fs::write(
        work.join("foldertrack.toml"),
        format!("data_dir = \"data\"\n[[mailbox]]\nname = \"user1\"\nowner = \"systemuser:user1\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nallow_plaintext = true\nuser = \"user1\"\npassword_file = \"password\"\n  [[mailbox.rule]]\n  folder = \"INBOX/Tracked/Acme\"\n"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_foldertrack");
    let mut ft = Vec::new();
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(work.join("data"));
        ft.push(timed(Command::new(bin).current_dir(&work).args([
            "--config",
            "foldertrack.toml",
            "sync",
        ])));
        let out = Command::new(bin)
            .current_dir(&work)
            .args(["--config", "foldertrack.toml", "status", "--json"])
            .output()
            .unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let tracked = st["activities"].as_u64().unwrap() + st["quarantined"].as_u64().unwrap();
        assert_eq!(
            tracked as usize, count,
            "every message tracked or quarantined"
        );
    }
    rows.push(("foldertrack sync (empty store)".into(), med(ft)));

    if std::env::var("BENCH_NAIVE").is_ok_and(|v| v == "1")
        && shared.join("naive_ingest.py").exists()
    {
        let db = tmp.path().join("naive.db");
        let m = timed(
            Command::new("python3")
                .arg(shared.join("naive_ingest.py"))
                .args(["--port", &port.to_string(), "--db"])
                .arg(&db),
        );
        rows.push(("naive Python ingest (shared, 1 run)".into(), m));
    }

    let raw_wall = rows[0].1.wall;
    println!(
        "\n{count} messages, {runs} runs each (median), {} ",
        std::env::consts::ARCH
    );
    println!("| what | wall s | × raw pump | peak RSS MB | CPU s |");
    println!("|---|---|---|---|---|");
    for (name, m) in &rows {
        println!(
            "| {name} | {:.3} | {:.2} | {:.1} | {:.2} |",
            m.wall,
            m.wall / raw_wall,
            m.rss_mb,
            m.cpu
        );
    }
    drop(dovecot);
}

fn med(v: Vec<Measure>) -> Measure {
    Measure {
        wall: median(v.iter().map(|m| m.wall).collect()),
        rss_mb: median(v.iter().map(|m| m.rss_mb).collect()),
        cpu: median(v.iter().map(|m| m.cpu).collect()),
    }
}
