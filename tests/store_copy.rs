//! `foldertrack store copy --from-sled DIR` (issue 16): mail tracked into a sled store by the
//! real binary against a real Dovecot, copied into a private PostgreSQL, and the product's
//! commands on the PostgreSQL config answer as they did on sled; a non-empty target is
//! refused; an interrupted copy resumes without duplicates.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::Instant;
use testkit::pg::PgCluster;
use testkit::*;

fn alice(e: &Env) -> Mailbox {
    e.mailbox("alice")
        .rules([acme(), Rule::unlinked("INBOX/Projects")])
}

fn mail(subject: &str, msgid: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Bob Builder <bob@acme.com>\r\nTo: alice@example.com, carol@globex.com\r\n\
         Subject: {subject}\r\nMessage-ID: {msgid}\r\n{headers}\
         Date: Mon, 2 Sep 2024 10:00:00 +0000\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// A sled env (`None` when the suite runs on PostgreSQL: the source must be sled) with
/// `n` plain messages tracked, plus an attachment, a long body, a reply, a tracking token,
/// a copy in a second folder, a quarantined message and a link made by hand.
fn tracked(n: usize) -> Option<Env> {
    if sled_only("store copy reads a sled store") {
        return None;
    }
    let e = env();
    e.setup(
        &["INBOX/Tracked", "INBOX/Tracked/Acme", "INBOX/Projects"],
        &Config::new().mailbox(alice(&e)),
    );
    let mut c = e.imap("alice");
    for i in 0..n {
        c.append(
            "INBOX/Tracked/Acme",
            &mail(
                &format!("note {i}"),
                &format!("<n{i}@acme.com>"),
                "",
                "short",
            ),
        );
    }
    let pdf = std::fs::read(fixtures_dir().join("006-attachment-pdf.eml")).unwrap();
    c.append("INBOX/Tracked/Acme", &pdf);
    let long = "a long body line that goes on and on\r\n".repeat(40);
    c.append(
        "INBOX/Tracked/Acme",
        &mail("long one", "<long@acme.com>", "", &long),
    );
    c.append(
        "INBOX/Projects",
        &mail(
            "re: long one",
            "<reply@acme.com>",
            "In-Reply-To: <long@acme.com>\r\n",
            "ok",
        ),
    );
    c.append(
        "INBOX/Projects",
        &mail("Quote CRM:0001002", "<tok@acme.com>", "", "token"),
    );
    c.append(
        "INBOX/Projects",
        &mail("note 0", "<n0@acme.com>", "", "short"),
    );
    c.append(
        "INBOX/Tracked/Acme",
        &mail("POISON pill", "<p@acme.com>", "", "bad"),
    );
    let o = e
        .command()
        .env("FOLDERTRACK_FAIL_TRACKING", "POISON")
        .arg("sync")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let acts = e.activities();
    let reply = by_subject(&acts, "re: long one")[0]["id"].to_string();
    e.ok(&["activities", "link", &reply, "account:globex"]);
    Some(e)
}

/// The env's config on a PostgreSQL database (`work/pg.toml`, data dir `data-pg`).
fn pg_config(e: &Env, pg: &PgCluster) -> PathBuf {
    let path = e.work.join("pg.toml");
    Config::new()
        .data_dir("data-pg")
        .mailbox(alice(e))
        .store(&format!(
            "engine = \"postgres\"\nurl = \"{}\"\ntls = \"disable\"\nallow_plaintext = true\n",
            pg.url()
        ))
        .write_to(&path);
    path
}

fn run_with(e: &Env, config: &PathBuf, envs: &[(&str, &str)], args: &[&str]) -> Output {
    std::process::Command::new(e.bin())
        .current_dir(&e.work)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn ok_with(e: &Env, config: &PathBuf, args: &[&str]) -> String {
    let o = run_with(e, config, &[], args);
    assert!(
        o.status.success(),
        "foldertrack {args:?} failed ({:?}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// `status --json` without what names the engine or the moment.
fn comparable_status(mut v: Value) -> Value {
    for k in [
        "store",
        "schema_version",
        "data_dir",
        "agent",
        "generated_at",
        "now",
    ] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

#[test]
fn a_tracked_sled_store_copied_to_postgres_answers_the_same() {
    let Some(e) = tracked(20) else { return };
    let Some(pg) = PgCluster::start() else { return };
    let cfg = pg_config(&e, &pg);
    let started = Instant::now();
    let out = ok_with(&e, &cfg, &["store", "copy", "--from-sled", "data"]);
    eprintln!("store copy took {:?}:\n{out}", started.elapsed());
    assert!(out.contains("copy verified"), "{out}");
    assert!(!out.contains(pg.url()), "the URL is not printed");
    let sled_cfg = e.config_path();
    for args in [
        &["activities", "list", "--json"][..],
        &["quarantine", "list", "--json"],
        &["records", "list", "--json"],
    ] {
        assert_eq!(
            json(&ok_with(&e, &cfg, args)),
            json(&ok_with(&e, &sled_cfg, args)),
            "{args:?}"
        );
    }
    assert_eq!(
        ok_with(&e, &cfg, &["records", "list"]),
        ok_with(&e, &sled_cfg, &["records", "list"])
    );
    assert_eq!(
        comparable_status(json(&ok_with(&e, &cfg, &["status", "--json"]))),
        comparable_status(json(&ok_with(&e, &sled_cfg, &["status", "--json"])))
    );
    let acts = e.activities();
    // 20 notes, the PDF, the long one, its reply, the token (the second `note 0` is a copy of
    // the first); the poison pill is quarantined where the fail point exists.
    assert_eq!(acts.len(), 24 + usize::from(!cfg!(feature = "failpoints")));
    let pdf = acts
        .iter()
        .find(|a| a["attachments"].as_array().is_some_and(|x| !x.is_empty()))
        .unwrap()["id"]
        .to_string();
    let a = run_with(&e, &cfg, &[], &["activities", "attachment", &pdf, "1"]);
    let b = run_with(&e, &sled_cfg, &[], &["activities", "attachment", &pdf, "1"]);
    assert!(a.status.success() && a.stdout.starts_with(b"%PDF"));
    assert_eq!(
        a.stdout, b.stdout,
        "the attachment comes back byte for byte"
    );
    let long = by_subject(&acts, "long one")[0]["id"].to_string();
    assert_eq!(
        ok_with(&e, &cfg, &["activities", "show", &long, "--json"]),
        ok_with(&e, &sled_cfg, &["activities", "show", &long, "--json"]),
        "the long body, kept in sled's blob packs, is in PostgreSQL"
    );
    // The agent goes on on PostgreSQL: the checkpoints came along (only the new message is
    // read), and the new activity's id follows the copied ones.
    let max = acts
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .max()
        .unwrap();
    e.imap("alice").append(
        "INBOX/Tracked/Acme",
        &mail("after the move", "<after@acme.com>", "", "new"),
    );
    ok_with(&e, &cfg, &["sync"]);
    let now: Vec<Value> =
        serde_json::from_str(&ok_with(&e, &cfg, &["activities", "list", "--json"])).unwrap();
    assert_eq!(
        now.len(),
        acts.len() + 1,
        "only the new message was tracked"
    );
    assert_eq!(by_subject(&now, "after the move")[0]["id"], max + 1);
}

#[test]
fn a_target_that_is_not_empty_or_not_postgres_is_refused() {
    let Some(e) = tracked(2) else { return };
    let Some(pg) = PgCluster::start() else { return };
    let cfg = pg_config(&e, &pg);
    // The sled config itself: not a PostgreSQL target.
    let o = run_with(
        &e,
        &e.config_path(),
        &[],
        &["store", "copy", "--from-sled", "data"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("engine = \"postgres\""));
    // No sled store there.
    let o = run_with(&e, &cfg, &[], &["store", "copy", "--from-sled", "nowhere"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no sled store"));
    // A running agent holds the sled store: stop it first.
    let agent = e.start_agent();
    let o = run_with(&e, &cfg, &[], &["store", "copy", "--from-sled", "data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("stop the agent"), "{err}");
    drop(agent);
    // A database that holds records already.
    let recs = e.work.join("one.jsonl");
    std::fs::write(
        &recs,
        "{\"type\":\"account\",\"key\":\"x\",\"name\":\"X\"}\n",
    )
    .unwrap();
    ok_with(&e, &cfg, &["records", "import", &recs.to_string_lossy()]);
    let o = run_with(&e, &cfg, &[], &["store", "copy", "--from-sled", "data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is not empty") && err.contains("1 records"),
        "{err}"
    );
    assert!(!err.contains(pg.url()));
    assert_eq!(
        json(&ok_with(&e, &cfg, &["activities", "list", "--json"])),
        json("[]"),
        "nothing copied"
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn an_interrupted_copy_resumes_without_duplicates() {
    let Some(e) = tracked(30) else { return };
    let Some(pg) = PgCluster::start() else { return };
    let cfg = pg_config(&e, &pg);
    let stop = [("FOLDERTRACK_FAIL_COPY_AFTER", "7")];
    let o = run_with(&e, &cfg, &stop, &["store", "copy", "--from-sled", "data"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted after 7 activities"), "{err}");
    let partial: Vec<Value> =
        serde_json::from_str(&ok_with(&e, &cfg, &["activities", "list", "--json"])).unwrap();
    assert_eq!(partial.len(), 7);
    // Another sled store is not mixed into it.
    let other = e.work.join("other");
    std::fs::create_dir_all(other.join("db")).unwrap();
    let o = run_with(&e, &cfg, &[], &["store", "copy", "--from-sled", "other"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another sled store"));
    // The same command again: it continues and verifies.
    let out = ok_with(&e, &cfg, &["store", "copy", "--from-sled", "data"]);
    assert!(
        out.contains("resumed an interrupted copy at phase activities"),
        "{out}"
    );
    assert!(out.contains("copy verified"), "{out}");
    assert!(out.contains("27 activities written by this run"), "{out}");
    let all = json(&ok_with(&e, &cfg, &["activities", "list", "--json"]));
    assert_eq!(
        all,
        json(&ok_with(
            &e,
            &e.config_path(),
            &["activities", "list", "--json"]
        ))
    );
    // Finished: a third run copies nothing.
    let o = run_with(&e, &cfg, &[], &["store", "copy", "--from-sled", "data"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a finished"));
}
