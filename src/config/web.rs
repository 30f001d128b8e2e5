//! The `[web]` table: the web pages for people (`src/web`), off unless `listen` is set.

use super::{ConfigError, Locator};
use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    listen: Spanned<String>,
    auth: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    proxy_header: Option<Spanned<String>>,
}

/// Where the web pages are served and how a person logs in.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    pub listen: std::net::SocketAddr,
    pub auth: WebAuth,
}

/// How the pages know who is reading.
#[derive(Debug, Clone, PartialEq)]
pub enum WebAuth {
    /// The admin token from this environment variable (`auth = "token"`, the default): a
    /// login form sets a session cookie, and `Authorization: Bearer TOKEN` serves scripts. The
    /// token itself never goes in the config file. Whoever has it sees everything.
    Token { token_env: String },
    /// A reverse proxy on the same host has logged the person in and names them in this
    /// header (`auth = "proxy"`, `proxy_header`, default `X-Remote-User`): the value is the key
    /// of a `systemuser` record, who sees what the CRM's security model lets them.
    Proxy { header: String },
}

/// `[web]`: `None` when absent.
pub(super) fn check(
    loc: &Locator<'_>,
    raw: Option<&RawWeb>,
) -> Result<Option<WebSettings>, ConfigError> {
    let Some(w) = raw else {
        return Ok(None);
    };
    let listen: std::net::SocketAddr = w.listen.get_ref().parse().map_err(|e| {
        loc.err(
            Some(w.listen.span()),
            "web.listen",
            format!("must be an address and port such as \"127.0.0.1:8080\" ({e})"),
        )
    })?;
    let auth = match w.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
        None | Some(("token", _)) => WebAuth::Token {
            token_env: token_env(loc, w.token_env.as_ref())?,
        },
        Some(("proxy", span)) if !listen.ip().is_loopback() => {
            return Err(loc.err(
                Some(span),
                "web.auth",
                format!("\"proxy\" trusts a header any client can send: it needs a loopback `listen` (the proxy on this host in front), not {listen}"),
            ))
        }
        Some(("proxy", _)) => WebAuth::Proxy {
            header: proxy_header(loc, w.proxy_header.as_ref())?,
        },
        Some((_, span)) => {
            return Err(loc.err(
                Some(span),
                "web.auth",
                "must be \"token\" (a login form and bearer tokens) or \"proxy\" (a header from a reverse proxy)",
            ))
        }
    };
    Ok(Some(WebSettings { listen, auth }))
}

fn token_env(loc: &Locator<'_>, v: Option<&Spanned<String>>) -> Result<String, ConfigError> {
    let var = |c: char| c.is_ascii_alphanumeric() || c == '_';
    name(
        loc,
        v,
        "web.token_env",
        var,
        "an environment variable (letters, digits, _)",
    )
    .map(|n| n.unwrap_or_else(|| "FOLDERTRACK_WEB_TOKEN".to_string()))
}

fn proxy_header(loc: &Locator<'_>, v: Option<&Spanned<String>>) -> Result<String, ConfigError> {
    let header = |c: char| c.is_ascii_alphanumeric() || c == '-';
    name(
        loc,
        v,
        "web.proxy_header",
        header,
        "a header (letters, digits, -)",
    )
    .map(|n| n.map_or_else(|| "x-remote-user".to_string(), |h| h.to_ascii_lowercase()))
}

/// A name-valued setting, if given: not empty, and every character `ok`, else an error at
/// its place saying it "must name" `what`.
fn name(
    loc: &Locator<'_>,
    v: Option<&Spanned<String>>,
    key: &str,
    ok: fn(char) -> bool,
    what: &str,
) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(v) if !v.get_ref().is_empty() && v.get_ref().chars().all(ok) => {
            Ok(Some(v.get_ref().clone()))
        }
        Some(v) => Err(loc.err(Some(v.span()), key, format!("must name {what}"))),
    }
}
