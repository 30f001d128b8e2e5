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
}

/// Where the web pages are served and how a person logs in.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSettings {
    pub listen: std::net::SocketAddr,
    /// The environment variable holding the admin token (`auth = "token"`): a login form sets
    /// a session cookie, and `Authorization: Bearer TOKEN` serves scripts. The token itself
    /// never goes in the config file.
    pub token_env: String,
}

/// `[web]`: `None` when absent. `auth` is `token` (the only mode built so far).
pub(super) fn check(
    loc: &Locator<'_>,
    raw: Option<&RawWeb>,
) -> Result<Option<WebSettings>, ConfigError> {
    let Some(w) = raw else {
        return Ok(None);
    };
    let listen = w.listen.get_ref().parse().map_err(|e| {
        loc.err(
            Some(w.listen.span()),
            "web.listen",
            format!("must be an address and port such as \"127.0.0.1:8080\" ({e})"),
        )
    })?;
    if let Some(a) = w.auth.as_ref().filter(|a| a.get_ref() != "token") {
        return Err(loc.err(
            Some(a.span()),
            "web.auth",
            "must be \"token\" (a login form and bearer tokens; \"proxy\" is not built yet)",
        ));
    }
    let token_env = match &w.token_env {
        None => "FOLDERTRACK_WEB_TOKEN".to_string(),
        Some(v)
            if !v.get_ref().is_empty()
                && v.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            v.get_ref().clone()
        }
        Some(v) => {
            return Err(loc.err(
                Some(v.span()),
                "web.token_env",
                "must name an environment variable (letters, digits, _)",
            ))
        }
    };
    Ok(Some(WebSettings { listen, token_env }))
}
