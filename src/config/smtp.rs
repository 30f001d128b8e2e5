//! The `[smtp]` table (global) and `[mailbox.smtp]` (per mailbox): how `activities send` and
//! the outbox reach the mailbox's submission server.
//!
//! A mailbox's table overrides the global one field by field, so a company with one relay
//! writes `[smtp]` once and a mailbox only names what differs (usually `user` and the
//! password). Like IMAP, plaintext needs `tls = "none"` *and* `allow_plaintext = true`:
//! lettre sends AUTH PLAIN in the clear on an unencrypted connection.

use super::{ConfigError, Locator, PasswordSource, TlsMode};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// One SMTP table as written (every field optional, so tables can be merged).
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    tls: Option<Spanned<TlsMode>>,
    allow_plaintext: Option<bool>,
    ca_file: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    timeout: Option<Spanned<i64>>,
    retry_initial: Option<Spanned<i64>>,
    retry_max: Option<Spanned<i64>>,
    give_up_after: Option<Spanned<i64>>,
    auth: Option<Spanned<SmtpAuth>>,
}

/// How foldertrack logs in to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpAuth {
    /// AUTH PLAIN or LOGIN with `user` and its password (none at all without `user`).
    #[default]
    Password,
    /// AUTH XOAUTH2 with the mailbox's own access token (`token_file` / `token_command`): the
    /// one token Exchange Online and Gmail accept for IMAP and SMTP alike.
    Xoauth2,
}

/// What the SMTP side may borrow from its mailbox: the login name and the OAuth2 token source.
pub(super) struct MailboxAuth<'a> {
    pub name: &'a str,
    pub user: &'a str,
    pub oauth: Option<&'a crate::oauth::TokenSource>,
}

impl RawSmtp {
    /// `own` field by field over `global`.
    fn over(own: RawSmtp, global: &RawSmtp) -> RawSmtp {
        let g = global.clone();
        // A mailbox naming its own password source replaces the global one entirely (else
        // password_env from one and password_file from the other would clash).
        let own_password = own.password_env.is_some() || own.password_file.is_some();
        RawSmtp {
            host: own.host.or(g.host),
            port: own.port.or(g.port),
            tls: own.tls.or(g.tls),
            allow_plaintext: own.allow_plaintext.or(g.allow_plaintext),
            ca_file: own.ca_file.or(g.ca_file),
            user: own.user.or(g.user),
            password_env: if own_password {
                own.password_env
            } else {
                g.password_env
            },
            password_file: if own_password {
                own.password_file
            } else {
                g.password_file
            },
            timeout: own.timeout.or(g.timeout),
            retry_initial: own.retry_initial.or(g.retry_initial),
            retry_max: own.retry_max.or(g.retry_max),
            give_up_after: own.give_up_after.or(g.give_up_after),
            auth: own.auth.or(g.auth),
        }
    }
}

/// How a failed send is retried: exponential backoff from `initial` to `max`, until
/// `give_up_after` since the message was queued (then it is marked failed, as an MTA bounces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30 * 60),
            give_up_after: Duration::from_secs(2 * 24 * 3600),
        }
    }
}

/// A mailbox's outgoing side, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    /// No AUTH when `None`.
    pub user: Option<String>,
    pub password: Option<PasswordSource>,
    /// With [`SmtpAuth::Xoauth2`]: the mailbox's token source and the key of its token cache
    /// (the mailbox name, shared with the IMAP login).
    pub oauth: Option<(String, crate::oauth::TokenSource)>,
    /// Per SMTP command (connect, each reply).
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

/// Checks the mailbox's SMTP settings: its own table over the global one. `None` when neither
/// exists (the mailbox cannot send).
pub(super) fn check(
    loc: &Locator<'_>,
    mailbox_key: &str,
    own: Option<RawSmtp>,
    global: Option<&RawSmtp>,
    mailbox: MailboxAuth<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<Option<SmtpConfig>, ConfigError> {
    let prefix = if own.is_some() {
        format!("{mailbox_key}.smtp")
    } else {
        "smtp".to_string()
    };
    let raw = match (own, global) {
        (None, None) => return Ok(None),
        (Some(o), Some(g)) => RawSmtp::over(o, g),
        (Some(o), None) => o,
        (None, Some(g)) => g.clone(),
    };
    let k = |f: &str| format!("{prefix}.{f}");
    let host = match &raw.host {
        Some(h) if !h.get_ref().trim().is_empty() => h.get_ref().trim().to_string(),
        Some(h) => return Err(loc.err(Some(h.span()), &k("host"), "must name the SMTP server")),
        None => {
            return Err(loc.err(
                None,
                &k("host"),
                "missing: add host = \"smtp.example.com\" to the [smtp] table",
            ))
        }
    };
    let tls = raw
        .tls
        .as_ref()
        .map(|t| *t.get_ref())
        .unwrap_or(TlsMode::Starttls);
    super::plaintext_allowed(
        loc,
        &k("tls"),
        raw.tls.as_ref(),
        raw.allow_plaintext == Some(true),
        "the password and the mail in clear text: set allow_plaintext = true in this [smtp] table if that is really wanted (e.g. a relay on loopback)",
    )?;
    let default_port = match tls {
        TlsMode::Implicit => 465,
        TlsMode::Starttls => 587,
        TlsMode::None => 25,
    };
    let port = super::port_or(loc, &k("port"), &raw.port, default_port)?;
    let (user, password, oauth) = login(loc, &k, &raw, mailbox, resolve)?;
    Ok(Some(SmtpConfig {
        host,
        port,
        tls,
        ca_file: raw.ca_file.as_ref().map(|c| resolve(c.get_ref())),
        user,
        password,
        oauth,
        timeout: super::secs_up_to(
            loc,
            &k("timeout"),
            &raw.timeout,
            Duration::from_secs(60),
            3600,
        )?,
        retry: retry_policy(loc, &k, &raw)?,
    }))
}

/// Who the SMTP side logs in as: a user and password, the mailbox's OAuth2 token
/// (`auth = "xoauth2"`), or nobody (no AUTH).
#[allow(clippy::type_complexity)]
fn login(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    raw: &RawSmtp,
    mailbox: MailboxAuth<'_>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<
    (
        Option<String>,
        Option<PasswordSource>,
        Option<(String, crate::oauth::TokenSource)>,
    ),
    ConfigError,
> {
    let password = super::password_source(
        loc,
        &raw.password_env,
        &raw.password_file,
        &k("password_env"),
        resolve,
    )?;
    let mut user = raw.user.as_ref().map(|u| u.get_ref().clone());
    let auth = raw.auth.as_ref().map(|a| *a.get_ref()).unwrap_or_default();
    let oauth = match auth {
        SmtpAuth::Password => None,
        SmtpAuth::Xoauth2 => {
            let span = raw.auth.as_ref().map(|a| a.span());
            let Some(src) = mailbox.oauth else {
                return Err(loc.err(
                    span,
                    &k("auth"),
                    "auth = \"xoauth2\" uses the mailbox's OAuth2 token: give the mailbox auth = \"xoauth2\" and token_file or token_command",
                ));
            };
            if password.is_some() {
                return Err(loc.err(
                    span,
                    &k("auth"),
                    "auth = \"xoauth2\" logs in with the token: remove password_env / password_file from this [smtp] table",
                ));
            }
            user.get_or_insert_with(|| mailbox.user.to_string());
            Some((mailbox.name.to_string(), src.clone()))
        }
    };
    match (&user, &password) {
        (Some(_), None) if oauth.is_some() => {}
        (Some(_), None) => {
            return Err(loc.err(
                raw.user.as_ref().map(|u| u.span()),
                &k("password_env"),
                "user is set but no password source: add password_env = \"VAR\" or password_file = \"path\" (or remove user to send without AUTH)",
            ))
        }
        (None, Some(_)) => {
            return Err(loc.err(
                raw.password_env
                    .as_ref()
                    .or(raw.password_file.as_ref())
                    .map(|p| p.span()),
                &k("user"),
                "a password is set but no user to log in as: add user = \"…\"",
            ))
        }
        _ => {}
    }
    Ok((user, password, oauth))
}

/// When a deferred send is tried again, and when it is given up.
fn retry_policy(
    loc: &Locator<'_>,
    k: &dyn Fn(&str) -> String,
    raw: &RawSmtp,
) -> Result<RetryPolicy, ConfigError> {
    let d = RetryPolicy::default();
    let secs = |v: &Option<Spanned<i64>>, key: &str, default: Duration, max: i64| {
        super::secs_up_to(loc, &k(key), v, default, max)
    };
    let retry = RetryPolicy {
        initial: secs(&raw.retry_initial, "retry_initial", d.initial, 86_400)?,
        max: secs(&raw.retry_max, "retry_max", d.max, 86_400)?,
        give_up_after: secs(
            &raw.give_up_after,
            "give_up_after",
            d.give_up_after,
            30 * 86_400,
        )?,
    };
    if retry.max < retry.initial {
        return Err(loc.err(
            raw.retry_max.as_ref().map(|s| s.span()),
            &k("retry_max"),
            "must not be below retry_initial",
        ));
    }
    Ok(retry)
}
