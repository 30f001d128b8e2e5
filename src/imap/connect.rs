//! Connecting and logging in: TCP, then implicit TLS, STARTTLS or (when allowed) plaintext,
//! then LOGIN or AUTHENTICATE PLAIN. Certificates are verified against the Mozilla roots, or
//! against the admin's `ca_file` for a private CA; there is no switch to turn checking off.

use super::guard::Guard;
use super::{ImapError, CONNECT_TIMEOUT};
use crate::config::{AuthMethod, MailboxConfig, TlsMode};
use async_imap::{Client, Session};
use rustls::pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The transport under an IMAP session: one type for TLS and plaintext so the rest of the
/// code has a single `Session` type, with a [`Guard`] on what the server sends.
#[derive(Debug)]
pub(crate) struct Conn {
    inner: Transport,
    guard: Guard,
}

#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    fn new(inner: Transport, guard: Guard) -> Conn {
        Conn { inner, guard }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.inner {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Poll::Ready(Ok(())) = &r {
            this.guard.check(&buf.filled()[before..])?;
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) type ImapSession = Session<Conn>;

/// A logged-in session with what the server said it can do.
pub(crate) struct Connected {
    pub session: ImapSession,
    pub capabilities: Vec<String>,
    pub peer: super::Peer,
    /// How the connection is secured, for `check`.
    pub security: String,
}

impl Connected {
    pub(crate) fn has(&self, cap: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(cap))
    }
}

fn tls_connector(mb: &MailboxConfig, addr: &str) -> Result<TlsConnector, ImapError> {
    let tls_err = |message: String| ImapError::Tls {
        addr: addr.to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &mb.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| tls_err(format!("cannot read ca_file {}: {e}", path.display())))?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert
                    .map_err(|e| tls_err(format!("ca_file {} is not PEM: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| tls_err(format!("ca_file {}: {e}", path.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(tls_err(format!(
                    "ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn tls_upgrade(
    tcp: TcpStream,
    mb: &MailboxConfig,
    addr: &str,
) -> Result<Transport, ImapError> {
    let connector = tls_connector(mb, addr)?;
    let name = ServerName::try_from(mb.host.clone()).map_err(|e| ImapError::Tls {
        addr: addr.to_string(),
        message: format!("`{}` is not a valid server name: {e}", mb.host),
    })?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ImapError::Tls {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    Ok(Transport::Tls(Box::new(tls)))
}

/// Reads the server greeting (async-imap leaves that to us) and checks it is not a BYE.
async fn greeting(client: &mut Client<Conn>, addr: &str) -> Result<(), ImapError> {
    let resp = client
        .read_response()
        .await
        .map_err(|e| ImapError::Protocol {
            addr: addr.into(),
            what: "reading the greeting".into(),
            message: e.to_string(),
        })?;
    match resp {
        None => Err(ImapError::Protocol {
            addr: addr.into(),
            what: "reading the greeting".into(),
            message: "the server closed the connection".into(),
        }),
        Some(r) => match r.parsed() {
            async_imap::imap_proto::Response::Data {
                status: async_imap::imap_proto::Status::Bye,
                outcome,
                ..
            } => Err(ImapError::Protocol {
                addr: addr.into(),
                what: "greeting".into(),
                message: format!(
                    "server said BYE: {}",
                    outcome.information.as_deref().unwrap_or("")
                ),
            }),
            _ => Ok(()),
        },
    }
}

struct PlainAuth<'a> {
    user: &'a str,
    password: &'a str,
}

impl async_imap::Authenticator for &PlainAuth<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.user.len() + self.password.len() + 2);
        v.push(0);
        v.extend_from_slice(self.user.as_bytes());
        v.push(0);
        v.extend_from_slice(self.password.as_bytes());
        v
    }
}

/// The XOAUTH2 / OAUTHBEARER exchange: the initial response, then, if the server answers a
/// rejected token with an error challenge, the empty (XOAUTH2) or `^A` (OAUTHBEARER, RFC 7628
/// §3.2.3) response that lets it finish with a tagged NO.
struct OAuthAuth {
    initial: Vec<u8>,
    sent: bool,
    bearer: bool,
}

impl async_imap::Authenticator for OAuthAuth {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        if self.sent {
            return if self.bearer { vec![1] } else { Vec::new() };
        }
        self.sent = true;
        std::mem::take(&mut self.initial)
    }
}

/// Logs in with an OAuth2 token. A login refused with a cached token is tried once more, on
/// the same connection, with a token fetched anew: the provider may have revoked it early.
async fn oauth_login(
    mb: &MailboxConfig,
    mut client: Client<Conn>,
    auth_err: impl Fn(async_imap::error::Error) -> ImapError,
) -> Result<ImapSession, ImapError> {
    let Some(source) = &mb.oauth else {
        return Err(ImapError::Token {
            mailbox: mb.name.clone(),
            source: crate::oauth::TokenError::File {
                path: "(none)".into(),
                message: "no token_file or token_command configured".into(),
            },
        });
    };
    let bearer = mb.auth == AuthMethod::Oauthbearer;
    let mech = if bearer { "OAUTHBEARER" } else { "XOAUTH2" };
    let mut refresh = false;
    loop {
        let token = crate::oauth::access_token(&mb.name, source, refresh)
            .await
            .map_err(|source| ImapError::Token {
                mailbox: mb.name.clone(),
                source,
            })?;
        let initial = if bearer {
            crate::oauth::oauthbearer_payload(&mb.user, &mb.host, mb.port, &token)
        } else {
            crate::oauth::xoauth2_payload(&mb.user, &token)
        };
        let auth = OAuthAuth {
            initial,
            sent: false,
            bearer,
        };
        match client.authenticate(mech, auth).await {
            Ok(s) => return Ok(s),
            Err((e, c)) => {
                let e = auth_err(e);
                if refresh || !matches!(e, ImapError::Auth { .. }) {
                    return Err(e);
                }
                tracing::info!(mailbox = %mb.name, "OAuth2 login refused; fetching a new token and trying once more");
                refresh = true;
                client = c;
            }
        }
    }
}

/// The server's capabilities after login, with CONDSTORE (RFC 7162) enabled where offered:
/// SELECT then reports HIGHESTMODSEQ, so the flag scan asks only for what changed (DESIGN
/// §4.15). QRESYNC is not enabled: it would turn EXPUNGE into VANISHED, and an expunge
/// changes no activity.
async fn capabilities(
    session: &mut ImapSession,
    peer: &super::Peer,
) -> Result<Vec<String>, ImapError> {
    let caps = super::timed(peer, "CAPABILITY", session.capabilities()).await?;
    let capabilities = caps
        .iter()
        .map(|c| match c {
            async_imap::types::Capability::Imap4rev1 => "IMAP4rev1".to_string(),
            async_imap::types::Capability::Auth(a) => format!("AUTH={a}"),
            async_imap::types::Capability::Atom(a) => a.to_string(),
        })
        .collect::<Vec<String>>();
    if capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("CONDSTORE"))
    {
        super::timed(
            peer,
            "ENABLE CONDSTORE",
            session.run_command_and_check_ok("ENABLE CONDSTORE"),
        )
        .await?;
    }
    Ok(capabilities)
}

/// Connects and logs in to `mb`'s server.
///
/// # Errors
/// Classified [`ImapError`]s; [`ImapError::is_permanent`] tells whether retrying can help.
pub(crate) async fn connect(mb: &MailboxConfig) -> Result<Connected, ImapError> {
    let addr = format!("{}:{}", mb.host, mb.port);
    let password = if mb.auth.is_oauth() {
        String::new()
    } else {
        mb.password.read().map_err(|message| ImapError::Password {
            mailbox: mb.name.clone(),
            message,
        })?
    };
    // A literal may hold the largest message we fetch (plus slack); a line anything but a
    // literal: 32 MiB covers a SEARCH answer for millions of UIDs.
    let guard = || Guard::new(mb.max_message_bytes.saturating_add(1 << 20), 32 << 20);
    let fut = async {
        let tcp = TcpStream::connect((mb.host.as_str(), mb.port))
            .await
            .map_err(|source| ImapError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (client, security) = match mb.tls {
            TlsMode::Implicit => {
                let mut c = Client::new(Conn::new(tls_upgrade(tcp, mb, &addr).await?, guard()));
                greeting(&mut c, &addr).await?;
                (c, "implicit TLS (certificate verified)")
            }
            TlsMode::None => {
                let mut c = Client::new(Conn::new(Transport::Plain(tcp), guard()));
                greeting(&mut c, &addr).await?;
                (c, "plaintext (allow_plaintext)")
            }
            TlsMode::Starttls => {
                let mut c = Client::new(Conn::new(Transport::Plain(tcp), guard()));
                greeting(&mut c, &addr).await?;
                c.run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| ImapError::StarttlsMissing {
                        addr: addr.clone(),
                        message: e.to_string(),
                    })?;
                let Transport::Plain(tcp) = c.into_inner().inner else {
                    unreachable!("a plaintext client was built just above")
                };
                (
                    Client::new(Conn::new(tls_upgrade(tcp, mb, &addr).await?, guard())),
                    "STARTTLS (certificate verified)",
                )
            }
        };
        Ok::<_, ImapError>((client, security))
    };
    let (client, security) = tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .map_err(|_| ImapError::Timeout {
            addr: addr.clone(),
            what: "connecting".into(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })??;

    let auth_err = |e: async_imap::error::Error| ImapError::Auth {
        addr: addr.clone(),
        user: mb.user.clone(),
        message: match e {
            async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m) => m,
            other => other.to_string(),
        },
    };
    let login = async {
        match mb.auth {
            AuthMethod::Login => client
                .login(&mb.user, &password)
                .await
                .map_err(|(e, _)| auth_err(e)),
            AuthMethod::Plain => {
                let auth = PlainAuth {
                    user: &mb.user,
                    password: &password,
                };
                client
                    .authenticate("PLAIN", &auth)
                    .await
                    .map_err(|(e, _)| auth_err(e))
            }
            AuthMethod::Xoauth2 | AuthMethod::Oauthbearer => {
                oauth_login(mb, client, auth_err).await
            }
        }
    };
    let mut session = tokio::time::timeout(CONNECT_TIMEOUT, login)
        .await
        .map_err(|_| ImapError::Timeout {
            addr: addr.clone(),
            what: "login".into(),
            secs: CONNECT_TIMEOUT.as_secs(),
        })??;
    let peer = super::Peer {
        addr,
        timeout: mb.command_timeout,
    };
    let capabilities = capabilities(&mut session, &peer).await?;
    tracing::debug!(mailbox = %mb.name, addr = %peer, security, "logged in");
    Ok(Connected {
        session,
        capabilities,
        peer,
        security: security.to_string(),
    })
}
