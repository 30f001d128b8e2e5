//! The control socket: sled lets one process open the store, so the running agent answers the
//! CLI's requests (`status`, `activities`, `records`…) over a Unix socket in the data dir, mode
//! 0600. The protocol is one JSON [`Request`] line in, one JSON [`Reply`] line out.

use crate::commands::{execute, Reply, Request};
use crate::config::Config;
use crate::store::Store;
use crate::supervisor::AgentHandle;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Largest request accepted (a records import travels whole).
const MAX_REQUEST: u64 = 256 * 1024 * 1024;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("foldertrack.sock")
}

/// Sends one request to the agent that holds `data_dir`.
pub async fn call(data_dir: &Path, req: &Request) -> std::io::Result<Reply> {
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

/// Binds the socket (replacing a stale one: we hold the store's lock, so no live agent owns it).
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(l)
}

/// Serves requests until `cancel`.
pub async fn serve(
    listener: UnixListener,
    config: Arc<RwLock<Config>>,
    store: Arc<Store>,
    agent: AgentHandle,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => break,
        };
        let (config, store, agent) = (config.clone(), store.clone(), agent.clone());
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
            if r.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let cfg: Option<Config> = config.read().ok().map(|c| c.clone());
                    match cfg {
                        Some(cfg) => execute(req, &cfg, &store, Some(&agent)).await,
                        None => Reply {
                            stdout: String::new(),
                            binary: None,
                            stderr: "agent state is poisoned".into(),
                            code: 1,
                        },
                    }
                }
                Err(e) => Reply {
                    stdout: String::new(),
                    binary: None,
                    stderr: format!("bad request: {e}"),
                    code: 2,
                },
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
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
