//! The SMTP side (lettre): a transport per mailbox from its `[smtp]` settings, one send, and
//! the Test & Enable check of the outgoing side.
//!
//! Errors are sorted by what the outbox must do next, not by where lettre found them: a 5xx
//! reply to the message is final, an authentication failure is the mailbox's problem (the
//! message stays queued), anything else (refused connection, 4xx, timeout) is retried.

use crate::config::{SmtpConfig, TlsMode};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

pub(crate) type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// Why a send (or the check) did not go through, sorted by what to do next.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SmtpError {
    /// The configuration cannot work (CA file, password source): fix it, then retry.
    #[error("SMTP {addr}: {message}")]
    Config { addr: String, message: String },
    /// The server refused our credentials (535 and friends). The message stays queued.
    #[error("SMTP login to {addr} as {user} failed: {message}")]
    Auth {
        addr: String,
        user: String,
        message: String,
    },
    /// The server refused the message for good (5xx): it will not be sent.
    #[error("SMTP {addr} refused the message: {message}")]
    Rejected { addr: String, message: String },
    /// Try again later: connection refused or lost, 4xx, timeout, TLS trouble.
    #[error("SMTP {addr}: {message}")]
    Deferred { addr: String, message: String },
}

impl SmtpError {
    /// A failure that retrying will not fix for this message.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, SmtpError::Rejected { .. })
    }
}

/// `host:port`, for messages.
pub(crate) fn addr(cfg: &SmtpConfig) -> String {
    format!("{}:{}", cfg.host, cfg.port)
}

/// Builds the transport. Reads the password or fetches the OAuth2 token (`refresh`: not the
/// cached one); neither is ever logged or put in an error.
pub(crate) async fn transport(cfg: &SmtpConfig, refresh: bool) -> Result<Transport, SmtpError> {
    let addr = addr(cfg);
    let config_err = |message: String| SmtpError::Config {
        addr: addr.clone(),
        message,
    };
    let tls = match cfg.tls {
        TlsMode::None => Tls::None,
        mode => {
            let mut params = TlsParameters::builder(cfg.host.clone());
            if let Some(path) = &cfg.ca_file {
                // As on the IMAP side, ca_file *replaces* the public roots: a private CA is
                // what the admin trusts for this server, and a public CA's certificate for the
                // same name must not be taken instead. A file without a certificate is an
                // error, not "no extra roots".
                let pem = std::fs::read(path).map_err(|e| {
                    config_err(format!("cannot read ca_file {}: {e}", path.display()))
                })?;
                let n = rustls_pemfile::certs(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| config_err(format!("ca_file {} is not PEM: {e}", path.display())))?
                    .len();
                if n == 0 {
                    return Err(config_err(format!(
                        "ca_file {} holds no certificate",
                        path.display()
                    )));
                }
                let certs = Certificate::from_pem(&pem).map_err(|e| {
                    config_err(format!(
                        "ca_file {} is not a PEM certificate: {e}",
                        path.display()
                    ))
                })?;
                params = params
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(certs);
            }
            let params = params
                .build_rustls()
                .map_err(|e| config_err(format!("TLS setup: {e}")))?;
            if mode == TlsMode::Implicit {
                Tls::Wrapper(params)
            } else {
                Tls::Required(params)
            }
        }
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
        .port(cfg.port)
        .tls(tls)
        .timeout(Some(cfg.timeout));
    match (&cfg.user, &cfg.password, &cfg.oauth) {
        (Some(user), _, Some((key, source))) => {
            let token = crate::oauth::access_token(key, source, refresh)
                .await
                .map_err(|e| config_err(format!("OAuth2 token: {e}")))?;
            b = b
                .credentials(Credentials::new(user.clone(), token))
                .authentication(vec![Mechanism::Xoauth2]);
        }
        (Some(user), Some(pw), None) => {
            let password = pw
                .read()
                .map_err(|m| config_err(format!("password: {m}")))?;
            b = b.credentials(Credentials::new(user.clone(), password));
        }
        _ => {}
    }
    Ok(b.build())
}

/// Runs `op` with a transport; with OAuth2, a refused login is tried once more with a fresh
/// token (the cached one may have been revoked early), as the IMAP login does.
async fn with_transport<T, F, Fut>(cfg: &SmtpConfig, op: F) -> Result<T, SmtpError>
where
    F: Fn(Transport) -> Fut,
    Fut: std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
{
    let first = op(transport(cfg, false).await?)
        .await
        .map_err(|e| classify(cfg, &e));
    match first {
        Err(SmtpError::Auth { .. }) if cfg.oauth.is_some() => op(transport(cfg, true).await?)
            .await
            .map_err(|e| classify(cfg, &e)),
        r => r,
    }
}

/// Sends `raw` to the envelope's recipients. `Ok` holds the server's answer.
pub(crate) async fn send(
    cfg: &SmtpConfig,
    envelope: &Envelope,
    raw: &[u8],
) -> Result<String, SmtpError> {
    let resp = with_transport(cfg, |t| async move { t.send_raw(envelope, raw).await }).await?;
    Ok(format!(
        "{} {}",
        resp.code(),
        resp.message().collect::<Vec<_>>().join(" ")
    ))
}

/// Connects, secures, greets and logs in, as `check` does for the outgoing side. Returns a
/// line saying what worked.
pub(crate) async fn test(cfg: &SmtpConfig) -> Result<String, SmtpError> {
    if !with_transport(cfg, |t| async move { t.test_connection().await }).await? {
        return Err(SmtpError::Deferred {
            addr: addr(cfg),
            message: "the server did not answer NOOP after the login".into(),
        });
    }
    Ok(format!(
        "{} ({}{})",
        addr(cfg),
        match cfg.tls {
            TlsMode::Implicit => "implicit TLS",
            TlsMode::Starttls => "STARTTLS",
            TlsMode::None => "plaintext",
        },
        match (&cfg.user, &cfg.oauth) {
            (Some(u), Some(_)) => format!(", logged in as {u} with XOAUTH2"),
            (Some(u), None) => format!(", logged in as {u}"),
            (None, _) => ", no AUTH".to_string(),
        }
    ))
}

/// Sorts a lettre error. The message keeps lettre's text and the server's reply (which may
/// quote our address, never the password).
fn classify(cfg: &SmtpConfig, e: &lettre::transport::smtp::Error) -> SmtpError {
    let addr = addr(cfg);
    let message = error_text(e);
    let code = e.status().map(|c| c.to_string());
    // RFC 4954: 535 bad credentials, 534 mechanism too weak, 538 encryption required, 530
    // authentication required.
    if matches!(code.as_deref(), Some("535" | "534" | "538" | "530")) {
        return SmtpError::Auth {
            addr,
            user: cfg.user.clone().unwrap_or_default(),
            message,
        };
    }
    if e.is_permanent() {
        SmtpError::Rejected { addr, message }
    } else {
        SmtpError::Deferred { addr, message }
    }
}

/// lettre's error and its causes on one line.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ca_file: &std::path::Path) -> SmtpConfig {
        SmtpConfig {
            host: "smtp.example.com".into(),
            port: 465,
            tls: TlsMode::Implicit,
            ca_file: Some(ca_file.to_path_buf()),
            user: None,
            password: None,
            oauth: None,
            timeout: std::time::Duration::from_secs(5),
            retry: Default::default(),
        }
    }

    /// An empty (or certificate-less) ca_file was taken as "no extra roots": the public roots
    /// alone, silently. The IMAP side refuses it; so does SMTP now.
    #[tokio::test]
    async fn a_ca_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("empty.pem", ""), ("key.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n")] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let Err(e) = transport(&cfg(&p), false).await else {
                panic!("{name} accepted")
            };
            assert!(e.to_string().contains("holds no certificate"), "{name}: {e}");
        }
    }
}
