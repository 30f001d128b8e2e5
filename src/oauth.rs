//! OAuth2 access tokens for `AUTHENTICATE XOAUTH2` / `OAUTHBEARER` (IMAP now, SMTP later).
//!
//! foldertrack does not run an OAuth2 flow itself: providers differ (Google, Microsoft, Keycloak…)
//! and refresh tokens are best kept by a tool made for them. The admin points a mailbox at a
//! `token_file` that such a tool keeps fresh, or at a `token_command` that prints a current
//! access token (raw, or `{"access_token": "...", "expires_in": 3599}`). Tokens from a command
//! are cached per mailbox until shortly before they expire, and fetched again when a login with a
//! cached one fails once (the provider may have revoked it early). A token is a password: it is
//! never logged, and errors name the file or command, never the value.
//!
//! [`access_token`] is what any protocol client calls (the SMTP side can reuse it as is), and
//! [`xoauth2_payload`] / [`oauthbearer_payload`] build the SASL initial responses.

use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where a mailbox's access token comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenSource {
    /// A file holding the token (raw, or the JSON form), kept fresh by another tool; read at
    /// every login, so a refresh by that tool is picked up at once.
    File(PathBuf),
    /// A shell command (`sh -c`) whose stdout is the token (raw, or the JSON form).
    Command { command: String, timeout: Duration },
}

/// Why no token could be had. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token_file {path}: {message}")]
    File { path: String, message: String },
    #[error("token_command `{command}`: {message}")]
    Command { command: String, message: String },
}

/// A token is refreshed this long before it expires, so a login never races its expiry.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How long a token from a command that gave no `expires_in` is reused: short enough that a
/// typical one-hour token is replaced well before it expires.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);

struct Cached {
    token: String,
    expires_at: Instant,
}

fn cache() -> &'static Mutex<HashMap<String, Cached>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, Cached>>> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

#[derive(Deserialize)]
struct JsonToken {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// Reads a token from what a file or command produced: raw text, or the JSON form.
/// Returns the token and its lifetime when the JSON gave one.
pub fn parse_token(text: &str) -> Result<(String, Option<Duration>), String> {
    let t = text.trim();
    if t.starts_with('{') {
        let j: JsonToken = serde_json::from_str(t).map_err(|e| {
            format!(
                "not a token: JSON without a string access_token ({})",
                e.classify_name()
            )
        })?;
        let secs = match j.expires_in {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        check(&j.access_token)?;
        return Ok((j.access_token, secs.map(Duration::from_secs)));
    }
    check(t)?;
    Ok((t.to_string(), None))
}

/// A token goes into a SASL string: no whitespace or control characters inside.
fn check(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("it gave an empty token".into());
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "the token holds spaces or control characters (print only the token, or the JSON form)"
                .into(),
        );
    }
    Ok(())
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        // The message of a serde_json error may quote the input, i.e. the token: only its kind.
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "missing or mistyped field",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The current access token of `key` (the mailbox name). With `refresh`, a cached token is
/// not used: the command runs again (after a login failed with the cached one).
///
/// # Errors
/// The file cannot be read, the command fails, times out or prints no token.
pub async fn access_token(
    key: &str,
    source: &TokenSource,
    refresh: bool,
) -> Result<String, TokenError> {
    match source {
        TokenSource::File(path) => {
            let err = |message: String| TokenError::File {
                path: path.display().to_string(),
                message,
            };
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(md) = std::fs::metadata(path) {
                    if md.permissions().mode() & 0o004 != 0 {
                        tracing::warn!(file = %path.display(), "token_file is world-readable: chmod 600 it");
                    }
                }
            }
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| err(format!("cannot read: {e}")))?;
            parse_token(&text).map(|(t, _)| t).map_err(err)
        }
        TokenSource::Command { command, timeout } => {
            if !refresh {
                if let Ok(c) = cache().lock() {
                    if let Some(c) = c.get(key) {
                        if Instant::now() + REFRESH_MARGIN < c.expires_at {
                            return Ok(c.token.clone());
                        }
                    }
                }
            }
            let (token, life) = run_command(command, *timeout).await?;
            let life = life.unwrap_or(DEFAULT_LIFETIME);
            tracing::debug!(mailbox = %key, lifetime_s = life.as_secs(), "new OAuth2 access token from token_command");
            if let Ok(mut c) = cache().lock() {
                c.insert(
                    key.to_string(),
                    Cached {
                        token: token.clone(),
                        expires_at: Instant::now() + life,
                    },
                );
            }
            Ok(token)
        }
    }
}

/// Forgets the cached token of `key` (e.g. after its configuration changed).
pub fn forget(key: &str) {
    if let Ok(mut c) = cache().lock() {
        c.remove(key);
    }
}

async fn run_command(
    command: &str,
    timeout: Duration,
) -> Result<(String, Option<Duration>), TokenError> {
    let err = |message: String| TokenError::Command {
        command: command.to_string(),
        message,
    };
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            err(format!(
                "gave no token within {} s (token_timeout); it was killed",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| err(format!("failed: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(err(format!(
            "exited with {}{}",
            out.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {}", first.chars().take(200).collect::<String>())
            }
        )));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| err("printed something that is not UTF-8".into()))?;
    parse_token(&text).map_err(err)
}

/// The XOAUTH2 initial response (Google's and Microsoft's format, also IMAP and SMTP):
/// `user=U ^A auth=Bearer T ^A ^A`.
pub fn xoauth2_payload(user: &str, token: &str) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628 §3.1), with the authorization identity escaped
/// (`,` → `=2C`, `=` → `=3D`) as GS2 requires.
pub fn oauthbearer_payload(user: &str, host: &str, port: u16, token: &str) -> Vec<u8> {
    let a = user.replace('=', "=3D").replace(',', "=2C");
    format!("n,a={a},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_json_tokens_parse_and_bad_ones_do_not_leak() {
        assert_eq!(parse_token("abc.def\n").unwrap(), ("abc.def".into(), None));
        let (t, life) =
            parse_token(r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#)
                .unwrap();
        assert_eq!(t, "ya29.x");
        assert_eq!(life, Some(Duration::from_secs(3599)));
        assert!(parse_token("").is_err());
        let e = parse_token("two words-secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        let e = parse_token(r#"{"access_token": 5, "secret-ish": "leak-me"}"#).unwrap_err();
        assert!(!e.contains("leak-me"), "{e}");
    }

    #[test]
    fn sasl_payloads() {
        assert_eq!(
            xoauth2_payload("a@b.c", "T"),
            b"user=a@b.c\x01auth=Bearer T\x01\x01".to_vec()
        );
        assert_eq!(
            oauthbearer_payload("a,b=c", "h", 143, "T"),
            b"n,a=a=2Cb=3Dc,\x01host=h\x01port=143\x01auth=Bearer T\x01\x01".to_vec()
        );
    }

    #[tokio::test]
    async fn command_tokens_are_cached_until_refresh_and_timeouts_kill() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("n");
        let cmd = format!(
            "echo x >> {0}; printf '{{\"access_token\":\"tok-%s\",\"expires_in\":3600}}' $(wc -l < {0})",
            n.display()
        );
        let src = TokenSource::Command {
            command: cmd,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(access_token("t1", &src, false).await.unwrap(), "tok-1");
        assert_eq!(access_token("t1", &src, false).await.unwrap(), "tok-1");
        assert_eq!(access_token("t1", &src, true).await.unwrap(), "tok-2");
        let slow = TokenSource::Command {
            command: "sleep 5; echo late".into(),
            timeout: Duration::from_millis(300),
        };
        let e = access_token("t2", &slow, false).await.unwrap_err();
        assert!(e.to_string().contains("within"), "{e}");
        let bad = TokenSource::Command {
            command: "echo oops >&2; exit 3".into(),
            timeout: Duration::from_secs(5),
        };
        let e = access_token("t3", &bad, false).await.unwrap_err();
        assert!(e.to_string().contains("oops"), "{e}");
    }
}
