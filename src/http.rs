//! `run`'s small HTTP endpoint for `[metrics] listen`: `GET /metrics` (Prometheus text format)
//! and `GET /healthz` (200 `ok`, or 503 with one reason per line).
//!
//! A minimal HTTP/1.1 responder on tokio rather than a web framework: two read-only routes,
//! one request per connection (`Connection: close`), requests bounded in size and time.
//! It never serves anything but these two documents.

use crate::config::Config;
use crate::store::Store;
use crate::supervisor::AgentHandle;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the endpoint reads.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<RwLock<Config>>,
    pub store: Arc<Store>,
    pub agent: AgentHandle,
}

/// Why the agent is unhealthy, one sentence per problem; empty when healthy.
///
/// Unhealthy: a mailbox whose incoming side is disabled (permanent error, as Dynamics' mailbox
/// status), a mailbox whose passes have failed for longer than `lag_threshold` (an open
/// outage), or a folder behind the server for longer than `lag_threshold`.
pub fn problems(config: &Config, store: &Store, agent: &AgentHandle) -> Vec<String> {
    let threshold = config.health.lag_threshold;
    let now = crate::time::unix_now();
    let mut out = Vec::new();
    for mb in &config.mailboxes {
        if let Some(l) = agent.live(&mb.name) {
            if l.state == "disabled" {
                out.push(format!("mailbox {}: {}", mb.name, l.detail));
                continue;
            }
        }
        if let Ok(st) = store.mailbox_state(&mb.name) {
            if let Some(o) = st.outages.last().filter(|o| o.to.is_none()) {
                let since = now - crate::time::parse_date(&o.from);
                if since > threshold.as_secs() as i64 {
                    out.push(format!(
                        "mailbox {}: failing since {} ({} s, over lag_threshold {} s): {}",
                        mb.name,
                        o.from,
                        since,
                        threshold.as_secs(),
                        st.last_error.as_deref().unwrap_or(&o.error)
                    ));
                }
            }
        }
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

/// Binds the endpoint.
///
/// # Errors
/// The address is taken or not local to this machine.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop`.
pub async fn serve(listener: TcpListener, shared: Shared, stop: CancellationToken) {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(Duration::from_secs(10), handle(stream, &shared))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("timed out")))
            {
                tracing::debug!(error = %e, "metrics endpoint: request failed");
            }
        });
    }
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
