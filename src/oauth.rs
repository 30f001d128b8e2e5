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
//! `access_token` is what any protocol client calls (the SMTP side can reuse it as is), and
//! `xoauth2_payload` / `oauthbearer_payload` build the SASL initial responses.

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
    Command {
        /// The command line.
        command: String,
        /// How long it may run before it is killed and the login fails.
        timeout: Duration,
    },
}

/// Why no token could be had. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("token_file {path}: {message}")]
    File { path: String, message: String },
    #[error("token_command `{command}`: {message}")]
    Command { command: String, message: String },
}

/// A token is refreshed this long before it expires, so a login never races its expiry.
pub(crate) const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How long a token from a command that gave no `expires_in` is reused: short enough that a
/// typical one-hour token is replaced well before it expires.
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(10 * 60);

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
pub(crate) fn parse_token(text: &str) -> Result<(String, Option<Duration>), String> {
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
pub(crate) async fn access_token(
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
pub(crate) fn forget(key: &str) {
    if let Ok(mut c) = cache().lock() {
        c.remove(key);
    }
}

/// Environment variables a token command keeps: what a shell and an OAuth2 tool need (locale,
/// home and config dirs, systemd credentials, CA bundle, proxies). Everything else is dropped:
/// the agent's environment holds every mailbox's `password_env`, which is not the command's
/// business.
const KEPT_ENV: [&str; 22] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "XDG_RUNTIME_DIR",
    "CREDENTIALS_DIRECTORY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Most a token command may print on stdout: a JWT access token is a few KiB.
pub(crate) const MAX_OUTPUT: usize = 64 * 1024;

/// Kills the command's whole process group (it leads one: `process_group(0)`), so a helper it
/// started does not outlive it holding the pipe.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: killpg only sends a signal; the group is the child's own (it is its leader).
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    }
}

async fn run_command(
    command: &str,
    timeout: Duration,
) -> Result<(String, Option<Duration>), TokenError> {
    use tokio::io::AsyncReadExt;
    let err = |message: String| TokenError::Command {
        command: command.to_string(),
        message,
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| {
            k.to_str()
                .is_some_and(|k| KEPT_ENV.contains(&k) || k.starts_with("LC_"))
        }))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| err(format!("cannot start: {e}")))?;
    let pid = child.id();
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        return Err(err("cannot read its output".into()));
    };
    let work = async {
        let out = async {
            let mut buf = Vec::new();
            (&mut stdout)
                .take(MAX_OUTPUT as u64 + 1)
                .read_to_end(&mut buf)
                .await?;
            if buf.len() > MAX_OUTPUT {
                // Stop it now rather than read on until the timeout.
                kill_group(pid);
            }
            Ok::<_, std::io::Error>(buf)
        };
        let errs = async {
            // The first line is enough for the error message; the rest is drained.
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut buf).await;
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            buf
        };
        let (out, errs, status) = tokio::join!(out, errs, child.wait());
        Ok::<_, std::io::Error>((out?, errs, status?))
    };
    let (out, errs, status) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map_err(|e| err(format!("failed: {e}")))?,
        Err(_) => {
            kill_group(pid);
            return Err(err(format!(
                "gave no token within {} s (token_timeout); it was killed",
                timeout.as_secs()
            )));
        }
    };
    // Whatever it left behind goes with it.
    kill_group(pid);
    if out.len() > MAX_OUTPUT {
        return Err(err(format!(
            "printed more than {} KiB; a token is a few KiB (print only the token, or the JSON form)",
            MAX_OUTPUT / 1024
        )));
    }
    if !status.success() {
        let stderr = String::from_utf8_lossy(&errs);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(err(format!(
            "exited with {status}{}",
            if first.is_empty() {
                String::new()
            } else {
                format!(": {}", first.chars().take(200).collect::<String>())
            }
        )));
    }
    let text =
        String::from_utf8(out).map_err(|_| err("printed something that is not UTF-8".into()))?;
    parse_token(&text).map_err(err)
}

/// The XOAUTH2 initial response (Google's and Microsoft's format, also IMAP and SMTP):
/// `user=U ^A auth=Bearer T ^A ^A`.
pub(crate) fn xoauth2_payload(user: &str, token: &str) -> Vec<u8> {
    format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes()
}

/// The OAUTHBEARER initial response (RFC 7628 §3.1), with the authorization identity escaped
/// (`,` → `=2C`, `=` → `=3D`) as GS2 requires.
pub(crate) fn oauthbearer_payload(user: &str, host: &str, port: u16, token: &str) -> Vec<u8> {
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

    /// The command ran with the agent's whole environment: every mailbox's `password_env`.
    #[tokio::test]
    async fn token_command_gets_a_clean_environment() {
        std::env::set_var("FT_TEST_ALICE_IMAP_PASSWORD", "hunter2");
        let src = TokenSource::Command {
            command: r#"printf '%s.%s.%s' "${FT_TEST_ALICE_IMAP_PASSWORD:-none}" "${HOME:+home}" "${PATH:+path}""#.into(),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            access_token("env", &src, true).await.unwrap(),
            "none.home.path"
        );
    }

    /// On timeout the whole process group goes, not only `sh`: a helper it started kept
    /// running (and holding the pipe).
    #[tokio::test]
    async fn a_timed_out_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let src = TokenSource::Command {
            command: format!("sleep 60 & echo $! > {}; wait", pidfile.display()),
            timeout: Duration::from_millis(500),
        };
        let e = access_token("pg", &src, true).await.unwrap_err();
        assert!(e.to_string().contains("within"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = || {
            // A zombie (no init to reap it in a container) is dead too.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone(), "the background sleep {pid} survived");
    }

    /// A command that prints without end is stopped at the bound, not read until the timeout.
    #[tokio::test]
    async fn token_command_output_is_bounded() {
        let src = TokenSource::Command {
            command: r#"yes "$(printf 'se%s' cret-out)""#.into(),
            timeout: Duration::from_secs(20),
        };
        let t = Instant::now();
        let e = access_token("big", &src, true).await.unwrap_err();
        assert!(e.to_string().contains("64 KiB"), "{e}");
        assert!(!e.to_string().contains("secret-out"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
}
