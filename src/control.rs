//! The control socket: sled lets one process open the store, so the running agent answers the
//! CLI's requests (`status`, `activities`, `records`…) over a Unix socket in the data dir, mode
//! 0600. The protocol is one JSON [`Request`] line in, one JSON [`Reply`] line out.
//!
//! Whoever can talk to the socket can read every tracked mail and change records, so the agent
//! does not rest on the file mode alone: the socket is created under a umask that never lets
//! anyone else in (not even for the moment before a chmod), the peer's uid is checked
//! (`SO_PEERCRED`), and requests are bounded in size, number and time.

use crate::protocol::{Reply, Request};
use futures::future::BoxFuture;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Largest request accepted for most commands.
pub(crate) const MAX_REQUEST: usize = 1024 * 1024;

/// Largest `records import` or `activities send` request: those carry a whole records file, or
/// a message with attachments (at most [`crate::outbox::MAX_OUTGOING_BYTES`], a third more as
/// base64). Recognised by their first bytes, which the client always writes first.
pub(crate) const MAX_BULK_REQUEST: usize = 64 * 1024 * 1024;

/// Requests served at once: a person's commands come one at a time.
pub(crate) const MAX_CONNECTIONS: usize = 8;

/// A connection that sends nothing for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole request must arrive within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Request kinds that may be up to [`MAX_BULK_REQUEST`] (`serde_json` writes the tag first).
const BULK_PREFIXES: [&[u8]; 2] = [b"{\"cmd\":\"records_put\"", b"{\"cmd\":\"activities_send\""];

/// What answers a request: the running agent's commands, passed in by `supervisor`. The
/// socket only carries requests and replies; taking the answer as a value keeps it from
/// importing the commands (which reach the agent through [`call`]).
pub(crate) type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Reply> + Send + Sync>;

/// Where the running agent listens: in the data dir, whose lock says which agent that is.
pub(crate) fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("foldertrack.sock")
}

/// Sends one request to the agent that holds `data_dir`.
pub(crate) async fn call(data_dir: &Path, req: &Request) -> std::io::Result<Reply> {
    let path = socket_path(data_dir);
    let fut = async {
        let mut s = UnixStream::connect(&path).await?;
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        s.write_all(&line).await?;
        let mut r = BufReader::new(s);
        let mut answer = String::new();
        r.read_line(&mut answer).await?;
        serde_json::from_str::<Reply>(&answer)
            .map_err(|e| std::io::Error::other(format!("bad answer from the agent: {e}")))
    };
    tokio::time::timeout(Duration::from_secs(300), fut)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer on {}", path.display()),
            )
        })?
}

/// Binds the socket (replacing a stale one: we hold the store's lock, so no live agent owns it)
/// under umask 0177, so that it is 0600 from its first instant. The umask is process-wide:
/// while it is set, another thread creating a file gets it stricter, never looser.
pub(crate) fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    // SAFETY: umask only sets the process's file creation mask; the old one is put back.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(&path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

fn refusal(code: u8, message: String) -> Reply {
    Reply {
        stdout: String::new(),
        binary: None,
        stderr: message,
        code,
    }
}

/// The peer may use the agent: it runs as the agent's user, or as root (who can read the data
/// dir anyway). `Err` says why not.
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot tell who is asking ({e}); refused"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "refused: the agent runs as uid {me} and answers only that user (and root), not uid {}",
            cred.uid()
        ))
    }
}

/// Reads one request line, bounded in size ([`MAX_REQUEST`], or [`MAX_BULK_REQUEST`] for
/// imports and sends) and time ([`IDLE_TIMEOUT`] between reads). `Ok(None)`: the peer sent
/// nothing, or went quiet.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
) -> std::io::Result<Result<Option<Vec<u8>>, String>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE_TIMEOUT, rd.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Ok(None)),
        };
        if n == 0 {
            return Ok(Ok((!buf.is_empty()).then_some(buf)));
        }
        let seen = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memchr(b'\n', &buf[seen..]) {
            buf.truncate(seen + end);
            return Ok(Ok(Some(buf)));
        }
        let limit = if BULK_PREFIXES.iter().any(|p| buf.starts_with(p)) {
            MAX_BULK_REQUEST
        } else {
            MAX_REQUEST
        };
        if buf.len() > limit {
            return Ok(Err(format!(
                "request too large (over {} MiB); refused",
                limit >> 20
            )));
        }
    }
}

async fn write_reply<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, reply: &Reply) {
    let mut out = serde_json::to_vec(reply).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, wr.write_all(&out)).await;
}

/// Answers a connection that will not be served, after reading (and dropping) its request:
/// a client writes its request before it reads, and closing first would give it a broken pipe
/// instead of the reason.
async fn refuse<R, W>(rd: &mut R, wr: &mut W, reply: Reply)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(IDLE_TIMEOUT, read_request(rd)).await;
    write_reply(wr, &reply).await;
}

/// One connection: who, what, then the answer.
async fn handle(stream: UnixStream, handler: Handler) {
    let (mut rd, mut wr) = stream.into_split();
    if let Err(why) = peer_allowed(wr.as_ref()) {
        tracing::warn!("control socket: {why}");
        refuse(&mut rd, &mut wr, refusal(2, why)).await;
        return;
    }
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut rd)).await {
        Ok(Ok(Ok(Some(line)))) => line,
        Ok(Ok(Err(why))) => {
            tracing::warn!("control socket: {why}");
            write_reply(&mut wr, &refusal(2, why)).await;
            return;
        }
        Ok(Ok(Ok(None))) | Ok(Err(_)) | Err(_) => return,
    };
    let reply = match serde_json::from_slice::<Request>(&line) {
        Ok(req) => handler(req).await,
        Err(e) => refusal(2, format!("bad request: {e}")),
    };
    write_reply(&mut wr, &reply).await;
}

/// Serves requests until `cancel`, each answered by `handler`.
pub(crate) async fn serve(listener: UnixListener, handler: Handler, cancel: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors (EMFILE) fails every accept at once: without a
                    // pause this loop would spin a core until one is freed.
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Told so by a task of its own, itself bounded (past that, just closed).
            if let Ok(busy) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _busy = busy;
                    let (mut rd, mut wr) = stream.into_split();
                    let why = format!(
                        "the agent is busy ({MAX_CONNECTIONS} requests in progress); try again"
                    );
                    refuse(&mut rd, &mut wr, refusal(1, why)).await;
                });
            }
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle(stream, handler).await;
        });
    }
    let _ = std::fs::remove_file(
        listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_default(),
    );
}
