//! The IMAP side: connecting (TLS, STARTTLS, auth), listing folders, fetching messages.
//!
//! Built on async-imap 0.12; see `NOTES-crates.md` in the design notes for its pitfalls (dead
//! sessions that answer `Ok`, unencoded folder names), which this module works around.

pub(crate) mod connect;
pub(crate) mod fetch;
pub(crate) mod folders;
pub(crate) mod guard;
pub(crate) mod utf7;

use std::time::Duration;

pub(crate) use connect::{connect, Connected, ImapSession};

/// The server a session talks to, and how long each of its commands may take. It travels with
/// the session (not a process-wide setting), so mailboxes and tests can each have their own.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `host:port`, for error messages.
    pub addr: String,
    /// Limit of one command (IDLE's wait has its own limits).
    pub timeout: Duration,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}
/// How long establishing TCP + TLS + greeting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// An IMAP failure, classified so the caller knows whether to retry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImapError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {message}")]
    Tls { addr: String, message: String },
    #[error("{addr} does not offer STARTTLS ({message}); refusing to go on in plaintext (use tls = \"implicit\", or tls = \"none\" with allow_plaintext = true if that is really wanted)")]
    StarttlsMissing { addr: String, message: String },
    #[error("login to {addr} as {user} failed: {message}")]
    Auth {
        addr: String,
        user: String,
        message: String,
    },
    #[error("{addr}: {what} timed out after {secs} s")]
    Timeout {
        addr: String,
        what: String,
        secs: u64,
    },
    #[error("{addr}: folder `{folder}` does not exist or cannot be opened: {message}")]
    FolderMissing {
        addr: String,
        folder: String,
        message: String,
    },
    #[error("{addr}: {what} failed: {message}")]
    Protocol {
        addr: String,
        what: String,
        message: String,
    },
    #[error("password for mailbox {mailbox}: {message}")]
    Password { mailbox: String, message: String },
    /// A name or value with a control character, which an IMAP command cannot carry.
    #[error("`{text}` holds the control character U+{char:04X}, which cannot be sent in an IMAP command; skipped")]
    Unquotable { text: String, char: u32 },
    /// No OAuth2 access token (the command failed, the file is missing): retried with backoff,
    /// since the tool that refreshes tokens may just be slow or its provider down.
    #[error("OAuth2 token for mailbox {mailbox}: {source}")]
    Token {
        mailbox: String,
        source: crate::oauth::TokenError,
    },
}

impl ImapError {
    /// Errors that will not go away by retrying (Dynamics disables the mailbox on these).
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            ImapError::Auth { .. }
                | ImapError::StarttlsMissing { .. }
                | ImapError::Password { .. }
                | ImapError::Tls { .. }
        )
    }
}

/// Runs an IMAP future under the session's command timeout, mapping both failure kinds.
pub(crate) async fn timed<T, F>(peer: &Peer, what: &str, f: F) -> Result<T, ImapError>
where
    F: std::future::Future<Output = async_imap::error::Result<T>>,
{
    let limit = peer.timeout;
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ImapError::Protocol {
            addr: peer.addr.clone(),
            what: what.to_string(),
            message: e.to_string(),
        }),
        Err(_) => Err(ImapError::Timeout {
            addr: peer.addr.clone(),
            what: what.to_string(),
            secs: limit.as_secs(),
        }),
    }
}

/// Quotes an (already encoded) folder name as an IMAP quoted string. It lets every character
/// through: for text that came from a server or a sender, use [`quote_checked`].
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// [`quote`] for text foldertrack did not write itself (folder names from LIST, Message-IDs):
/// an IMAP quoted string cannot hold CR, LF or NUL (RFC 3501 §4.3), and a server-sent name
/// with CR LF in it would end the command and start one of the server's choosing. Every
/// control character is refused; the caller skips that name with a warning.
///
/// # Errors
/// [`ImapError::Unquotable`] when `text` holds a control character.
pub(crate) fn quote_checked(text: &str) -> Result<String, ImapError> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(ImapError::Unquotable {
            text: utf7::escape_raw(text),
            char: c as u32,
        }),
        None => Ok(quote(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_checked_refuses_control_characters() {
        assert_eq!(quote_checked(r#"a "b" \ c"#).unwrap(), r#""a \"b\" \\ c""#);
        assert_eq!(quote_checked("M&APw-ller").unwrap(), "\"M&APw-ller\"");
        for bad in ["a\r\nA1 DELETE INBOX", "a\nb", "a\0b", "a\x1bb", "a\u{85}b"] {
            let e = quote_checked(bad).unwrap_err();
            assert!(matches!(e, ImapError::Unquotable { .. }), "{bad:?}");
            assert!(
                !e.to_string().contains('\n'),
                "the error itself is one line: {e}"
            );
        }
    }
}
