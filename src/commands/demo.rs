//! `demo`: the README's first command. Starts a private Dovecot with a sample mailbox, folders,
//! rules and mail, writes a config and records, runs one sync and shows what was tracked, so a
//! new user sees the whole pipeline work against a real server in a few seconds.
//!
//! Built only with the `demo` feature (`scripts/demo.sh`): the private Dovecot comes from the
//! test kit (`testkit::sandbox`), which a production build does not carry.

use crate::config::{AuthMethod, Config, MailboxConfig, PasswordSource, TlsMode};
use crate::imap::folders::to_server_name;
use crate::model::RecordRef;
use anyhow::{Context, Result};
use std::path::Path;
use testkit::sandbox::{dovecot_available, Sandbox, SandboxError, SandboxOptions};

const PASSWORD: &str = "demo-password";

const RECORDS: &str = r#"{"type":"systemuser","key":"alice","name":"Alice Example","emails":["alice@example.com"]}
{"type":"account","key":"acme","name":"Acme","emails":["sales@acme.com"],"owner":"alice"}
{"type":"account","key":"globex","name":"Globex","emails":["info@globex.com"],"owner":"alice"}
{"type":"account","key":"initech","name":"Initech","emails":[],"owner":"alice"}
{"type":"contact","key":"bob","name":"Bob Builder","emails":["bob@acme.com"],"owner":"alice"}
{"type":"contact","key":"carol","name":"Carol Shaw","emails":["carol@globex.com"],"owner":"alice"}
{"type":"lead","key":"peter","name":"Peter Gibbons","emails":["peter@initech.com"],"owner":"alice"}
"#;

fn config_text(port: u16) -> String {
    format!(
        r#"# Written by `foldertrack demo`: one mailbox on the demo Dovecot.
data_dir = "data"

[[mailbox]]
name = "alice"
owner = "systemuser:alice"
host = "127.0.0.1"
port = {port}
tls = "none"              # the demo server listens on loopback only
allow_plaintext = true
user = "alice"
address = "alice@example.com"
password_file = "alice.password"

  [[mailbox.rule]]        # one folder, one record
  folder = "INBOX/Tracked/Acme"
  regarding = "account:acme"

  [[mailbox.rule]]        # one folder per customer, the account looked up by name
  folder = "INBOX/Customers/*"
  regarding = {{ type = "account", by = "name" }}

  [[mailbox.rule]]        # tracked, linked to nothing
  folder = "INBOX/Projects"
"#
    )
}

struct Mail<'a> {
    folder: &'a str,
    from: &'a str,
    to: &'a str,
    subject: &'a str,
    id: &'a str,
    extra: &'a str,
    body: &'a str,
}

const MAIL: &[Mail] = &[
    Mail {
        folder: "INBOX/Tracked/Acme",
        from: "Bob Builder <bob@acme.com>",
        to: "Alice Example <alice@example.com>",
        subject: "Quote for 40 widgets",
        id: "<demo-1@acme.com>",
        extra: "",
        body: "Hi Alice,\r\n\r\nplease find our quote for 40 widgets below: 4,000 EUR.\r\n\r\nBob",
    },
    Mail {
        folder: "INBOX/Tracked/Acme",
        from: "Alice Example <alice@example.com>",
        to: "Bob Builder <bob@acme.com>",
        subject: "Re: Quote for 40 widgets",
        id: "<demo-2@example.com>",
        extra: "In-Reply-To: <demo-1@acme.com>\r\nReferences: <demo-1@acme.com>\r\n",
        body: "Thanks Bob, we accept. Alice",
    },
    Mail {
        folder: "INBOX/Tracked/Acme",
        from: "sales@acme.com",
        to: "alice@example.com, stranger@unknown.org",
        subject: "Your order confirmation",
        id: "<demo-3@acme.com>",
        extra: "",
        body: "Order 1234 is confirmed.",
    },
    Mail {
        folder: "INBOX/Customers/Globex",
        from: "Carol Shaw <carol@globex.com>",
        to: "alice@example.com",
        subject: "=?utf-8?q?Gr=C3=BC=C3=9Fe_from_Globex?=",
        id: "<demo-4@globex.com>",
        extra: "",
        body: "Renewal call next Tuesday?",
    },
    Mail {
        folder: "INBOX/Customers/Initech",
        from: "Peter Gibbons <peter@initech.com>",
        to: "alice@example.com",
        subject: "TPS reports",
        id: "<demo-5@initech.com>",
        extra: "",
        body: "Did you get the memo?",
    },
    Mail {
        folder: "INBOX/Customers/Umbrella",
        from: "someone@umbrella.example",
        to: "alice@example.com",
        subject: "Umbrella is not a record yet",
        id: "<demo-6@umbrella.example>",
        extra: "",
        body: "Tracked unlinked, with an alert.",
    },
    Mail {
        folder: "INBOX/Projects",
        from: "Bob Builder <bob@acme.com>",
        to: "alice@example.com",
        subject: "Project kickoff notes",
        id: "",
        extra: "",
        body: "No Message-ID here: deduplicated by content hash.",
    },
    Mail {
        folder: "INBOX/Personal",
        from: "mum@family.example",
        to: "alice@example.com",
        subject: "Sunday lunch",
        id: "<demo-8@family.example>",
        extra: "",
        body: "Not in a tracked folder: never tracked.",
    },
];

fn raw(m: &Mail) -> Vec<u8> {
    let id = if m.id.is_empty() {
        String::new()
    } else {
        format!("Message-ID: {}\r\n", m.id)
    };
    format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\n{id}{}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        m.from, m.to, m.subject, m.extra, m.body
    )
    .into_bytes()
}

/// Runs the demo in `dir`; with `keep` the demo Dovecot stays up afterwards.
pub async fn run(dir: &Path, keep: bool) -> Result<String> {
    if !dovecot_available() {
        anyhow::bail!(crate::protocol::UsageError(
            "the demo needs Dovecot: install it with `apt-get install -y dovecot-imapd` (the README's first command does)".into()
        ));
    }
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("clearing the previous demo's store {}", data.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The server lives under the temp dir: as root Dovecot's users must traverse every parent,
    // which a home directory (mode 0700) does not allow. A fresh directory with a random name
    // (mkdir, which fails on anything already there, mode 0700 until the sandbox opens it to
    // Dovecot's users as 0755): a predictable name in a shared /tmp could be planted by
    // another user, with symlinks that root would write through.
    let server_tmp = tempfile::Builder::new()
        .prefix("foldertrack-demo-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("creating the demo Dovecot's directory in the temp dir")?;
    let server_dir = server_tmp.path().to_path_buf();
    let opts = SandboxOptions {
        users: vec![("alice".into(), PASSWORD.into())],
        ..Default::default()
    };
    let mut dovecot = Sandbox::start(&server_dir, &opts).map_err(|e| match e {
        SandboxError::NotInstalled { .. } => anyhow::anyhow!("{e}"),
        e => anyhow::anyhow!("starting the demo Dovecot in {}: {e}", server_dir.display()),
    })?;
    let result = demo_inner(dir, &dovecot).await;
    let mut out = result?;
    if keep {
        out.push_str(&format!(
            "\nThe demo Dovecot keeps running on 127.0.0.1:{} (user alice, password {PASSWORD}), in {}.\nStop it with: kill $(cat {}/run/master.pid)\n",
            dovecot.port,
            server_dir.display(),
            server_dir.display()
        ));
        std::mem::forget(dovecot);
        let _ = server_tmp.keep();
    } else {
        dovecot.stop().ok();
        drop(server_tmp);
        out.push_str("\nThe demo Dovecot was stopped (use --keep to leave it running and add mail yourself).\n");
    }
    Ok(out)
}

async fn demo_inner(dir: &Path, dovecot: &Sandbox) -> Result<String> {
    let cfg_path = dir.join("foldertrack.toml");
    std::fs::write(&cfg_path, config_text(dovecot.port))?;
    let pw = dir.join("alice.password");
    std::fs::write(&pw, PASSWORD)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(dir.join("records.jsonl"), RECORDS)?;

    // Folders and mail, over IMAP like any mail client would.
    let mb = MailboxConfig {
        name: "alice".into(),
        owner: RecordRef::new("systemuser", "alice"),
        host: "127.0.0.1".into(),
        port: dovecot.port,
        tls: TlsMode::None,
        ca_file: None,
        user: "alice".into(),
        address: Some("alice@example.com".into()),
        password: PasswordSource::File(pw.clone()),
        auth: AuthMethod::Login,
        oauth: None,
        sent_folder: None,
        rules: Vec::new(),
        watch: Default::default(),
        crm: Default::default(),
        field_sync: Default::default(),
        max_message_bytes: crate::config::FetchLimits::default().max_message_bytes,
        command_timeout: crate::defaults::COMMAND_TIMEOUT,
        smtp: None,
    };
    let mut conn = crate::imap::connect(&mb)
        .await
        .context("logging in to the demo Dovecot")?;
    let mut created: Vec<String> = Vec::new();
    for m in MAIL {
        let mut path = String::new();
        for seg in m.folder.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(seg);
            if path != "INBOX" && !created.contains(&path) {
                conn.session
                    .create(to_server_name(&path, Some('.')))
                    .await
                    .with_context(|| format!("creating {path}"))?;
                created.push(path.clone());
            }
        }
        conn.session
            .append(to_server_name(m.folder, Some('.')), None, None, raw(m))
            .await
            .with_context(|| format!("appending to {}", m.folder))?;
    }
    conn.session
        .append(
            to_server_name("INBOX/Projects", Some('.')),
            None,
            None,
            b"\r\n\r\n".to_vec(),
        )
        .await?;
    let _ = conn.session.logout().await;

    let config = Config::load(&cfg_path)?;
    let mut out = format!(
        "foldertrack demo: Dovecot on 127.0.0.1:{}, mailbox alice with {} messages in {} folders\n\n",
        dovecot.port,
        MAIL.len() + 1,
        created.len()
    );
    let store = std::sync::Arc::new(crate::store::Store::open(
        &config.data_dir,
        config.cache_bytes,
    )?);
    let records = crate::records_io::read_records(&dir.join("records.jsonl"))?;
    store.put_records(&records)?;
    out.push_str(&format!(
        "imported {} records from {}\n",
        records.len(),
        dir.join("records.jsonl").display()
    ));
    out.push_str("\n$ foldertrack sync\n");
    out.push_str(&super::sync::sync(&config, &store, None, false).await?);
    out.push_str("\n$ foldertrack activities list\n");
    out.push_str(&super::activities::list(&store, None, false)?);
    out.push_str("\n$ foldertrack status\n");
    out.push_str(&super::status::status(&config, &store, None, false)?);
    let c = cfg_path.display();
    // The binary as the user can type it: relative to where they are, when it is below.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| {
            std::env::current_dir().ok().and_then(|d| {
                e.strip_prefix(&d)
                    .ok()
                    .map(|r| format!("./{}", r.display()))
            })
        })
        .unwrap_or_else(|| "foldertrack".into());
    out.push_str(&format!(
        "\nTry next (the store stays in {}):\n  {exe} --config {c} activities show 1\n  {exe} --config {c} activities list --regarding account:acme --json\n  {exe} --config {c} records list\n",
        dir.join("data").display()
    ));
    Ok(out)
}
