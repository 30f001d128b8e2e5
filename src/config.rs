//! The admin's configuration file (DESIGN §6): raw TOML structs, then a checked [`Config`] with
//! every default resolved, so nothing below this module deals with optional or unvalidated input.
//!
//! Every error names the file, the line and the key, because the person reading it is an admin
//! editing a file, not a developer reading a backtrace.

mod field_sync;
mod smtp;
mod web;

use crate::model::RecordRef;
pub use field_sync::{FieldSync, SyncDirection};
use serde::Deserialize;
pub use smtp::{RetryPolicy, SmtpConfig};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;
pub use web::{WebAuth, WebSettings};

/// A configuration error: where and what. Maps to exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// How the IMAP (or SMTP) connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Implicit,
    Starttls,
    None,
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        })
    }
}

/// SASL mechanism for IMAP login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// IMAP `LOGIN` (works everywhere).
    #[default]
    Login,
    /// `AUTHENTICATE PLAIN` (RFC 4616).
    Plain,
    /// `AUTHENTICATE XOAUTH2` (Google's and Microsoft's OAuth2 SASL) with an access token.
    Xoauth2,
    /// `AUTHENTICATE OAUTHBEARER` (RFC 7628) with an access token.
    Oauthbearer,
}

impl AuthMethod {
    /// Whether this mechanism logs in with an OAuth2 access token instead of a password.
    pub fn is_oauth(self) -> bool {
        matches!(self, AuthMethod::Xoauth2 | AuthMethod::Oauthbearer)
    }
}

/// How a pattern rule's capture finds its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LookupBy {
    Name,
    Key,
}

/// What a folder rule links its mail to.
#[derive(Debug, Clone, PartialEq)]
pub enum Regarding {
    /// Tracked, but linked to nothing.
    None,
    /// Always this record.
    Fixed(RecordRef),
    /// A record of `rtype` whose name (or key) is the `*` capture of the folder pattern.
    Lookup { rtype: String, by: LookupBy },
}

/// One folder rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Folder path in config form (`/` separated); may hold one `*`.
    pub folder: String,
    pub regarding: Regarding,
}

/// Where the IMAP password comes from: never the config file itself.
#[derive(Debug, Clone, PartialEq)]
pub enum PasswordSource {
    Env(String),
    File(PathBuf),
    /// No password: the mailbox logs in with an OAuth2 token ([`MailboxConfig::oauth`]).
    None,
}

/// One watched IMAP account, checked.
#[derive(Debug, Clone)]
pub struct MailboxConfig {
    pub name: String,
    pub owner: RecordRef,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    pub user: String,
    /// The mailbox's own address: mail From it is outgoing.
    pub address: Option<String>,
    pub password: PasswordSource,
    pub auth: AuthMethod,
    /// Where the OAuth2 access token comes from, when `auth` is an OAuth2 mechanism.
    pub oauth: Option<crate::oauth::TokenSource>,
    /// `None` = auto (SPECIAL-USE `\Sent`), else the folder in config form.
    pub sent_folder: Option<String>,
    pub rules: Vec<Rule>,
    pub watch: WatchSettings,
    pub crm: CrmSettings,
    /// Which fields sync with the mailbox's flags, and which way (`[field_sync]`).
    pub field_sync: FieldSync,
    /// The configuration's `max_message_size`: also the largest literal a server may send.
    pub max_message_bytes: u64,
    /// The configuration's `command_timeout`: how long one IMAP command of this mailbox's
    /// sessions may take.
    pub command_timeout: std::time::Duration,
    /// Outgoing side (`activities send`): `None` when neither `[smtp]` nor `[mailbox.smtp]` exist.
    pub smtp: Option<SmtpConfig>,
}

/// What to do with a sender no record has (DESIGN §4.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnresolvedSender {
    /// Keep the address on the activity (`addressused`).
    #[default]
    Keep,
    /// Create a contact named after the display name, owned by the mailbox owner.
    Contact,
    /// Create a lead the same way.
    Lead,
}

/// Which mail outside tracked folders is tracked, from INBOX and Sent (DESIGN §4.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtherMail {
    #[default]
    None,
    /// Mail that correlates to a tracked activity.
    Replies,
    /// Mail with a party that resolves to a contact, account or lead.
    Known,
    All,
}

/// How tracked mail becomes CRM data (DESIGN §4.7–4.13).
#[derive(Debug, Clone, PartialEq)]
pub struct CrmSettings {
    pub unresolved_sender: UnresolvedSender,
    pub track_other_mail: OtherMail,
    /// Subject words + at least two shared addresses (off by default, as in Dynamics).
    pub smart_matching: bool,
    /// Attachments above this are listed but not stored.
    pub max_attachment_size: u64,
    /// File extensions (lower case, no dot) whose attachments are listed but not stored.
    pub blocked_extensions: Vec<String>,
    /// IMAP keyword set on tracked messages (`None`: write-back off).
    pub tracked_keyword: Option<String>,
    pub token: crate::token::TokenFormat,
}

/// Dynamics' default blocked attachment extensions, the ones that run code.
pub const DEFAULT_BLOCKED: [&str; 22] = [
    "ade", "adp", "app", "bat", "chm", "cmd", "com", "cpl", "dll", "exe", "hta", "inf", "ins",
    "js", "jse", "lnk", "msi", "pif", "reg", "scr", "vbs", "wsf",
];

impl Default for CrmSettings {
    fn default() -> Self {
        CrmSettings {
            unresolved_sender: UnresolvedSender::Keep,
            track_other_mail: OtherMail::None,
            smart_matching: false,
            max_attachment_size: 5 * 1024 * 1024,
            blocked_extensions: DEFAULT_BLOCKED.iter().map(|s| s.to_string()).collect(),
            tracked_keyword: Some("$Tracked".into()),
            token: Default::default(),
        }
    }
}

/// How `run` waits for new mail (DESIGN §3 step 6).
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSettings {
    /// Use IDLE when the server offers it.
    pub idle: bool,
    /// Without IDLE: poll this often.
    pub poll: PollInterval,
    /// Re-issue IDLE this often (below NAT timeouts and RFC 2177's 29 minutes).
    pub idle_renew: std::time::Duration,
    /// No data at all on an IDLE connection for this long: check it with DONE, drop it if dead.
    /// Dovecot sends a keepalive every 2 minutes, so the default of 5 never fires on a live one.
    pub heartbeat_timeout: std::time::Duration,
    /// Without NOTIFY, the tracked folders other than the IDLE one are checked (STATUS) this often.
    pub others_interval: std::time::Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            idle: true,
            poll: PollInterval::Auto,
            idle_renew: std::time::Duration::from_secs(9 * 60),
            heartbeat_timeout: std::time::Duration::from_secs(5 * 60),
            others_interval: std::time::Duration::from_secs(60),
        }
    }
}

/// A fixed poll interval, or the adaptive one of Dynamics' server-side sync.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PollInterval {
    Every(std::time::Duration),
    /// 5 minutes, down to 2 while mail keeps arriving, up to 12 when quiet.
    Auto,
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub mailboxes: Vec<MailboxConfig>,
    pub fetch: FetchLimits,
    /// sled page cache, bytes.
    pub cache_bytes: u64,
    /// How long one IMAP command may take before the connection is dropped as dead.
    pub command_timeout: std::time::Duration,
    /// Where `run` serves Prometheus `/metrics` and `/healthz` (`None`: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub metrics: MetricsSettings,
    pub health: HealthSettings,
    /// Where the CRM store lives (`[store]`): sled in `data_dir`, or PostgreSQL.
    pub store: StoreEngine,
    /// This agent among several on one PostgreSQL store (`[agent]`).
    pub agent: AgentSettings,
    /// `[audit] retention_days`: audit entries older than this many days are pruned by the
    /// running agent (daily); `None` keeps them for ever (the default).
    pub audit_retention_days: Option<u64>,
    /// `[web]`: the web pages, when served.
    pub web: Option<WebSettings>,
}

/// `[agent]`: this agent's name and its mailbox leases, when several agents share one
/// PostgreSQL store (DESIGN §5.2). On sled one agent holds every mailbox and these are unused.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// How the agent appears in `status`, `agents` and the lease table. Default: the host
    /// name, plus the data dir when `--data-dir` names it (several agents on one host).
    pub name: String,
    /// Whether `name` was written in the config (then `--data-dir` leaves it alone).
    pub name_set: bool,
    /// A lease not renewed for this long lapses, and another agent may take the mailbox.
    pub lease_ttl: std::time::Duration,
    /// How often an agent renews its leases (at most a third of `lease_ttl`).
    pub lease_renew: std::time::Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            name: host_name(),
            name_set: false,
            lease_ttl: std::time::Duration::from_secs(20),
            lease_renew: std::time::Duration::from_secs(5),
        }
    }
}

/// The machine's host name (`localhost` when it cannot be read).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match rc {
        0 if end > 0 => String::from_utf8_lossy(&buf[..end]).into_owned(),
        _ => "localhost".into(),
    }
}

/// The store's engine (`[store] engine`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StoreEngine {
    /// sled in the data dir (the default): one process holds it at a time.
    #[default]
    Sled,
    /// A PostgreSQL database, shared by every agent and command that names it.
    Postgres(PgSettings),
}

/// How to reach the PostgreSQL database. Its `Debug` never shows a password.
#[derive(Clone, PartialEq)]
pub struct PgSettings {
    /// The connection string, or the environment variable holding it.
    pub url: PgUrl,
    pub tls: PgTls,
    /// Certificates the server's must chain to (`verify-full`); default the web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// The longest one SQL statement may run (`statement_timeout`, seconds; default 30): the
    /// server cancels a statement stuck longer (behind another session's lock, say), and the
    /// agent backs off and tries again.
    pub statement_timeout: std::time::Duration,
}

/// Where the connection string is (`url` or `url_env`).
#[derive(Clone, PartialEq)]
pub enum PgUrl {
    /// Written in the config file.
    Literal(String),
    /// Read from this environment variable when the store is opened.
    Env(String),
}

/// `[store] tls`, as libpq's `sslmode` of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// Encrypted, and the certificate must match the host name and chain to `ca_file`.
    VerifyFull,
    /// Encrypted, any certificate accepted.
    Require,
    /// Plaintext (only with `allow_plaintext = true`).
    Disable,
}

impl PgSettings {
    /// The connection string (read from the environment for `url_env`). The error names the
    /// variable, never a value.
    pub fn url(&self) -> Result<String, String> {
        match &self.url {
            PgUrl::Literal(u) => Ok(u.clone()),
            PgUrl::Env(v) => std::env::var(v).map_err(|_| {
                format!("environment variable {v} (store.url_env) is not set: it holds the PostgreSQL connection URL")
            }),
        }
    }
}

impl fmt::Debug for PgSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = match &self.url {
            PgUrl::Literal(u) => redact_url(u),
            PgUrl::Env(v) => format!("${v}"),
        };
        f.debug_struct("PgSettings")
            .field("url", &url)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// A PostgreSQL connection string with any password replaced by `***`: the one in a URL's
/// user info (`postgresql://user:secret@host`) and any `password=` parameter or pair.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let auth_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..auth_end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].to_ascii_lowercase().find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |j| start + j);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

/// How the `/metrics` and `/healthz` endpoint answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSettings {
    /// Host names (besides IP literals, `localhost` and this machine's name) that requests may
    /// carry in `Host`: a request naming any other host is a DNS-rebinding attempt from a web
    /// page, refused with 421. Lower case, without port.
    pub allowed_hosts: Vec<String>,
    /// `/healthz` gives the server's error text and the IMAP user names in it (off: the reason
    /// only; `status` always has the detail).
    pub detail: bool,
}

/// When `/healthz` and `status` call a mailbox unhealthy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthSettings {
    /// A folder whose server UIDNEXT has been beyond its checkpoint for longer than this is
    /// lagging; so is a mailbox whose passes have been failing for longer than this.
    pub lag_threshold: std::time::Duration,
    /// A mailbox that syncs fine but tracked nothing for this long gets an info alert in `status`.
    pub quiet_hours: u64,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            lag_threshold: std::time::Duration::from_secs(300),
            quiet_hours: 72,
        }
    }
}

/// Bounds of one `UID FETCH` batch and of a single message.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    pub batch_messages: usize,
    pub batch_bytes: u64,
    /// Messages above this are not fetched: they are quarantined with the reason.
    pub max_message_bytes: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            batch_messages: 500,
            batch_bytes: 4 * 1024 * 1024,
            max_message_bytes: 128 * 1024 * 1024,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<Spanned<String>>,
    #[serde(default)]
    mailbox: Vec<RawMailbox>,
    batch_messages: Option<Spanned<i64>>,
    batch_bytes: Option<Spanned<i64>>,
    max_message_size: Option<Spanned<i64>>,
    cache_mb: Option<Spanned<i64>>,
    command_timeout: Option<Spanned<i64>>,
    smtp: Option<smtp::RawSmtp>,
    metrics: Option<RawMetrics>,
    health: Option<RawHealth>,
    store: Option<RawStore>,
    agent: Option<RawAgent>,
    audit: Option<RawAudit>,
    field_sync: Option<field_sync::RawFieldSync>,
    web: Option<web::RawWeb>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    retention_days: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Option<Spanned<String>>,
    lease_ttl: Option<Spanned<i64>>,
    lease_renew: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    engine: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    url_env: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    allow_plaintext: bool,
    statement_timeout: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Spanned<String>,
    #[serde(default)]
    allowed_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    detail: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    lag_threshold: Option<Spanned<i64>>,
    quiet_hours: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailbox {
    name: Spanned<String>,
    owner: Spanned<String>,
    host: Spanned<String>,
    port: Option<Spanned<i64>>,
    tls: Option<Spanned<TlsMode>>,
    #[serde(default)]
    allow_plaintext: bool,
    ca_file: Option<Spanned<String>>,
    user: Spanned<String>,
    address: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    auth: Option<Spanned<AuthMethod>>,
    token_file: Option<Spanned<String>>,
    token_command: Option<Spanned<String>>,
    token_timeout: Option<Spanned<i64>>,
    sent_folder: Option<Spanned<String>>,
    idle: Option<bool>,
    poll_interval: Option<Spanned<toml::Value>>,
    idle_renew: Option<Spanned<i64>>,
    heartbeat_timeout: Option<Spanned<i64>>,
    others_interval: Option<Spanned<i64>>,
    #[serde(default)]
    unresolved_sender: UnresolvedSender,
    #[serde(default)]
    track_other_mail: OtherMail,
    #[serde(default)]
    smart_matching: bool,
    max_attachment_size: Option<Spanned<i64>>,
    blocked_extensions: Option<Vec<String>>,
    /// `false` turns write-back off; a string names the keyword.
    tracked_keyword: Option<Spanned<toml::Value>>,
    token: Option<Spanned<crate::token::TokenFormat>>,
    #[serde(default)]
    rule: Vec<RawRule>,
    smtp: Option<smtp::RawSmtp>,
    field_sync: Option<field_sync::RawFieldSync>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    folder: Spanned<String>,
    regarding: Option<Spanned<RawRegarding>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawRegarding {
    Fixed(String),
    Lookup {
        #[serde(rename = "type")]
        rtype: String,
        by: LookupBy,
    },
}

/// Turns byte offsets into 1-based line numbers for error messages.
struct Locator<'a> {
    file: String,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
    fn err(
        &self,
        span: Option<std::ops::Range<usize>>,
        key: &str,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: span.map(|s| self.line_of(s.start)),
            key: key.to_string(),
            message: msg.into(),
        }
    }
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!(
                "cannot read the configuration: {e} (copy config.example.toml to {} and edit it, or pass --config)",
                path.display()
            ),
        })?;
        Config::parse(path, &text)
    }

    /// Checks `text` as if it were the file `path` (relative paths resolve against its folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let loc = Locator {
            file: path.display().to_string(),
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let key = msg
                .split('`')
                .nth(1)
                .map(str::to_string)
                .unwrap_or_else(|| "(syntax)".into());
            loc.err(e.span(), &key, msg)
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base.join(p)
            }
        };
        let data_dir = raw
            .data_dir
            .as_ref()
            .map(|d| resolve(d.get_ref()))
            .unwrap_or_else(|| resolve("foldertrack-data"));

        let positive = |v: &Option<Spanned<i64>>, key: &str, default: u64, max: u64| {
            positive(&loc, v, key, default, max)
        };
        let d = FetchLimits::default();
        let fetch = FetchLimits {
            batch_messages: positive(
                &raw.batch_messages,
                "batch_messages",
                d.batch_messages as u64,
                10_000,
            )? as usize,
            batch_bytes: positive(&raw.batch_bytes, "batch_bytes", d.batch_bytes, 1 << 30)?,
            max_message_bytes: positive(
                &raw.max_message_size,
                "max_message_size",
                d.max_message_bytes,
                512 << 20,
            )?,
        };
        // 4 MB: sled's real footprint is a few times its nominal cache, and with bodies in
        // the blob packs the store holds only small values and indexes. Measured on a
        // 50,000-message sync: peak RSS 62 MB with 4, 69 with 8, 80 with 16, CPU within noise.
        let cache_bytes = positive(&raw.cache_mb, "cache_mb", 4, 4096)? * 1024 * 1024;
        let command_timeout = std::time::Duration::from_secs(positive(
            &raw.command_timeout,
            "command_timeout",
            120,
            3600,
        )?);

        let (metrics_listen, metrics) = metrics_settings(&loc, raw.metrics.as_ref())?;
        let dh = HealthSettings::default();
        let health = match &raw.health {
            None => dh,
            Some(h) => HealthSettings {
                lag_threshold: std::time::Duration::from_secs(positive(
                    &h.lag_threshold,
                    "health.lag_threshold",
                    dh.lag_threshold.as_secs(),
                    86_400,
                )?),
                quiet_hours: positive(
                    &h.quiet_hours,
                    "health.quiet_hours",
                    dh.quiet_hours,
                    24 * 365,
                )?,
            },
        };
        let store = store_settings(&loc, raw.store.as_ref(), &resolve)?;
        let agent = agent_settings(&loc, raw.agent.as_ref())?;
        let audit_retention_days = audit_retention(&loc, raw.audit.as_ref())?;
        let web = web::check(&loc, raw.web.as_ref())?;
        let globals = Globals {
            smtp: raw.smtp.as_ref(),
            field_sync: raw.field_sync.as_ref(),
        };
        let mut mailboxes = check_mailboxes(&loc, raw.mailbox, globals, &resolve)?;
        for mb in &mut mailboxes {
            mb.max_message_bytes = fetch.max_message_bytes;
            mb.command_timeout = command_timeout;
        }
        Ok(Config {
            store,
            agent,
            audit_retention_days,
            web,
            metrics_listen,
            metrics,
            health,
            command_timeout,
            path: path.to_path_buf(),
            data_dir,
            mailboxes,
            fetch,
            cache_bytes,
        })
    }

    /// `--data-dir DIR`: this run keeps its control socket and local files in `dir`, so that
    /// one config file serves several agents on one host; the default agent name then names
    /// the dir too.
    pub fn override_data_dir(&mut self, dir: &Path) {
        self.data_dir = dir.to_path_buf();
        if !self.agent.name_set {
            self.agent.name = format!("{}:{}", host_name(), dir.display());
        }
    }

    pub fn mailbox(&self, name: &str) -> Option<&MailboxConfig> {
        self.mailboxes.iter().find(|m| m.name == name)
    }
}

/// Every `[[mailbox]]`, checked; a name used twice is an error.
fn check_mailboxes(
    loc: &Locator<'_>,
    raw: Vec<RawMailbox>,
    globals: Globals<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Vec<MailboxConfig>, ConfigError> {
    let mut mailboxes: Vec<MailboxConfig> = Vec::new();
    for (i, m) in raw.into_iter().enumerate() {
        let mb = check_mailbox(loc, i, m, globals, resolve)?;
        if mailboxes.iter().any(|o| o.name == mb.name) {
            return Err(loc.err(
                None,
                &format!("mailbox[{i}].name"),
                format!("mailbox name `{}` is used twice", mb.name),
            ));
        }
        mailboxes.push(mb);
    }
    Ok(mailboxes)
}

/// The global tables a mailbox's own tables override key by key.
#[derive(Clone, Copy)]
struct Globals<'a> {
    smtp: Option<&'a smtp::RawSmtp>,
    field_sync: Option<&'a field_sync::RawFieldSync>,
}

fn check_mailbox(
    loc: &Locator<'_>,
    i: usize,
    m: RawMailbox,
    globals: Globals<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<MailboxConfig, ConfigError> {
    let k = |f: &str| format!("mailbox[{i}].{f}");
    let name = m.name.get_ref().trim().to_string();
    if name.is_empty() || name.contains(['\0', '/']) {
        return Err(loc.err(
            Some(m.name.span()),
            &k("name"),
            "must be non-empty and hold no `/`",
        ));
    }
    let owner = mailbox_owner(loc, &k, &m.owner)?;
    let (tls, port) = server(loc, &k, &m)?;
    let auth = m.auth.as_ref().map(|a| *a.get_ref()).unwrap_or_default();
    let oauth = token_source(loc, &k, &m, auth, resolve)?;
    let smtp = smtp::check(
        loc,
        &format!("mailbox[{i}]"),
        m.smtp.clone(),
        globals.smtp,
        smtp::MailboxAuth {
            name: m.name.get_ref().trim(),
            user: m.user.get_ref(),
            oauth: oauth.as_ref(),
        },
        resolve,
    )?;
    let password = imap_password(loc, &k, &m, oauth.is_some(), resolve)?;
    let sent_folder = m
        .sent_folder
        .as_ref()
        .map(|s| s.get_ref().trim().trim_matches('/').to_string())
        .filter(|s| !s.eq_ignore_ascii_case("auto") && !s.is_empty());
    let rules =
        m.rule
            .iter()
            .enumerate()
            .try_fold(Vec::new(), |mut rules: Vec<Rule>, (j, r)| {
                let rule = check_rule(loc, &|f: &str| format!("mailbox[{i}].rule[{j}].{f}"), r)?;
                if rules.iter().any(|o| o.folder == rule.folder) {
                    return Err(loc.err(
                        Some(r.folder.span()),
                        &format!("mailbox[{i}].rule[{j}].folder"),
                        format!("folder `{}` has two rules", rule.folder),
                    ));
                }
                rules.push(rule);
                Ok(rules)
            })?;
    if rules.len() > 25 {
        tracing::warn!(mailbox = %name, rules = rules.len(), "more than 25 folder rules: Dynamics 365 stops at 25; foldertrack goes on");
    }
    Ok(MailboxConfig {
        name,
        owner,
        host: m.host.get_ref().trim().to_string(),
        port,
        tls,
        ca_file: m.ca_file.as_ref().map(|c| resolve(c.get_ref())),
        user: m.user.get_ref().clone(),
        address: m
            .address
            .as_ref()
            .map(|a| a.get_ref().to_ascii_lowercase())
            .or_else(|| {
                m.user
                    .get_ref()
                    .contains('@')
                    .then(|| m.user.get_ref().to_ascii_lowercase())
            }),
        password,
        auth,
        oauth,
        sent_folder,
        watch: watch_settings(loc, &k, &m)?,
        crm: crm_settings(loc, &k, &m)?,
        field_sync: field_sync::check(
            loc,
            &k("field_sync"),
            m.field_sync.as_ref(),
            globals.field_sync,
        )?,
        rules,
        max_message_bytes: FetchLimits::default().max_message_bytes,
        command_timeout: crate::defaults::COMMAND_TIMEOUT,
        smtp,
    })
}

/// The owner is a user record, `systemuser:KEY`.
fn mailbox_owner(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    owner: &Spanned<String>,
) -> Result<RecordRef, ConfigError> {
    let r: RecordRef = owner
        .get_ref()
        .parse()
        .map_err(|e: String| loc.err(Some(owner.span()), &k("owner"), e))?;
    if r.rtype != "systemuser" {
        return Err(loc.err(
            Some(owner.span()),
            &k("owner"),
            format!("the owner must be a user, written systemuser:KEY (got `{r}`)"),
        ));
    }
    Ok(r)
}

/// TLS mode (plaintext only with `allow_plaintext`) and port (993, or 143 for STARTTLS and
/// plaintext, unless set).
fn server(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    m: &RawMailbox,
) -> Result<(TlsMode, u16), ConfigError> {
    let tls = m
        .tls
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(TlsMode::Implicit);
    plaintext_allowed(
        loc,
        &k("tls"),
        m.tls.as_ref(),
        m.allow_plaintext,
        "the password in clear text: set allow_plaintext = true in this mailbox if that is really wanted (e.g. a server on loopback)",
    )?;
    let default = match tls {
        TlsMode::Implicit => 993,
        TlsMode::Starttls | TlsMode::None => 143,
    };
    Ok((tls, port_or(loc, &k("port"), &m.port, default)?))
}

/// A number of seconds from 1 to 86400, or `default`.
fn secs(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    secs_up_to(loc, &k(key), v, default, 86_400)
}

/// A number of seconds from 1 to `max`, or `default`. Shared by the IMAP and SMTP sides.
fn secs_up_to(
    loc: &Locator<'_>,
    key: &str,
    v: &Option<Spanned<i64>>,
    default: std::time::Duration,
    max: i64,
) -> Result<std::time::Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if (1..=max).contains(s.get_ref()) => {
            Ok(std::time::Duration::from_secs(*s.get_ref() as u64))
        }
        Some(s) => Err(loc.err(
            Some(s.span()),
            key,
            format!("must be a number of seconds from 1 to {max}"),
        )),
    }
}

/// A TCP port, or `default`. Shared by the IMAP and SMTP sides.
fn port_or(
    loc: &Locator<'_>,
    key: &str,
    p: &Option<Spanned<i64>>,
    default: u16,
) -> Result<u16, ConfigError> {
    match p {
        None => Ok(default),
        Some(p) => u16::try_from(*p.get_ref())
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| loc.err(Some(p.span()), key, "must be a TCP port, 1-65535")),
    }
}

/// `tls = "none"` only with `allow_plaintext = true`: it sends `what` (a sentence saying what
/// goes in clear text and where to allow it). Shared by the IMAP and SMTP sides.
fn plaintext_allowed(
    loc: &Locator<'_>,
    key: &str,
    tls: Option<&Spanned<TlsMode>>,
    allowed: bool,
    what: &str,
) -> Result<(), ConfigError> {
    if tls.is_some_and(|t| *t.get_ref() == TlsMode::None) && !allowed {
        return Err(loc.err(
            tls.map(|t| t.span()),
            key,
            format!("tls = \"none\" sends {what}"),
        ));
    }
    Ok(())
}

/// The OAuth2 token source of an `xoauth2`/`oauthbearer` mailbox (exactly one of
/// `token_file` and `token_command`); none for the others, which may not set one.
fn token_source(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    m: &RawMailbox,
    auth: AuthMethod,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<crate::oauth::TokenSource>, ConfigError> {
    match (&m.token_file, &m.token_command) {
        _ if !auth.is_oauth() => match m.token_file.as_ref().or(m.token_command.as_ref()) {
            Some(t) => Err(loc.err(
                Some(t.span()),
                &k("token_file"),
                "token_file and token_command are for auth = \"xoauth2\" or \"oauthbearer\"",
            )),
            None => Ok(None),
        },
        (Some(f), None) => Ok(Some(crate::oauth::TokenSource::File(resolve(f.get_ref())))),
        (None, Some(c)) if !c.get_ref().trim().is_empty() => {
            Ok(Some(crate::oauth::TokenSource::Command {
                command: c.get_ref().clone(),
                timeout: secs(loc, k, &m.token_timeout, "token_timeout", std::time::Duration::from_secs(30))?,
            }))
        }
        (Some(f), Some(_)) => {
            Err(loc.err(Some(f.span()), &k("token_file"), "set token_file or token_command, not both"))
        }
        _ => Err(loc.err(
            m.auth.as_ref().map(|a| a.span()),
            &k("auth"),
            "OAuth2 needs a token source: add token_file = \"path\" (kept fresh by another tool) or token_command = \"command that prints the access token\"",
        )),
    }
}

/// Where the IMAP password comes from; an OAuth2 mailbox has none (and may not set one).
fn imap_password(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    m: &RawMailbox,
    oauth: bool,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<PasswordSource, ConfigError> {
    if oauth {
        return match m.password_env.as_ref().or(m.password_file.as_ref()) {
            Some(p) => Err(loc.err(
                Some(p.span()),
                &k("password_env"),
                "an OAuth2 mailbox logs in with its token: remove password_env / password_file",
            )),
            None => Ok(PasswordSource::None),
        };
    }
    password_source(loc, &m.password_env, &m.password_file, &k("password_env"), resolve)?
        .ok_or_else(|| {
            loc.err(
                Some(m.user.span()),
                &k("password_env"),
                "no password source: add password_env = \"VAR\" (an environment variable) or password_file = \"path\"",
            )
        })
}

/// One folder rule: a folder or a pattern with one `*` standing for a whole level, and its
/// regarding (a lookup needs the `*`).
fn check_rule(
    loc: &Locator<'_>,
    rk: &dyn Fn(&str) -> String,
    r: &RawRule,
) -> Result<Rule, ConfigError> {
    let bad = |msg: &str| loc.err(Some(r.folder.span()), &rk("folder"), msg);
    let folder = r.folder.get_ref().trim().trim_matches('/').to_string();
    if folder.is_empty() {
        return Err(bad("must name a folder, e.g. \"INBOX/Tracked/Acme\""));
    }
    let stars = folder.matches('*').count();
    if stars > 1 {
        return Err(bad("a pattern may hold only one `*`"));
    }
    if stars == 1 && folder.split('/').any(|seg| seg.contains('*') && seg != "*") {
        return Err(bad(
            "`*` must stand for a whole folder level, e.g. \"INBOX/Customers/*\"",
        ));
    }
    let regarding = match &r.regarding {
        None => Regarding::None,
        Some(sp) => match sp.get_ref() {
            RawRegarding::Fixed(s) => Regarding::Fixed(
                s.parse()
                    .map_err(|e: String| loc.err(Some(sp.span()), &rk("regarding"), e))?,
            ),
            RawRegarding::Lookup { rtype, by } => Regarding::Lookup {
                rtype: rtype.trim().to_ascii_lowercase(),
                by: *by,
            },
        },
    };
    if matches!(regarding, Regarding::Lookup { .. }) && stars == 0 {
        return Err(loc.err(
            Some(r.folder.span()),
            &rk("regarding"),
            "regarding = { type, by } needs a `*` in the folder to look up",
        ));
    }
    Ok(Rule { folder, regarding })
}

/// How the mailbox waits for mail: IDLE or polling, and their timings.
fn watch_settings(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    m: &RawMailbox,
) -> Result<WatchSettings, ConfigError> {
    let d = WatchSettings::default();
    let poll = match &m.poll_interval {
        None => PollInterval::Auto,
        Some(v) => match v.get_ref() {
            toml::Value::String(s) if s == "auto" => PollInterval::Auto,
            toml::Value::Integer(n) if (1..=86_400).contains(n) => {
                PollInterval::Every(std::time::Duration::from_secs(*n as u64))
            }
            _ => {
                return Err(loc.err(
                    Some(v.span()),
                    &k("poll_interval"),
                    "must be \"auto\" or a number of seconds from 1 to 86400",
                ))
            }
        },
    };
    Ok(WatchSettings {
        idle: m.idle.unwrap_or(true),
        poll,
        idle_renew: secs(loc, k, &m.idle_renew, "idle_renew", d.idle_renew)?,
        heartbeat_timeout: secs(
            loc,
            k,
            &m.heartbeat_timeout,
            "heartbeat_timeout",
            d.heartbeat_timeout,
        )?,
        others_interval: secs(
            loc,
            k,
            &m.others_interval,
            "others_interval",
            d.others_interval,
        )?,
    })
}

/// What tracking does with this mailbox's mail (DESIGN §4.11–4.13).
fn crm_settings(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    m: &RawMailbox,
) -> Result<CrmSettings, ConfigError> {
    let dcrm = CrmSettings::default();
    let max_attachment_size = match &m.max_attachment_size {
        None => dcrm.max_attachment_size,
        Some(v) if (0..=128 * 1024 * 1024).contains(v.get_ref()) => *v.get_ref() as u64,
        Some(v) => {
            return Err(loc.err(
                Some(v.span()),
                &k("max_attachment_size"),
                "must be a size in bytes from 0 to 134217728 (128 MB)",
            ))
        }
    };
    let tracked_keyword = match &m.tracked_keyword {
        None => dcrm.tracked_keyword.clone(),
        Some(v) => match v.get_ref() {
            toml::Value::Boolean(false) => None,
            toml::Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && !"(){%*\"\\]".contains(c)) => Some(s.clone()),
            _ => return Err(loc.err(Some(v.span()), &k("tracked_keyword"), "must be false or an IMAP keyword such as \"$Tracked\" (no spaces or ( ) { % * \" \\ ])")),
        },
    };
    let token = match &m.token {
        None => dcrm.token.clone(),
        Some(t) => {
            t.get_ref()
                .validate()
                .map_err(|e| loc.err(Some(t.span()), &k("token"), e))?;
            t.get_ref().clone()
        }
    };
    Ok(CrmSettings {
        unresolved_sender: m.unresolved_sender,
        track_other_mail: m.track_other_mail,
        smart_matching: m.smart_matching,
        max_attachment_size,
        blocked_extensions: m
            .blocked_extensions
            .as_ref()
            .map(|v| {
                v.iter()
                    .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or(dcrm.blocked_extensions),
        tracked_keyword,
        token,
    })
}

/// A whole number from 1 to `max`, or `default`.
fn positive(
    loc: &Locator<'_>,
    v: &Option<Spanned<i64>>,
    key: &str,
    default: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if *s.get_ref() > 0 && (*s.get_ref() as u64) <= max => Ok(*s.get_ref() as u64),
        Some(s) => Err(loc.err(Some(s.span()), key, format!("must be between 1 and {max}"))),
    }
}

/// `[metrics]`: where to listen (none: not served), and what the endpoint may show and to
/// which host names it answers.
fn metrics_settings(
    loc: &Locator<'_>,
    raw: Option<&RawMetrics>,
) -> Result<(Option<std::net::SocketAddr>, MetricsSettings), ConfigError> {
    let Some(m) = raw else {
        return Ok((None, MetricsSettings::default()));
    };
    let listen = m.listen.get_ref().parse().map_err(|e| {
        loc.err(
            Some(m.listen.span()),
            "metrics.listen",
            format!("must be an address and port such as \"127.0.0.1:9898\" ({e})"),
        )
    })?;
    let mut metrics = MetricsSettings {
        detail: m.detail,
        ..Default::default()
    };
    for h in &m.allowed_hosts {
        let name = h
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if name.is_empty() || name.contains([':', '/', ' ', '[', ']']) {
            return Err(loc.err(
                Some(h.span()),
                "metrics.allowed_hosts",
                format!(
                    "`{}` is not a host name: write names only, without scheme or port (\"metrics.example.com\")",
                    h.get_ref()
                ),
            ));
        }
        metrics.allowed_hosts.push(name);
    }
    Ok((Some(listen), metrics))
}

/// `[store]`: the engine, and for PostgreSQL exactly one of `url` and `url_env`, the TLS mode
/// (`disable` only with `allow_plaintext = true`), an optional `ca_file` and the
/// `statement_timeout` in seconds (1 to 86400, default 30).
/// `[audit] retention_days`: `None` (kept for ever) unless set, from 1 to 36500 days.
fn audit_retention(loc: &Locator<'_>, raw: Option<&RawAudit>) -> Result<Option<u64>, ConfigError> {
    match raw.and_then(|a| a.retention_days.as_ref()) {
        None => Ok(None),
        Some(v) if (1..=36_500).contains(v.get_ref()) => Ok(Some(*v.get_ref() as u64)),
        Some(v) => Err(loc.err(
            Some(v.span()),
            "audit.retention_days",
            "must be a number of days from 1 to 36500 (leave it out to keep the audit trail for ever)",
        )),
    }
}

fn agent_settings(loc: &Locator<'_>, raw: Option<&RawAgent>) -> Result<AgentSettings, ConfigError> {
    let d = AgentSettings::default();
    let Some(a) = raw else {
        return Ok(d);
    };
    let name = match &a.name {
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().len() > 200 => {
            return Err(loc.err(Some(n.span()), "agent.name", "must be 1 to 200 characters"))
        }
        Some(n) => Some(n.get_ref().trim().to_string()),
        None => None,
    };
    let lease_ttl = secs_up_to(loc, "agent.lease_ttl", &a.lease_ttl, d.lease_ttl, 3600)?;
    let lease_renew = secs_up_to(
        loc,
        "agent.lease_renew",
        &a.lease_renew,
        d.lease_renew,
        1200,
    )?;
    if lease_renew * 3 > lease_ttl {
        let span = a
            .lease_renew
            .as_ref()
            .or(a.lease_ttl.as_ref())
            .map(|s| s.span());
        return Err(loc.err(
            span,
            "agent.lease_renew",
            format!(
                "must be at most a third of lease_ttl ({} s): an agent renews at least twice before its lease lapses",
                lease_ttl.as_secs()
            ),
        ));
    }
    Ok(AgentSettings {
        name_set: name.is_some(),
        name: name.unwrap_or(d.name),
        lease_ttl,
        lease_renew,
    })
}

fn store_settings(
    loc: &Locator<'_>,
    raw: Option<&RawStore>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<StoreEngine, ConfigError> {
    let Some(s) = raw else {
        return Ok(StoreEngine::Sled);
    };
    let engine = s.engine.as_ref().map_or("sled", |e| e.get_ref().as_str());
    match engine {
        "sled" => {
            let pg_only = [
                ("store.url", s.url.as_ref()),
                ("store.url_env", s.url_env.as_ref()),
                ("store.tls", s.tls.as_ref()),
                ("store.ca_file", s.ca_file.as_ref()),
            ];
            if let Some((key, v)) = pg_only.iter().find_map(|(k, v)| v.map(|v| (k, v))) {
                return Err(loc.err(
                    Some(v.span()),
                    key,
                    "is for engine = \"postgres\" (the sled store lives in data_dir)",
                ));
            }
            if let Some(t) = &s.statement_timeout {
                return Err(loc.err(
                    Some(t.span()),
                    "store.statement_timeout",
                    "is for engine = \"postgres\" (the sled store lives in data_dir)",
                ));
            }
            return Ok(StoreEngine::Sled);
        }
        "postgres" => {}
        other => {
            return Err(loc.err(
                s.engine.as_ref().map(|e| e.span()),
                "store.engine",
                format!("unknown engine `{other}`: write \"sled\" (the default) or \"postgres\""),
            ))
        }
    }
    let url = match (&s.url, &s.url_env) {
        (Some(u), None) => PgUrl::Literal(u.get_ref().clone()),
        (None, Some(v)) if !v.get_ref().trim().is_empty() => PgUrl::Env(v.get_ref().clone()),
        (Some(u), Some(_)) => {
            return Err(loc.err(Some(u.span()), "store.url", "set url or url_env, not both"))
        }
        _ => {
            return Err(loc.err(
                s.engine.as_ref().map(|e| e.span()),
                "store.url",
                "engine = \"postgres\" needs url = \"postgresql://user@host/database\" or url_env = \"VARIABLE\" (an environment variable holding the URL, e.g. with its password)",
            ))
        }
    };
    if let Some(u) = &s.url {
        if u.get_ref().parse::<postgres::Config>().is_err() {
            return Err(loc.err(
                Some(u.span()),
                "store.url",
                format!(
                    "`{}` is not a PostgreSQL connection string (postgresql://user@host:port/database)",
                    redact_url(u.get_ref())
                ),
            ));
        }
    }
    let tls = match s.tls.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
        None | Some(("verify-full", _)) => PgTls::VerifyFull,
        Some(("require", _)) => PgTls::Require,
        Some(("disable", span)) if !s.allow_plaintext => {
            return Err(loc.err(
                Some(span),
                "store.tls",
                "tls = \"disable\" sends the database password and every tracked mail in clear text: set allow_plaintext = true in [store] if that is really wanted (e.g. a server on loopback; over a Unix socket TLS does not apply anyway)",
            ))
        }
        Some(("disable", _)) => PgTls::Disable,
        Some((other, span)) => {
            return Err(loc.err(
                Some(span),
                "store.tls",
                format!("unknown mode `{other}`: write \"verify-full\" (the default), \"require\" or \"disable\""),
            ))
        }
    };
    let statement_timeout = std::time::Duration::from_secs(positive(
        loc,
        &s.statement_timeout,
        "store.statement_timeout",
        crate::defaults::STATEMENT_TIMEOUT.as_secs(),
        86_400,
    )?);
    Ok(StoreEngine::Postgres(PgSettings {
        url,
        tls,
        ca_file: s.ca_file.as_ref().map(|f| resolve(f.get_ref())),
        statement_timeout,
    }))
}

/// `password_env` or `password_file` (not both; `key` names the first in errors), or `None`
/// when neither is set. Shared by the IMAP and SMTP sides.
fn password_source(
    loc: &Locator<'_>,
    env: &Option<Spanned<String>>,
    file: &Option<Spanned<String>>,
    key: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<PasswordSource>, ConfigError> {
    match (env, file) {
        (Some(e), None) => Ok(Some(PasswordSource::Env(e.get_ref().clone()))),
        (None, Some(f)) => Ok(Some(PasswordSource::File(resolve(f.get_ref())))),
        (Some(e), Some(_)) => Err(loc.err(
            Some(e.span()),
            key,
            "set password_env or password_file, not both",
        )),
        (None, None) => Ok(None),
    }
}

impl PasswordSource {
    /// Reads the secret. The error names where it looked, never the value.
    pub fn read(&self) -> Result<String, String> {
        match self {
            PasswordSource::Env(v) => std::env::var(v)
                .map_err(|_| format!("environment variable {v} (password_env) is not set")),
            PasswordSource::File(p) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    if let Ok(md) = std::fs::metadata(p) {
                        if md.permissions().mode() & 0o004 != 0 {
                            tracing::warn!(file = %p.display(), "password_file is world-readable: chmod 600 it");
                        }
                    }
                }
                std::fs::read_to_string(p)
                    .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|e| format!("cannot read password_file {}: {e}", p.display()))
            }
            PasswordSource::None => {
                Err("no password source (this mailbox logs in with OAuth2)".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/ft/foldertrack.toml"), text)
    }

    const GOOD: &str = r#"
data_dir = "data"
[[mailbox]]
name = "alice"
owner = "systemuser:alice"
host = "imap.example.com"
user = "alice@example.com"
password_env = "ALICE_PW"
  [[mailbox.rule]]
  folder = "INBOX/Tracked/Acme"
  regarding = "account:acme"
  [[mailbox.rule]]
  folder = "INBOX/Customers/*"
  regarding = { type = "account", by = "name" }
  [[mailbox.rule]]
  folder = "INBOX/Misc"
"#;

    #[test]
    fn good_config_resolves_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/ft/data"));
        let m = &c.mailboxes[0];
        assert_eq!(m.port, 993);
        assert_eq!(m.tls, TlsMode::Implicit);
        assert_eq!(m.address.as_deref(), Some("alice@example.com"));
        assert_eq!(m.rules.len(), 3);
        assert_eq!(
            m.rules[0].regarding,
            Regarding::Fixed(RecordRef::new("account", "acme"))
        );
        assert_eq!(
            m.rules[1].regarding,
            Regarding::Lookup {
                rtype: "account".into(),
                by: LookupBy::Name
            }
        );
        assert_eq!(m.rules[2].regarding, Regarding::None);
    }

    #[test]
    fn plaintext_needs_allow_plaintext_and_names_the_line() {
        let t = GOOD.replace(
            "user = \"alice@example.com\"",
            "user = \"alice@example.com\"\ntls = \"none\"",
        );
        let e = parse(&t).unwrap_err();
        assert_eq!(e.key, "mailbox[0].tls");
        assert_eq!(e.line, Some(8));
        assert!(
            e.to_string()
                .starts_with("/etc/ft/foldertrack.toml:8: mailbox[0].tls:"),
            "{e}"
        );
        let ok = t.replace("tls = \"none\"", "tls = \"none\"\nallow_plaintext = true");
        assert_eq!(parse(&ok).unwrap().mailboxes[0].port, 143);
    }

    #[test]
    fn unknown_key_and_bad_regarding_are_reported_with_lines() {
        let e = parse(&GOOD.replace("host =", "hots =")).unwrap_err();
        assert!(e.message.contains("hots"), "{e}");
        assert!(e.line.is_some());
        let e = parse(&GOOD.replace("\"account:acme\"", "\"acme\"")).unwrap_err();
        assert_eq!(e.key, "mailbox[0].rule[0].regarding");
        assert_eq!(e.line, Some(11));
        let e = parse(&GOOD.replace("Customers/*", "Cust*/*")).unwrap_err();
        assert!(e.message.contains("only one"), "{e}");
        let e = parse(&GOOD.replace("password_env = \"ALICE_PW\"", "")).unwrap_err();
        assert!(e.message.contains("no password source"), "{e}");
        let e = parse(&GOOD.replace("systemuser:alice", "contact:alice")).unwrap_err();
        assert_eq!(e.key, "mailbox[0].owner");
    }

    #[test]
    fn smtp_tables_merge_field_by_field_and_refuse_plaintext() {
        let global =
            "[smtp]\nhost = \"relay.example.com\"\nuser = \"relay\"\npassword_env = \"RELAY_PW\"\n";
        let c = parse(&format!("{GOOD}{global}")).unwrap();
        let s = c.mailboxes[0].smtp.as_ref().unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.tls),
            ("relay.example.com", 587, TlsMode::Starttls)
        );
        assert_eq!(s.user.as_deref(), Some("relay"));
        assert_eq!(s.retry, RetryPolicy::default());
        // The mailbox's own table overrides what it names, and its password source replaces
        // the global one (no env + file clash).
        let own = format!(
            "{GOOD}  [mailbox.smtp]\n  user = \"alice\"\n  password_file = \"pw\"\n  tls = \"implicit\"\n  retry_initial = 5\n{global}"
        );
        let c = parse(&own).unwrap();
        let s = c.mailboxes[0].smtp.as_ref().unwrap();
        assert_eq!((s.host.as_str(), s.port), ("relay.example.com", 465));
        assert_eq!(s.user.as_deref(), Some("alice"));
        assert_eq!(
            s.password,
            Some(PasswordSource::File(PathBuf::from("/etc/ft/pw")))
        );
        assert_eq!(s.retry.initial, std::time::Duration::from_secs(5));
        // No table: the mailbox cannot send.
        assert!(parse(GOOD).unwrap().mailboxes[0].smtp.is_none());
        // Plaintext needs allow_plaintext, and the error names the line and key.
        let plain = format!("{GOOD}  [mailbox.smtp]\n  host = \"127.0.0.1\"\n  tls = \"none\"\n");
        let e = parse(&plain).unwrap_err();
        assert_eq!(e.key, "mailbox[0].smtp.tls");
        assert_eq!(e.line, Some(19));
        let ok = plain.replace("tls = \"none\"", "tls = \"none\"\n  allow_plaintext = true");
        assert_eq!(
            parse(&ok).unwrap().mailboxes[0].smtp.as_ref().unwrap().port,
            25
        );
        // A user needs a password, and the other way round.
        let e = parse("[smtp]\nhost = \"h\"\nuser = \"u\"\n[[mailbox]]\nname = \"a\"\nowner = \"systemuser:a\"\nhost = \"h\"\nuser = \"a\"\npassword_env = \"X\"\n").unwrap_err();
        assert_eq!(e.key, "smtp.password_env");
        assert!(e.message.contains("no password source"), "{e}");
        let e = parse(&format!(
            "{GOOD}  [mailbox.smtp]\n  host = \"h\"\n  retry_initial = 60\n  retry_max = 10\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "mailbox[0].smtp.retry_max");
        // XOAUTH2 on SMTP borrows the mailbox's token source, so the mailbox needs one.
        let e = parse(&format!(
            "{GOOD}  [mailbox.smtp]\n  host = \"h\"\n  auth = \"xoauth2\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "mailbox[0].smtp.auth");
        assert!(e.message.contains("token_file or token_command"), "{e}");
        let oauth = GOOD.replace(
            "password_env = \"ALICE_PW\"",
            "auth = \"xoauth2\"\ntoken_file = \"tok\"",
        );
        let c = parse(&format!(
            "{oauth}  [mailbox.smtp]\n  host = \"h\"\n  auth = \"xoauth2\"\n"
        ))
        .unwrap();
        let s = c.mailboxes[0].smtp.as_ref().unwrap();
        assert_eq!(
            s.user.as_deref(),
            Some("alice@example.com"),
            "the mailbox's user"
        );
        assert_eq!(s.oauth.as_ref().map(|o| o.0.as_str()), Some("alice"));
    }

    #[test]
    fn metrics_health_and_oauth_settings_are_checked() {
        let c = parse(&format!(
            "{GOOD}[metrics]\nlisten = \"127.0.0.1:9898\"\n[health]\nlag_threshold = 60\n"
        ))
        .unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9898".parse().unwrap()));
        assert_eq!(c.health.lag_threshold, std::time::Duration::from_secs(60));
        assert_eq!(c.health.quiet_hours, 72);
        assert_eq!(parse(GOOD).unwrap().metrics_listen, None);
        let e = parse(&format!("{GOOD}[metrics]\nlisten = \"localhost\"\n")).unwrap_err();
        assert_eq!(e.key, "metrics.listen");
        assert_eq!(e.line, Some(GOOD.lines().count() + 2), "the `listen` line");

        let oauth = GOOD.replace(
            "password_env = \"ALICE_PW\"",
            "auth = \"xoauth2\"\ntoken_command = \"get-token alice\"",
        );
        let m = &parse(&oauth).unwrap().mailboxes[0];
        assert_eq!(m.auth, AuthMethod::Xoauth2);
        assert_eq!(m.password, PasswordSource::None);
        assert!(
            matches!(&m.oauth, Some(crate::oauth::TokenSource::Command { command, .. }) if command == "get-token alice")
        );
        let both = oauth.replace("auth = ", "password_env = \"X\"\nauth = ");
        assert!(parse(&both)
            .unwrap_err()
            .message
            .contains("remove password_env"));
        let token_without_oauth = GOOD.replace(
            "password_env = \"ALICE_PW\"",
            "password_env = \"ALICE_PW\"\ntoken_file = \"t\"",
        );
        assert_eq!(
            parse(&token_without_oauth).unwrap_err().key,
            "mailbox[0].token_file"
        );
    }

    #[test]
    fn agent_settings_default_to_the_host_name_and_check_the_lease_times() {
        let c = parse(GOOD).unwrap();
        assert!(!c.agent.name.is_empty() && !c.agent.name_set);
        assert_eq!(c.agent.lease_ttl, std::time::Duration::from_secs(20));
        assert_eq!(c.agent.lease_renew, std::time::Duration::from_secs(5));
        // `--data-dir` names a second agent of the same config apart.
        let mut two = c.clone();
        two.override_data_dir(Path::new("/srv/ft/b"));
        assert_eq!(two.data_dir, PathBuf::from("/srv/ft/b"));
        assert_eq!(two.agent.name, format!("{}:/srv/ft/b", c.agent.name));
        // A name written in the config stays.
        let text =
            format!("{GOOD}\n[agent]\nname = \"east-1\"\nlease_ttl = 30\nlease_renew = 10\n");
        let mut named = parse(&text).unwrap();
        named.override_data_dir(Path::new("/srv/ft/b"));
        assert_eq!(named.agent.name, "east-1");
        assert_eq!(named.agent.lease_ttl, std::time::Duration::from_secs(30));
        // Renewing less often than a third of the TTL would let leases lapse under a hiccup.
        let e = parse(&format!(
            "{GOOD}\n[agent]\nlease_ttl = 10\nlease_renew = 5\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "agent.lease_renew");
        assert!(e.message.contains("a third of lease_ttl"), "{e}");
        let e = parse(&format!("{GOOD}\n[agent]\nname = \" \"\n")).unwrap_err();
        assert_eq!(e.key, "agent.name");
        // The audit trail is kept for ever unless a retention is set.
        assert_eq!(c.audit_retention_days, None);
        let kept = parse(&format!("{GOOD}\n[audit]\nretention_days = 365\n")).unwrap();
        assert_eq!(kept.audit_retention_days, Some(365));
        let e = parse(&format!("{GOOD}\n[audit]\nretention_days = 0\n")).unwrap_err();
        assert_eq!(e.key, "audit.retention_days");
    }

    #[test]
    fn web_is_off_by_default_and_its_errors_name_the_key() {
        assert_eq!(parse(GOOD).unwrap().web, None);
        let c = parse(&format!("{GOOD}\n[web]\nlisten = \"127.0.0.1:8080\"\n")).unwrap();
        let w = c.web.unwrap();
        assert_eq!(w.listen.port(), 8080);
        assert_eq!(
            w.auth,
            super::WebAuth::Token {
                token_env: "FOLDERTRACK_WEB_TOKEN".into()
            }
        );
        let proxied =
            "listen = \"127.0.0.1:1\"\nauth = \"proxy\"\nproxy_header = \"X-Forwarded-User\"";
        let c = parse(&format!("{GOOD}\n[web]\n{proxied}\n")).unwrap();
        assert_eq!(
            c.web.unwrap().auth,
            super::WebAuth::Proxy {
                header: "x-forwarded-user".into()
            }
        );
        for (extra, key) in [
            ("listen = \"localhost\"", "web.listen"),
            ("listen = \"0.0.0.0:1\"\nauth = \"proxy\"", "web.auth"),
            ("listen = \"127.0.0.1:1\"\nauth = \"basic\"", "web.auth"),
            (
                "listen = \"127.0.0.1:1\"\nauth = \"proxy\"\nproxy_header = \"a b\"",
                "web.proxy_header",
            ),
            (
                "listen = \"127.0.0.1:1\"\ntoken_env = \"A B\"",
                "web.token_env",
            ),
        ] {
            let e = parse(&format!("{GOOD}\n[web]\n{extra}\n")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn field_sync_defaults_overrides_and_errors_name_file_line_key() {
        use super::SyncDirection as D;
        let c = parse(GOOD).unwrap();
        let fs = &c.mailboxes[0].field_sync;
        assert_eq!(
            (fs.read, fs.follow_up, fs.importance, fs.categories),
            (D::ToCrm, D::Both, D::ToCrm, D::Both)
        );
        let text = format!("{GOOD}\n[field_sync]\nfollow_up = \"none\"\nflag_scan_interval = 60\n");
        let c = parse(&text).unwrap();
        assert_eq!(c.mailboxes[0].field_sync.follow_up, D::None);
        assert_eq!(c.mailboxes[0].field_sync.flag_scan_interval.as_secs(), 60);
        let e = parse(&format!("{GOOD}\n[field_sync]\nfollow_up = \"sideways\"\n")).unwrap_err();
        assert_eq!(e.key, "field_sync.follow_up");
        assert!(e.line.is_some(), "{e}");
        let e = parse(&format!("{GOOD}\n[field_sync]\ncolour = \"both\"\n")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn store_settings_are_checked_and_never_show_the_password() {
        assert_eq!(parse(GOOD).unwrap().store, StoreEngine::Sled);
        let with = |store: &str| format!("{GOOD}[store]\n{store}\n");
        // The line of `[store]`; its keys follow.
        let at = GOOD.matches('\n').count() + 1;
        let url = "postgresql://ft:s3cret@db.example.com/crm";
        let c = parse(&with(&format!("engine = \"postgres\"\nurl = \"{url}\""))).unwrap();
        let StoreEngine::Postgres(pg) = &c.store else {
            panic!("postgres expected")
        };
        assert_eq!(pg.tls, PgTls::VerifyFull, "verify-full by default");
        assert_eq!(pg.url().unwrap(), url);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgresql://ft:***@db.example.com/crm"),
            "{shown}"
        );
        assert_eq!(
            redact_url("host=/run/pg user=ft password=s3cret dbname=crm"),
            "host=/run/pg user=ft password=*** dbname=crm"
        );
        assert_eq!(
            redact_url("postgresql:///crm?host=/run&password=s3cret&user=ft"),
            "postgresql:///crm?host=/run&password=***&user=ft"
        );
        let err = |store: &str| parse(&with(store)).unwrap_err();
        let e = err("engine = \"postgres\"");
        assert_eq!((e.line, e.key.as_str()), (Some(at + 1), "store.url"));
        let e = err("engine = \"postgres\"\nurl = \"postgresql://h/db\"\nurl_env = \"X\"");
        assert_eq!((e.line, e.key.as_str()), (Some(at + 2), "store.url"));
        let e = err("engine = \"postgres\"\nurl = \"postgresql://h/db\"\ntls = \"disable\"");
        assert_eq!((e.line, e.key.as_str()), (Some(at + 3), "store.tls"));
        assert!(e.message.contains("allow_plaintext"), "{}", e.message);
        let e = err("engine = \"mysql\"");
        assert_eq!(e.key, "store.engine");
        let e = err("url = \"postgresql://h/db\"");
        assert!(e.message.contains("engine = \"postgres\""), "{}", e.message);
        let ok = parse(&with(
            "engine = \"postgres\"\nurl_env = \"FT_TEST_UNSET_URL\"\ntls = \"disable\"\nallow_plaintext = true\nca_file = \"ca.pem\"",
        ))
        .unwrap();
        let StoreEngine::Postgres(pg) = &ok.store else {
            panic!("postgres expected")
        };
        assert_eq!(pg.tls, PgTls::Disable);
        assert_eq!(pg.ca_file.as_deref(), Some(Path::new("/etc/ft/ca.pem")));
        assert!(pg.url().unwrap_err().contains("FT_TEST_UNSET_URL"));
    }

    #[test]
    fn store_statement_timeout_defaults_to_30_s_and_is_checked() {
        let with = |store: &str| format!("{GOOD}[store]\n{store}\n");
        let pg = "engine = \"postgres\"\nurl = \"postgresql://h/db\"\n";
        let timeout = |extra: &str| match parse(&with(&format!("{pg}{extra}"))).map(|c| c.store) {
            Ok(StoreEngine::Postgres(s)) => Ok(s.statement_timeout.as_secs()),
            Ok(other) => panic!("postgres expected, got {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(timeout("").unwrap(), 30);
        assert_eq!(timeout("statement_timeout = 5").unwrap(), 5);
        for bad in ["statement_timeout = 0", "statement_timeout = 86401"] {
            let e = timeout(bad).unwrap_err();
            assert_eq!(e.key, "store.statement_timeout", "{bad}");
            assert!(e.message.contains("between 1 and 86400"), "{}", e.message);
        }
        let e = parse(&with("statement_timeout = 5")).unwrap_err();
        assert_eq!(e.key, "store.statement_timeout");
        assert!(e.message.contains("engine = \"postgres\""), "{}", e.message);
    }
}
