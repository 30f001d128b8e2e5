//! `run`'s small HTTP endpoint for `[metrics] listen`: `GET /metrics` (Prometheus text format)
//! and `GET /healthz` (200 `ok`, or 503 with one reason per line).
//!
//! A minimal HTTP/1.1 responder on tokio rather than a web framework: two read-only routes,
//! one request per connection (`Connection: close`), requests bounded in size and time, at
//! most [`MAX_CONNECTIONS`] at once, and only for this endpoint's own host names (DNS
//! rebinding). It never serves anything but these two documents.

use crate::agent::AgentHandle;
use crate::config::Config;
use crate::store::Store;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the endpoint reads.
#[derive(Clone)]
pub(crate) struct Shared {
    pub config: Arc<RwLock<Config>>,
    pub store: Arc<Store>,
    pub agent: AgentHandle,
}

/// Why the agent is unhealthy, one sentence per problem; empty when healthy.
///
/// Unhealthy: a mailbox whose incoming side is disabled (permanent error, as Dynamics' mailbox
/// status), a mailbox whose passes have failed for longer than `lag_threshold` (an open
/// outage), a folder behind the server for longer than `lag_threshold`, or a store that cannot
/// be read (the PostgreSQL server down or refusing us: read here, at each request, so that it
/// shows at once, also while no mail arrives to make a pass fail).
///
/// The server's error text and the IMAP user names it holds are left out (a scraper needs the
/// reason, not the detail) unless `[metrics] detail = true`; `status` always has them.
pub(crate) fn problems(config: &Config, store: &Store, agent: &AgentHandle) -> Vec<String> {
    let threshold = config.health.lag_threshold;
    let detail = config.metrics.detail;
    let now = crate::time::unix_now();
    let mut out = Vec::new();
    let mut store_down = None;
    for mb in &config.mailboxes {
        if let Some(l) = agent.live(&mb.name) {
            if let crate::worker::WorkerState::Disabled { reason } = &l.state {
                out.push(if detail {
                    format!("mailbox {}: {reason}", mb.name)
                } else {
                    format!("mailbox {}: incoming disabled after a permanent error (why: `foldertrack status`)", mb.name)
                });
                continue;
            }
        }
        let st = match store.mailbox_state(&mb.name) {
            Ok(st) => st,
            Err(e) => {
                store_down.get_or_insert(e);
                continue;
            }
        };
        // Another agent's mailbox is that agent's to report.
        if !store.holds(&mb.name) {
            continue;
        }
        if let Some(o) = st.outages.last().filter(|o| o.to.is_none()) {
            let since = now - crate::time::parse_date(&o.from);
            if since > threshold.as_secs() as i64 {
                let why = if detail {
                    format!(": {}", st.last_error.as_deref().unwrap_or(&o.error))
                } else {
                    String::new()
                };
                out.push(format!(
                    "mailbox {}: failing since {} ({} s, over lag_threshold {} s){why}",
                    mb.name,
                    o.from,
                    since,
                    threshold.as_secs(),
                ));
            }
        }
    }
    if let Some(e) = store_down {
        out.insert(0, store_problem(store, &e, detail));
    }
    for (m, f, n, d) in crate::metrics::metrics().lagging(threshold) {
        out.push(format!(
            "mailbox {m}: folder `{f}`: {n} message(s) behind the server for {} s (over lag_threshold {} s)",
            d.as_secs(),
            threshold.as_secs()
        ));
    }
    out
}

/// The store cannot be read (the PostgreSQL server is down, refuses us, or a statement fails):
/// nothing can be tracked until it can. Names the engine and where it is (host and database;
/// the user and the error's text only with `detail`, as for a mailbox).
fn store_problem(store: &Store, e: &crate::store::StoreError, detail: bool) -> String {
    if detail {
        return format!("store: cannot read {}: {e}", store.describe());
    }
    let at = store.describe();
    let at = match at.split_once(", user ") {
        Some((where_, _)) => format!("{where_})"),
        None => at,
    };
    format!("store: cannot read {at} (why: the agent's log)")
}

/// A warning for a `[metrics] listen` address off loopback: the endpoint has no
/// authentication, and anyone who reaches it learns the mailbox and folder names.
pub(crate) fn exposure_warning(addr: std::net::SocketAddr) -> Option<String> {
    (!addr.ip().is_loopback()).then(|| {
        format!("[metrics] listen = \"{addr}\" is not a loopback address: /metrics and /healthz have no authentication, so anyone who can reach {addr} sees mailbox and folder names and health; keep it on 127.0.0.1 (or behind a firewall)")
    })
}

/// Binds the endpoint.
///
/// # Errors
/// The address is taken or not local to this machine.
pub(crate) async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How many requests are served at once. A scraper needs one; the bound keeps a client that
/// opens connections by the thousand from holding as many tasks and buffers.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// Serves until `stop`.
pub(crate) async fn serve(listener: TcpListener, shared: Shared, stop: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the bound: a 503 from a task of its own, bounded in number and time too
            // (past that, the connection is just closed). The request is read and dropped so
            // that closing does not reset the connection before the client reads the answer.
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _refusal = refusal;
                    let _ = tokio::time::timeout(Duration::from_secs(1), refuse(stream)).await;
                });
            }
            tracing::debug!("metrics endpoint: over {MAX_CONNECTIONS} connections; refused one");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &shared))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
            {
                tracing::debug!(error = %e, "metrics endpoint: request failed");
            }
        });
    }
}

/// Answers 503 to a connection over the bound.
async fn refuse(mut stream: TcpStream) -> std::io::Result<()> {
    let body = "too many connections; try again\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 16 * 1024 {
        match stream.read(&mut sink).await? {
            0 => break,
            n => total += n,
        }
    }
    Ok(())
}

/// The host part of a `Host` header value: without the port, brackets kept off IPv6.
fn host_part(value: &str) -> &str {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match v.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    }
}

/// This machine's host name, as `gethostname` gives it (lower case).
fn own_hostname() -> Option<&'static str> {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        std::str::from_utf8(&buf[..end])
            .ok()
            .map(str::to_ascii_lowercase)
            .filter(|n| !n.is_empty())
    })
    .as_deref()
}

/// Whether a request's `Host` may be answered. DNS rebinding gets a web page's own name
/// (`evil.example`) to resolve to this endpoint, and the browser then sends that name: only
/// names that really are this endpoint are answered. IP literals are (rebinding needs a name),
/// and so are the loopback names, this machine's name and `[metrics] allowed_hosts`. A request
/// without `Host` (HTTP/1.0) is not from a browser.
pub(crate) fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(value) = host else {
        return true;
    };
    let h = host_part(value).trim_end_matches('.').to_ascii_lowercase();
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    h == "localhost"
        || h.ends_with(".localhost")
        || h == "ip6-localhost"
        || own_hostname().is_some_and(|n| n == h || n.split('.').next() == Some(h.as_str()))
        || allowed.contains(&h)
}

async fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(&mut stream, 431, "text/plain", "request too large\n").await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    let host = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("host").then_some(v.trim())
    });
    let allowed = shared
        .config
        .read()
        .map(|c| c.metrics.allowed_hosts.clone())
        .unwrap_or_default();
    if !host_allowed(host, &allowed) {
        tracing::debug!(host = ?host, "metrics endpoint: refused a request for another host");
        return respond(
            &mut stream,
            421,
            "text/plain",
            "this endpoint does not serve that host name (add it to [metrics] allowed_hosts)\n",
        )
        .await;
    }
    match path {
        "/metrics" => {
            let body = {
                let store = shared.store.clone();
                tokio::task::spawn_blocking(move || crate::metrics::metrics().encode(Some(&store)))
                    .await
                    .unwrap_or_default()
            };
            respond(
                &mut stream,
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        "/healthz" => {
            let config = shared.config.read().map(|c| c.clone()).ok();
            let Some(config) = config else {
                return respond(&mut stream, 500, "text/plain", "poisoned\n").await;
            };
            let p = problems(&config, &shared.store, &shared.agent);
            if p.is_empty() {
                respond(&mut stream, 200, "text/plain; charset=utf-8", "ok\n").await
            } else {
                let body: String = p.iter().map(|l| format!("{l}\n")).collect();
                respond(&mut stream, 503, "text/plain; charset=utf-8", &body).await
            }
        }
        _ => {
            respond(
                &mut stream,
                404,
                "text/plain",
                "not found: try /metrics or /healthz\n",
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_off_loopback_is_warned_about() {
        assert!(exposure_warning("127.0.0.1:9898".parse().unwrap()).is_none());
        assert!(exposure_warning("[::1]:9898".parse().unwrap()).is_none());
        for a in ["0.0.0.0:9898", "[::]:9898", "192.0.2.7:9898"] {
            let w = exposure_warning(a.parse().unwrap()).unwrap();
            assert!(w.contains("no authentication"), "{w}");
        }
    }

    #[test]
    fn host_headers() {
        let allowed = vec!["metrics.example.org".to_string()];
        for ok in [
            None,
            Some("127.0.0.1:9898"),
            Some("[::1]:9898"),
            Some("[::1]"),
            Some("localhost"),
            Some("LocalHost.:9898"),
            Some("metrics.example.org"),
        ] {
            assert!(host_allowed(ok, &allowed), "{ok:?}");
        }
        for bad in [
            "evil.example",
            "evil.example:9898",
            "127.0.0.1.evil.example",
            "",
        ] {
            assert!(!host_allowed(Some(bad), &allowed), "{bad}");
        }
    }
}
