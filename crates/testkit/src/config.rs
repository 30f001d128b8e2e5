//! The one way tests and benches write a `foldertrack.toml`: mailboxes on the sandbox Dovecot,
//! their rules and settings, top-level settings, and the CRM records they refer to.
//!
//! Built as values rather than `format!`ed text, so that a test changing one thing (a rule's
//! regarding, the password file, TLS) writes the config again instead of editing its text.

use std::path::{Path, PathBuf};

/// The standard cast of records the tests use: users alice and bob, accounts Acme and Globex,
/// contacts Bob Builder and Carol (who is also a lead). JSON lines for `records import`.
pub const RECORDS: &str = r#"{"type":"systemuser","key":"alice","name":"Alice Example","emails":["alice@example.com"]}
{"type":"systemuser","key":"bob","name":"Bob User","emails":["bob@example.com"]}
{"type":"account","key":"acme","name":"Acme","emails":["sales@acme.com"],"owner":"alice"}
{"type":"account","key":"globex","name":"Globex","emails":["info@globex.com"],"owner":"alice"}
{"type":"contact","key":"bob-builder","name":"Bob Builder","emails":["bob@acme.com"],"owner":"alice"}
{"type":"contact","key":"carol","name":"Carol Shaw","emails":["carol@globex.com"],"owner":"alice"}
{"type":"lead","key":"carol-lead","name":"Carol Shaw (lead)","emails":["carol@globex.com"],"owner":"alice"}
"#;

/// The folder the exact rule [`acme`] tracks.
pub const ACME: &str = "INBOX/Tracked/Acme";

/// What a rule links its folder's mail to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Regarding {
    /// Tracked, linked to nothing.
    None,
    /// One record, `type:key`.
    Record(String),
    /// An account looked up by the name the pattern's `*` captured.
    ByName,
    /// An account looked up by key.
    ByKey,
}

/// One `[[mailbox.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The folder in config form (`/` between levels), or a pattern ending in `/*`.
    pub folder: String,
    /// What it links to.
    pub regarding: Regarding,
}

impl Rule {
    /// A folder tracked and linked to `record` (`type:key`).
    pub fn record(folder: &str, record: &str) -> Rule {
        Rule {
            folder: folder.into(),
            regarding: Regarding::Record(record.into()),
        }
    }

    /// A folder tracked, linked to nothing.
    pub fn unlinked(folder: &str) -> Rule {
        Rule {
            folder: folder.into(),
            regarding: Regarding::None,
        }
    }

    /// A pattern rule whose account is looked up by the captured name.
    pub fn by_name(pattern: &str) -> Rule {
        Rule {
            folder: pattern.into(),
            regarding: Regarding::ByName,
        }
    }

    /// A pattern rule whose account is looked up by the captured key.
    pub fn by_key(pattern: &str) -> Rule {
        Rule {
            folder: pattern.into(),
            regarding: Regarding::ByKey,
        }
    }

    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "  [[mailbox.rule]]\n  folder = {}\n",
            toml_str(&self.folder)
        ));
        let by = |by: &str| format!("  regarding = {{ type = \"account\", by = \"{by}\" }}\n");
        match &self.regarding {
            Regarding::None => {}
            Regarding::Record(r) => out.push_str(&format!("  regarding = {}\n", toml_str(r))),
            Regarding::ByName => out.push_str(&by("name")),
            Regarding::ByKey => out.push_str(&by("key")),
        }
    }
}

/// `INBOX/Tracked/Acme` → account:acme, the rule most tests start from.
pub fn acme() -> Rule {
    Rule::record(ACME, "account:acme")
}

/// Acme by an exact rule, `INBOX/Customers/*` by name, `INBOX/Projects` unlinked: the rules of
/// the live and tracking tests.
pub fn standard_rules() -> Vec<Rule> {
    vec![
        acme(),
        Rule::by_name("INBOX/Customers/*"),
        Rule::unlinked("INBOX/Projects"),
    ]
}

/// One `[[mailbox]]` on the sandbox Dovecot (127.0.0.1, plaintext on loopback unless
/// [`Mailbox::tls`] says otherwise), logging in as `user` with the password file `password`.
#[derive(Debug, Clone)]
pub struct Mailbox {
    name: String,
    user: String,
    port: u16,
    tls: String,
    ca_file: Option<PathBuf>,
    password_file: Option<String>,
    keys: String,
    rules: Vec<Rule>,
    smtp: Option<String>,
}

impl Mailbox {
    /// Mailbox `user` of `user`, owner `systemuser:user`, address `user@example.com`.
    pub fn new(user: &str, port: u16) -> Mailbox {
        Mailbox {
            name: user.into(),
            user: user.into(),
            port,
            tls: "none".into(),
            ca_file: None,
            password_file: Some("password".into()),
            keys: String::new(),
            rules: Vec::new(),
            smtp: None,
        }
    }

    /// Another mailbox name than the user's.
    pub fn name(mut self, name: &str) -> Mailbox {
        self.name = name.into();
        self
    }

    /// More mailbox settings, as TOML lines (`idle = false`, `track_other_mail = "replies"`, …).
    pub fn keys(mut self, toml: &str) -> Mailbox {
        self.keys.push_str(toml);
        if !self.keys.is_empty() && !self.keys.ends_with('\n') {
            self.keys.push('\n');
        }
        self
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Mailbox {
        self.rules.push(rule);
        self
    }

    /// Adds rules.
    pub fn rules(mut self, rules: impl IntoIterator<Item = Rule>) -> Mailbox {
        self.rules.extend(rules);
        self
    }

    /// The password file (relative to the work dir); `None` for a mailbox that logs in with a
    /// token (set `auth` and its source with [`Mailbox::keys`]).
    pub fn password_file(mut self, file: Option<&str>) -> Mailbox {
        self.password_file = file.map(str::to_string);
        self
    }

    /// The password file the test [`crate::Env`] fills with a wrong password.
    pub fn wrong_password(self) -> Mailbox {
        self.password_file(Some(crate::env::WRONG_PASSWORD_FILE))
    }

    /// TLS `mode` (`implicit`, `starttls`) on `port`, trusting `ca_file` when given.
    pub fn tls(mut self, mode: &str, port: u16, ca_file: Option<&Path>) -> Mailbox {
        self.tls = mode.into();
        self.port = port;
        self.ca_file = ca_file.map(Path::to_path_buf);
        self
    }

    /// The `[mailbox.smtp]` table (see [`crate::smtp::Smtp::config_table`]).
    pub fn smtp(mut self, table: String) -> Mailbox {
        self.smtp = Some(table);
        self
    }

    fn render(&self, out: &mut String) {
        let Mailbox { name, user, .. } = self;
        out.push_str(&format!(
            "[[mailbox]]\nname = {}\nowner = {}\nhost = \"127.0.0.1\"\nport = {}\ntls = {}\n",
            toml_str(name),
            toml_str(&format!("systemuser:{user}")),
            self.port,
            toml_str(&self.tls)
        ));
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!("ca_file = {}\n", toml_str(&ca.to_string_lossy())));
        }
        if self.tls == "none" {
            out.push_str("allow_plaintext = true\n");
        }
        out.push_str(&format!(
            "user = {}\naddress = {}\n",
            toml_str(user),
            toml_str(&format!("{user}@example.com"))
        ));
        if let Some(p) = &self.password_file {
            out.push_str(&format!("password_file = {}\n", toml_str(p)));
        }
        out.push_str(&self.keys);
        for r in &self.rules {
            r.render(out);
        }
        if let Some(smtp) = &self.smtp {
            out.push_str(smtp);
        }
    }
}

/// A whole `foldertrack.toml`: `data_dir = "data"`, top-level settings, `[metrics]`, mailboxes.
#[derive(Debug, Clone, Default)]
pub struct Config {
    data_dir: Option<String>,
    top: String,
    /// `[metrics]` with these extra keys.
    metrics: Option<String>,
    mailboxes: Vec<Mailbox>,
    /// `[store]` keys, as TOML lines (none: sled in the data dir).
    store: Option<String>,
}

impl Config {
    /// An empty config: a data dir, no mailbox.
    pub fn new() -> Config {
        Config::default()
    }

    /// Another data dir than `data` (relative to the config file's directory).
    pub fn data_dir(mut self, dir: &str) -> Config {
        self.data_dir = Some(dir.into());
        self
    }

    /// Top-level settings, as TOML lines (`batch_messages = 3`, …).
    pub fn top(mut self, toml: &str) -> Config {
        self.top.push_str(toml);
        if !self.top.is_empty() && !self.top.ends_with('\n') {
            self.top.push('\n');
        }
        self
    }

    /// `[metrics] listen = "127.0.0.1:0"`: the agent picks a free port and logs it
    /// ([`crate::Agent::metrics_addr`]), so no test guesses a free port.
    pub fn metrics(self) -> Config {
        self.metrics_with("")
    }

    /// [`Config::metrics`] with more `[metrics]` keys, as TOML lines.
    pub fn metrics_with(mut self, toml: &str) -> Config {
        self.metrics = Some(toml.to_string());
        self
    }

    /// A `[store]` table with these keys, as TOML lines (an [`crate::Env`] on PostgreSQL sets
    /// it in every config it writes).
    pub fn store(mut self, toml: &str) -> Config {
        self.store = Some(toml.to_string());
        self
    }

    /// Adds a mailbox.
    pub fn mailbox(mut self, m: Mailbox) -> Config {
        self.mailboxes.push(m);
        self
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let dir = self.data_dir.as_deref().unwrap_or("data");
        let mut out = format!("data_dir = {}\n{}", toml_str(dir), self.top);
        if let Some(keys) = &self.metrics {
            out.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
            out.push_str(keys);
            if !keys.is_empty() && !keys.ends_with('\n') {
                out.push('\n');
            }
        }
        if let Some(keys) = &self.store {
            out.push_str("[store]\n");
            out.push_str(keys);
            if !keys.is_empty() && !keys.ends_with('\n') {
                out.push('\n');
            }
        }
        for m in &self.mailboxes {
            m.render(&mut out);
        }
        out
    }

    /// Writes `dir/foldertrack.toml`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("foldertrack.toml");
        self.write_to(&p);
        p
    }

    /// Writes the config to `path`.
    pub fn write_to(&self, path: &Path) {
        std::fs::write(path, self.render())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_mailboxes_rules_and_settings() {
        let text = Config::new()
            .top("batch_messages = 3")
            .metrics()
            .mailbox(
                Mailbox::new("alice", 1143)
                    .keys("idle = false")
                    .rules(standard_rules())
                    .rule(Rule::record("Say \"hi\" \\ there", "account:acme")),
            )
            .render();
        assert_eq!(
            text,
            "data_dir = \"data\"\nbatch_messages = 3\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[mailbox]]\nname = \"alice\"\nowner = \"systemuser:alice\"\nhost = \"127.0.0.1\"\n\
             port = 1143\ntls = \"none\"\nallow_plaintext = true\nuser = \"alice\"\n\
             address = \"alice@example.com\"\npassword_file = \"password\"\nidle = false\n\
             \x20 [[mailbox.rule]]\n  folder = \"INBOX/Tracked/Acme\"\n  regarding = \"account:acme\"\n\
             \x20 [[mailbox.rule]]\n  folder = \"INBOX/Customers/*\"\n  regarding = { type = \"account\", by = \"name\" }\n\
             \x20 [[mailbox.rule]]\n  folder = \"INBOX/Projects\"\n\
             \x20 [[mailbox.rule]]\n  folder = \"Say \\\"hi\\\" \\\\ there\"\n  regarding = \"account:acme\"\n"
        );
        let tls = Config::new()
            .mailbox(Mailbox::new("bob", 1).tls("implicit", 993, Some(Path::new("/ca.pem"))))
            .render();
        assert!(tls.contains("port = 993\ntls = \"implicit\"\nca_file = \"/ca.pem\"\nuser"));
        assert!(!tls.contains("allow_plaintext"));
    }
}
