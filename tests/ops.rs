//! Operations (issue 9): Prometheus metrics and `/healthz` served by a real agent, `status`
//! as Dynamics' Test & Enable shows it, JSON logs without secrets, XOAUTH2 / OAUTHBEARER
//! against Dovecot's oauth2 passdb, and exports that round-trip through `records import`.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use testkit::sandbox::SandboxOptions;
use testkit::*;

/// Alice tracking Acme, with `top` settings.
fn alice(e: &Env, top: &str) -> Config {
    Config::new()
        .top(top)
        .mailbox(e.mailbox("alice").rule(acme()))
}

/// GET `path` from `addr`: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    testkit::http::get(addr, path)
}

/// One sample of the Prometheus / OpenMetrics text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// A careful parser of the text exposition format: `# TYPE`/`# HELP`/`# UNIT`/`# EOF`
/// comments, `name{label="value",...} number`, with `\"`, `\\` and `\n` escapes in label
/// values. Panics on anything else, so a malformed exposition fails the test.
fn parse_metrics(text: &str) -> (Vec<Sample>, HashMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = HashMap::new();
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, t) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(n.to_string(), t.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let name_end = line.find(['{', ' ']).expect("a sample line");
        let name = &line[..name_end];
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        let mut labels = HashMap::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                // label name
                let start = chars.peek().expect("label").0;
                let mut eq = None;
                for (i, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(i);
                        break;
                    }
                }
                let key = r[start..eq.expect("=")].to_string();
                assert_eq!(
                    chars.next().map(|x| x.1),
                    Some('"'),
                    "quoted value in {line}"
                );
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote").1 {
                        '\\' => match chars.next().expect("escape").1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
                match chars.next().expect("`,` or `}`") {
                    (_, ',') => continue,
                    (i, '}') => {
                        end = Some(i);
                        break;
                    }
                    (_, c) => panic!("unexpected {c} in {line}"),
                }
            }
            rest = &r[end.unwrap() + 1..];
        }
        let value: f64 = rest
            .trim()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("number in {line}"));
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    (samples, types)
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

#[test]
fn metrics_endpoint_is_scraped_and_parsed_while_run_tracks_mail_and_healthz_says_ok() {
    let e = env();
    e.setup(
        &["INBOX/Tracked/Acme"],
        &alice(&e, "max_message_size = 4000").metrics(),
    );
    let mut c = e.imap("alice");
    let agent = e.start_agent();
    let port = agent.metrics_addr();
    for i in 0..3 {
        c.append(
            "INBOX/Tracked/Acme",
            &mail(&format!("metered {i}"), &format!("<m{i}@x>")),
        );
    }
    // Over max_message_size: quarantined with the reason.
    let mut big = mail("too big", "<big@x>");
    big.extend(std::iter::repeat_n(b'x', 8000));
    c.append("INBOX/Tracked/Acme", &big);
    wait_for("4 messages processed", 30, || {
        let st = e.status();
        st["activities"].as_u64().unwrap() + st["quarantined"].as_u64().unwrap() == 4
    });
    let tracked = e.status()["activities"].as_f64().unwrap();
    assert_eq!(tracked, 3.0);
    let folder = "INBOX/Tracked/Acme";
    let mut samples = Vec::new();
    wait_for("the metrics to count the tracked messages", 30, || {
        let (code, body) = http_get(port, "/metrics");
        assert_eq!(code, 200);
        let (s, types) = parse_metrics(&body);
        assert_eq!(types["foldertrack_messages"], "counter");
        assert_eq!(types["foldertrack_tracking_latency_seconds"], "histogram");
        samples = s;
        value(
            &samples,
            "foldertrack_messages_total",
            &[
                ("mailbox", "alice"),
                ("folder", folder),
                ("outcome", "tracked"),
            ],
        ) == Some(tracked)
    });
    let v = |n: &str, l: &[(&str, &str)]| value(&samples, n, l);
    let quarantined = v(
        "foldertrack_messages_total",
        &[
            ("mailbox", "alice"),
            ("folder", folder),
            ("outcome", "quarantined"),
        ],
    )
    .unwrap();
    assert_eq!(quarantined, 1.0);
    assert_eq!(v("foldertrack_quarantine_messages", &[]), Some(1.0));
    assert!(v("foldertrack_connections_total", &[("mailbox", "alice")]).unwrap() >= 1.0);
    assert_eq!(
        v("foldertrack_connected", &[("mailbox", "alice")]),
        Some(1.0)
    );
    assert_eq!(
        v(
            "foldertrack_watch_mode",
            &[("mailbox", "alice"), ("mode", "idle_notify")]
        ),
        Some(1.0),
        "Dovecot offers IDLE and NOTIFY"
    );
    assert_eq!(
        v(
            "foldertrack_watch_mode",
            &[("mailbox", "alice"), ("mode", "poll")]
        ),
        Some(0.0)
    );
    assert!(v("foldertrack_reconnects_total", &[("mailbox", "alice")]).is_none_or(|r| r == 0.0));
    assert_eq!(
        v(
            "foldertrack_folder_last_uid",
            &[("mailbox", "alice"), ("folder", folder)]
        ),
        Some(4.0)
    );
    assert_eq!(
        v(
            "foldertrack_folder_lag_messages",
            &[("mailbox", "alice"), ("folder", folder)]
        ),
        Some(0.0)
    );
    assert_eq!(
        v(
            "foldertrack_tracking_latency_seconds_count",
            &[("mailbox", "alice")]
        ),
        Some(tracked)
    );
    let inf = v(
        "foldertrack_tracking_latency_seconds_bucket",
        &[("mailbox", "alice"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(tracked));
    assert!(v("foldertrack_store_bytes", &[]).unwrap() > 0.0);
    assert_eq!(v("foldertrack_activities", &[]), Some(tracked));

    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(port, "/nope").0, 404);
    agent.stop();
}

#[test]
fn healthz_is_503_with_the_reason_when_a_mailbox_is_disabled() {
    let e = env();
    e.write_config(
        &alice(&e, "")
            .metrics()
            .mailbox(e.mailbox("bob").wrong_password()),
    );
    e.imap("alice").create("INBOX/Tracked/Acme");
    let agent = e.start_agent();
    let port = agent.metrics_addr();
    wait_for("bob to be disabled", 30, || {
        e.status()["mailboxes"][1]["incoming"]["state"] == "disabled"
    });
    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 503, "{body}");
    // The reason; the server's words only with [metrics] detail = true (security.rs).
    assert!(body.starts_with("mailbox bob: incoming disabled"), "{body}");
    assert!(!body.contains("alice"), "alice is healthy: {body}");
    let st = e.status();
    let bob = &st["mailboxes"][1];
    assert!(bob["incoming"]["reason"]
        .as_str()
        .unwrap()
        .contains("login to"));
    assert_eq!(bob["outgoing"]["state"], "not configured");
    assert_eq!(st["mailboxes"][0]["incoming"]["state"], "enabled");
    let text = e.ok(&["status"]);
    assert!(text.contains("mailbox bob on"), "{text}");
    assert!(text.contains("incoming disabled: login to"), "{text}");
    assert!(text.contains("outgoing: not configured"), "{text}");
}

#[test]
fn status_shows_incoming_outgoing_lag_and_alerts_with_level_for_a_rule_pointing_to_a_missing_record(
) {
    let e = env();
    e.write_config(
        &Config::new().mailbox(
            e.mailbox("alice")
                .rules([acme(), Rule::record("INBOX/Nope", "account:nope")]),
        ),
    );
    e.import_records(RECORDS);
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked/Acme");
    c.append("INBOX/Tracked/Acme", &mail("s", "<s@x>"));
    let st = e.status();
    assert_eq!(st["status_version"], 1);
    assert_eq!(st["mailboxes"][0]["incoming"]["state"], "never synced");
    e.ok(&["sync"]);
    let st = e.status();
    let m = &st["mailboxes"][0];
    assert_eq!(m["incoming"]["state"], "enabled", "{m}");
    assert_eq!(m["incoming"]["reason"], Value::Null);
    assert_eq!(m["outgoing"]["state"], "not configured");
    assert_eq!(m["lag"], 0);
    assert!(m["last_success"].is_string());
    assert!(m["last_tracked"].is_string());
    let alerts = m["mailbox_alerts"].as_array().unwrap();
    let missing = alerts
        .iter()
        .find(|a| {
            a["message"]
                .as_str()
                .unwrap()
                .contains("points to account:nope")
        })
        .unwrap_or_else(|| panic!("{alerts:?}"));
    assert_eq!(missing["level"], "error");
    assert!(missing["at"].as_str().unwrap().ends_with('Z'));
    // The stored alert about the missing folder comes with its level and time too.
    assert!(alerts
        .iter()
        .any(|a| a["level"] == "warning" && a["message"].as_str().unwrap().contains("INBOX/Nope")));
    let text = e.ok(&["status"]);
    assert!(text.contains("incoming enabled"), "{text}");
    assert!(text.contains("error   "), "{text}");
}

#[test]
fn json_logs_at_trace_level_have_mailbox_and_folder_spans_and_never_the_password() {
    let e = env();
    let secret = "Tr4ce-S3cret-pw";
    e.write_config(&alice(&e, ""));
    e.imap("alice").create("INBOX/Tracked/Acme");
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &mail("j", "<j@x>"));
    let run = |pw: &str| {
        std::fs::write(e.work.join("password"), pw).unwrap();
        e.command()
            .args(["--log-format", "json", "sync"])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    };
    let o = run(PASSWORD);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let mut folder_span = false;
    let mut n = 0;
    for l in err.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        n += 1;
        if v["span"]["name"] == "folder" {
            assert_eq!(v["span"]["mailbox"], "alice");
            assert_eq!(v["span"]["folder"], "INBOX/Tracked/Acme");
            folder_span = true;
        }
    }
    assert!(n > 5, "trace logging was on: {err}");
    assert!(
        folder_span,
        "some line was logged inside the folder span: {err}"
    );
    assert!(!err.contains("LOGIN \""), "{err}");
    // A wrong password goes through the error paths: never printed either.
    let o = run(secret);
    assert_eq!(o.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("\"level\":\"WARN\"")
            || all.contains("\"level\":\"ERROR\"")
            || all.contains("failed")
    );
    assert!(!all.contains(secret), "the password leaked:\n{all}");
}

#[test]
fn export_activities_and_records_as_jsonl_and_csv_round_trips_through_import() {
    let e = env();
    e.setup(&["INBOX/Tracked/Acme"], &alice(&e, ""));
    let mut c = e.imap("alice");
    for i in 0..3 {
        c.append(
            "INBOX/Tracked/Acme",
            &mail(&format!("export, \"quoted\" {i}"), &format!("<x{i}@x>")),
        );
    }
    e.ok(&["sync"]);
    let jsonl = e.ok(&["activities", "export", "--format", "jsonl"]);
    let acts: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(acts.len(), 3);
    assert!(acts.iter().all(|a| a["regarding"] == "account:acme"));
    assert!(acts[0]["body_text"].as_str().unwrap().contains("Body of"));
    // The synced fields travel with it (DESIGN §4.15).
    assert_eq!(
        (&acts[0]["read"], &acts[0]["importance"]),
        (&Value::Bool(false), &Value::from("normal"))
    );
    assert!(acts[0]["categories"]
        .as_array()
        .is_some_and(|c| c.is_empty()));
    let csv_text = e.ok(&[
        "activities",
        "export",
        "--format",
        "csv",
        "--regarding",
        "account:acme",
    ]);
    let mut rdr = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        rdr.headers().unwrap().iter().collect::<Vec<_>>(),
        foldertrack::export::ACTIVITY_COLUMNS.to_vec()
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[0][4], "export, \"quoted\" 0");
    assert_eq!(&rows[0][9], "account:acme");
    assert_eq!((&rows[0][19], &rows[0][21]), ("false", "normal"));
    assert!(e
        .ok(&["activities", "export", "--regarding", "account:globex"])
        .is_empty());
    assert!(e
        .ok(&["activities", "export", "--since", "2999-01-01"])
        .is_empty());
    let since = |s: &str| {
        e.ok(&["activities", "export", "--since", s])
            .lines()
            .count()
    };
    assert_eq!(since("2000-01-01T00:00:00Z"), 3);
    // `--since` filters by when an activity was tracked; an offset names the same instant.
    let tracked: Vec<i64> = acts
        .iter()
        .map(|a| unix(a["tracked_at"].as_str().unwrap()))
        .collect();
    let (first, last) = (
        *tracked.iter().min().unwrap(),
        *tracked.iter().max().unwrap(),
    );
    assert_eq!(
        since(&rfc3339_at(first, 2)),
        3,
        "the first one's time at +02:00"
    );
    assert_eq!(
        since(&rfc3339_at(last + 1, -5)),
        0,
        "after the last one, at -05:00"
    );
    assert_eq!(since(&rfc3339_at(first, 0)), 3);
    let o = e.run(&["activities", "export", "--since", "last tuesday"]);
    assert_eq!(o.status.code(), Some(2));

    // Records: export, import into a fresh store, same records.
    let before = e.ok(&["records", "list", "--json"]);
    for (fmt, file) in [("csv", "out.csv"), ("jsonl", "out.jsonl")] {
        let out = e.ok(&["records", "export", "--format", fmt]);
        assert_eq!(
            out.lines().count(),
            RECORDS.lines().count() + usize::from(fmt == "csv")
        );
        std::fs::write(e.work.join(file), &out).unwrap();
        let other = e.work.join(format!("other-{fmt}.toml"));
        Config::new()
            .data_dir(&format!("data-{fmt}"))
            .write_to(&other);
        let o = with_config(&e, &other, &["records", "import", file]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = with_config(&e, &other, &["records", "list", "--json"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            before,
            "{fmt} round trip"
        );
    }
    let contacts = e.ok(&["records", "export", "--type", "contact"]);
    assert_eq!(contacts.lines().count(), 2);

    // Through the running agent's control socket: the same bytes.
    let agent = e.start_agent();
    assert_eq!(e.ok(&["activities", "export", "--format", "jsonl"]), jsonl);
    agent.stop();
}

/// Runs the binary in `e`'s work dir with another config file.
fn with_config(e: &Env, config: &Path, args: &[&str]) -> Output {
    Command::new(e.bin())
        .current_dir(&e.work)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// Seconds since the epoch of an RFC 3339 time (`date` parses it).
fn unix(rfc3339: &str) -> i64 {
    let o = Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .unwrap();
    assert!(o.status.success(), "date -d {rfc3339}");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// `secs` as an RFC 3339 time at a UTC offset of `hours`.
fn rfc3339_at(secs: i64, hours: i64) -> String {
    let o = Command::new("date")
        .args(["-u", "-d", &format!("@{}", secs + hours * 3600)])
        .arg("+%Y-%m-%dT%H:%M:%S")
        .output()
        .unwrap();
    let local = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if hours == 0 {
        format!("{local}Z")
    } else {
        format!("{local}{hours:+03}:00")
    }
}

/// A tiny OAuth2 introspection endpoint (RFC 7662 style) for Dovecot's oauth2 passdb: a
/// token is valid when it is in `valid`; every token it was asked about is recorded.
struct Introspection {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

fn introspection(valid: &'static [&'static str], user: &'static str) -> Introspection {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut len = 0;
            let mut auth = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization: bearer ") {
                    auth = line["authorization: bearer ".len()..].trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).ok();
            let body = String::from_utf8_lossy(&body).to_string();
            let token = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_string)
                .unwrap_or(auth);
            a.lock().unwrap().push(token.clone());
            let json = if valid.contains(&token.as_str()) {
                format!("{{\"active\":\"true\",\"username\":\"{user}\"}}")
            } else {
                "{\"active\":\"false\"}".to_string()
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            );
        }
    });
    Introspection { port, asked }
}

/// A Dovecot whose oauth2 passdb asks `intro` about tokens (POST introspection).
fn oauth_env(intro: &Introspection) -> Env {
    let dir = tempfile::Builder::new()
        .prefix("ft-oauth-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf = dir.join("oauth2.conf.ext");
    std::fs::write(
        &conf,
        format!(
            "introspection_mode = post\nintrospection_url = http://127.0.0.1:{}/introspect\nusername_attribute = username\nactive_attribute = active\nactive_value = true\nforce_introspection = yes\n",
            intro.port
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    env_with(SandboxOptions {
        extra_conf: format!(
            "auth_mechanisms = plain login xoauth2 oauthbearer\npassdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
            conf.display()
        ),
        ..cast()
    })
}

/// Alice tracking Acme, logging in with `auth` and a token `source` (TOML) instead of a
/// password.
fn use_oauth(e: &Env, auth: &str, source: &str) {
    e.write_config(
        &Config::new().mailbox(
            e.mailbox("alice")
                .password_file(None)
                .keys(&format!("auth = \"{auth}\"\n{source}"))
                .rule(acme()),
        ),
    );
}

#[test]
fn xoauth2_login_against_dovecot_refreshes_a_refused_token_once_and_never_logs_it() {
    static VALID: [&str; 1] = ["good-token-7Qx"];
    let intro = introspection(&VALID, "alice");
    let e = oauth_env(&intro);
    // The command prints a stale token first, then (JSON form) the good one.
    let script = e.work.join("token.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> {0}/runs\nif [ $(wc -l < {0}/runs) -eq 1 ]; then echo stale-token-1Ab; else echo '{{\"access_token\":\"good-token-7Qx\",\"expires_in\":3600}}'; fi\n",
            e.work.display()
        ),
    )
    .unwrap();
    use_oauth(
        &e,
        "xoauth2",
        &format!("token_command = \"sh {}\"", script.display()),
    );
    e.import_records(RECORDS);
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked/Acme");
    c.append("INBOX/Tracked/Acme", &mail("oauth", "<o@x>"));
    let o = e
        .command()
        .args(["-vv", "sync"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "{all}\ndovecot:\n{}",
        e.dovecot.log_tail(30)
    );
    assert_eq!(e.activities().len(), 1);
    let asked = intro.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec!["stale-token-1Ab".to_string(), "good-token-7Qx".to_string()],
        "Dovecot checked the stale token, then the refreshed one"
    );
    assert_eq!(
        std::fs::read_to_string(e.work.join("runs"))
            .unwrap()
            .lines()
            .count(),
        2,
        "the command ran again after the refusal, once"
    );
    assert!(all.contains("fetching a new token"), "{all}");
    assert!(
        !all.contains("good-token-7Qx") && !all.contains("stale-token-1Ab"),
        "token leaked:\n{all}"
    );
    assert!(
        !all.contains("Z29vZC10b2tlbi"),
        "no base64 of the token either"
    );
}

#[test]
fn oauthbearer_login_with_a_token_file_and_a_refused_token_is_a_clear_error() {
    static VALID: [&str; 1] = ["file-token-9Zz"];
    let intro = introspection(&VALID, "alice");
    let e = oauth_env(&intro);
    use_oauth(&e, "oauthbearer", "token_file = \"token\"");
    std::fs::write(e.work.join("token"), "file-token-9Zz\n").unwrap();
    e.import_records(RECORDS);
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked/Acme");
    c.append("INBOX/Tracked/Acme", &mail("bearer", "<b@x>"));
    e.ok(&["sync"]);
    assert_eq!(e.activities().len(), 1);
    let check = e.ok(&["check"]);
    assert!(check.contains("[ok]"), "{check}");

    std::fs::write(e.work.join("token"), "{\"access_token\":\"revoked-1\"}").unwrap();
    let o = e.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("login to 127.0.0.1") && err.contains("as alice failed"),
        "{err}"
    );
    assert!(!err.contains("revoked-1"), "{err}");

    // A token source that cannot work is a config error naming the line.
    use_oauth(&e, "oauthbearer", "");
    let o = e.run(&["status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mailbox[0].auth: OAuth2 needs a token source"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sync_draws_progress_bars_on_a_terminal_and_plain_lines_otherwise() {
    let e = env();
    e.setup(&["INBOX/Tracked/Acme"], &alice(&e, ""));
    let mut c = e.imap("alice");
    let msgs: Vec<Vec<u8>> = (0..400)
        .map(|i| mail(&format!("bar {i}"), &format!("<bar{i}@x>")))
        .collect();
    c.append_many("INBOX/Tracked/Acme", &msgs, "");
    if require_tool("script") {
        terminal_sync_draws_bars(&e);
    } else {
        e.ok(&["sync"]); // the same 400, without the terminal
    }
    // Not a terminal: no bar, no escape codes, the lines scripts parse.
    c.append("INBOX/Tracked/Acme", &mail("plain", "<plain@x>"));
    let o = e.run(&["sync"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains('\x1b') && !err.contains('\x1b'), "{out}{err}");
    assert_eq!(
        out,
        "alice: INBOX/Tracked/Acme: 1 new, 1 tracked, 0 merged with existing, 0 already tracked, 0 quarantined\n\
         total: 1 mailbox(es), 0 failed; 1 new, 1 tracked, 0 merged with existing, 0 already tracked, 0 quarantined\n"
    );
}

/// `sync` on a pseudo-terminal (`script`): progress bars, then the summary lines.
fn terminal_sync_draws_bars(e: &Env) {
    // `script` runs the command on a pseudo-terminal: stdout is a terminal there.
    let cmd = format!("{} --config foldertrack.toml sync", e.bin().display());
    let o = Command::new("script")
        .current_dir(&e.work)
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(
        tty.contains("alice: INBOX/Tracked/Acme\u{1b}[0m [") && tty.contains("400/400 messages"),
        "a progress bar was drawn: {tty:?}"
    );
    assert!(tty.contains("400 new, 400 tracked"), "{tty}");
}
