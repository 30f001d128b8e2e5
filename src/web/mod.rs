//! The web pages for people (`[web] listen`): a search over the records, a record's timeline
//! of email activities, an activity with its sources, attachments and audit trail, and the
//! mailboxes. Server-rendered HTML (maud, every value escaped), no script, nothing from
//! elsewhere: `Content-Security-Policy: default-src 'self'` and the stylesheet compiled in.
//!
//! Auth (`auth = "token"`): the admin token from `token_env`, given once in the login form
//! (which sets an HttpOnly, SameSite=Strict session cookie) or as `Authorization: Bearer` by
//! a script. An admin sees every record.

mod pages;

use crate::config::{Config, WebSettings};
use crate::store::Store;
use axum::body::Body;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a login lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// Activities per timeline page.
pub(crate) const PAGE: usize = 25;

/// What the pages read, and who is logged in.
pub(crate) struct Web {
    pub store: Arc<Store>,
    pub config: Arc<RwLock<Config>>,
    token: String,
    sessions: Mutex<HashMap<String, Instant>>,
}

/// A page's failure, as the person sees it.
#[derive(Debug)]
pub(crate) enum WebError {
    NotFound(String),
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> WebError {
        WebError::Store(e)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                Html(pages::message("Not found", &what)),
            )
                .into_response(),
            WebError::Store(e) => {
                tracing::warn!(error = %e, "web page: the store failed");
                let text = "The store could not be read; try again (the agent's log says why).";
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Html(pages::message("Store unavailable", text)),
                )
                    .into_response()
            }
        }
    }
}

type Shared = Arc<Web>;

impl Web {
    /// The pages over `store`, the admin token read from `settings.token_env`.
    ///
    /// # Errors
    /// The variable is unset or empty (the pages would open to anyone).
    pub(crate) fn new(
        store: Arc<Store>,
        config: Arc<RwLock<Config>>,
        settings: &WebSettings,
    ) -> Result<Web, String> {
        let token = std::env::var(&settings.token_env)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                format!(
                    "[web] needs the admin token in the environment variable {} (web.token_env)",
                    settings.token_env
                )
            })?;
        Ok(Web {
            store,
            config,
            token,
            sessions: Mutex::default(),
        })
    }

    /// The pages with `token` as the admin token (tests).
    #[cfg(test)]
    pub(crate) fn with_token(store: Arc<Store>, config: Arc<RwLock<Config>>, token: &str) -> Web {
        Web {
            store,
            config,
            token: token.to_string(),
            sessions: Mutex::default(),
        }
    }

    /// Whether `given` is the admin token (compared in constant time).
    fn is_token(&self, given: &str) -> bool {
        let (a, b) = (self.token.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn new_session(&self) -> String {
        let mut bytes = [0u8; 32];
        let _ = getrandom(&mut bytes);
        let id = hex::encode(bytes);
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, at| at.elapsed() < SESSION);
        s.insert(id.clone(), Instant::now());
        id
    }

    fn has_session(&self, id: &str) -> bool {
        let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.get(id).is_some_and(|at| at.elapsed() < SESSION)
    }
}

/// 32 random bytes from the kernel.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The router: every page behind the login, the login form and the stylesheet before it,
/// and the security headers on every answer.
pub(crate) fn router(web: Web) -> Router {
    let web: Shared = Arc::new(web);
    let pages = Router::new()
        .route("/", get(home))
        .route("/records/{rtype}/{key}", get(record))
        .route("/activities/{id}", get(activity))
        .route("/activities/{id}/attachments/{n}", get(attachment))
        .route("/mailboxes", get(mailboxes))
        .route("/mailboxes/{name}", get(mailbox))
        .route("/quarantine", get(quarantine))
        .route_layer(middleware::from_fn_with_state(web.clone(), require_login));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/style.css", get(style))
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

/// Serves the pages on `listener` until `cancel`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    web: Web,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(web))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Starts the pages for `run` when `[web]` is set: the listener is bound before `run` goes
/// on, so a port in use or a missing token stops it with the reason.
///
/// # Errors
/// The token variable is unset, or the address cannot be bound.
pub(crate) async fn start(
    config: &Config,
    shared: Arc<RwLock<Config>>,
    store: Arc<Store>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(settings) = config.web.clone() else {
        return Ok(());
    };
    let web = Web::new(store, shared, &settings).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| {
            format!(
                "cannot serve the web pages on {} ([web] listen)",
                settings.listen
            )
        })?;
    let addr = listener.local_addr().unwrap_or(settings.listen);
    tracing::info!(%addr, "serving the web pages");
    tokio::spawn(async move {
        if let Err(e) = serve(listener, web, cancel).await {
            tracing::error!(error = %e, "the web pages stopped");
        }
    });
    Ok(())
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    res
}

/// A session cookie or the bearer token, else 401 with the login form.
async fn require_login(State(web): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| web.is_token(t.trim()));
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("ft_session="))
        .any(|id| web.has_session(id));
    if bearer || session {
        return next.run(req).await;
    }
    (StatusCode::UNAUTHORIZED, Html(pages::login(false))).into_response()
}

async fn login_form() -> Html<String> {
    Html(pages::login(false))
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(web): State<Shared>, Form(f): Form<LoginForm>) -> Response {
    if !web.is_token(f.token.trim()) {
        return (StatusCode::UNAUTHORIZED, Html(pages::login(true))).into_response();
    }
    let id = web.new_session();
    let cookie = format!(
        "ft_session={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION.as_secs()
    );
    let mut res = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct Search {
    q: Option<String>,
}

async fn home(
    State(web): State<Shared>,
    Query(s): Query<Search>,
) -> Result<Html<String>, WebError> {
    let q = s.q.unwrap_or_default();
    let needle = q.trim().to_lowercase();
    let found = if needle.is_empty() {
        Vec::new()
    } else {
        web.store
            .records(None)?
            .into_iter()
            .filter(|r| {
                r.name.to_lowercase().contains(&needle)
                    || r.key.to_lowercase().contains(&needle)
                    || r.emails.iter().any(|e| e.to_lowercase().contains(&needle))
            })
            .take(50)
            .collect()
    };
    Ok(Html(pages::home(&q, &found)))
}

#[derive(serde::Deserialize)]
struct Page {
    before: Option<u64>,
}

async fn record(
    State(web): State<Shared>,
    Path((rtype, key)): Path<(String, String)>,
    Query(p): Query<Page>,
) -> Result<Html<String>, WebError> {
    let r = crate::model::RecordRef::new(&rtype, &key);
    let rec = web
        .store
        .record(&r)?
        .ok_or_else(|| WebError::NotFound(format!("no record {r}")))?;
    let mut acts = web.store.timeline(&r, p.before, PAGE + 1)?;
    let older = (acts.len() > PAGE).then(|| acts[PAGE - 1].id);
    acts.truncate(PAGE);
    Ok(Html(pages::record(&rec, &acts, older)))
}

async fn activity(
    State(web): State<Shared>,
    Path(id): Path<u64>,
) -> Result<Html<String>, WebError> {
    let a = web
        .store
        .activity(id)?
        .ok_or_else(|| WebError::NotFound(format!("no activity {id}")))?;
    let fields = web.store.field_state(id)?.unwrap_or_default().crm;
    let trail = web.store.audit(id)?;
    let tracked = !web.store.untracked_ids()?.contains(&id);
    Ok(Html(pages::activity(&a, &fields, &trail, tracked)))
}

/// An attachment's bytes, always as a download (never rendered by the browser).
async fn attachment(
    State(web): State<Shared>,
    Path((id, n)): Path<(u64, usize)>,
) -> Result<Response, WebError> {
    let missing = || WebError::NotFound(format!("no attachment {n} of activity {id}"));
    let a = web.store.activity(id)?.ok_or_else(missing)?;
    let m = n
        .checked_sub(1)
        .and_then(|i| a.attachments.get(i))
        .ok_or_else(missing)?;
    let bytes = web.store.blob(&m.sha256)?.ok_or_else(missing)?;
    let name: String = m
        .name
        .as_deref()
        .unwrap_or("attachment")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._- ".contains(*c))
        .collect();
    let disposition = format!(
        "attachment; filename=\"{}\"",
        if name.is_empty() { "attachment" } else { &name }
    );
    let mut res = Response::new(Body::from(bytes));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

async fn mailboxes(State(web): State<Shared>) -> Result<Html<String>, WebError> {
    let names: Vec<(String, String, String)> = {
        let c = web.config.read().unwrap_or_else(|p| p.into_inner());
        c.mailboxes
            .iter()
            .map(|m| (m.name.clone(), m.owner.to_string(), m.host.clone()))
            .collect()
    };
    let mut rows = Vec::new();
    for (name, owner, host) in names {
        let st = web.store.mailbox_state(&name)?;
        rows.push(pages::MailboxRow {
            name,
            owner,
            host,
            last_success: st.last_success,
            last_error: st.last_error,
            last_tracked: st.last_tracked,
        });
    }
    Ok(Html(pages::mailboxes(&rows)))
}

/// One mailbox: its health, its folders with their rules and checkpoints, its alerts.
async fn mailbox(
    State(web): State<Shared>,
    Path(name): Path<String>,
) -> Result<Html<String>, WebError> {
    let known = {
        let c = web.config.read().unwrap_or_else(|p| p.into_inner());
        c.mailbox(&name)
            .map(|m| (m.owner.to_string(), m.host.clone()))
    };
    let (owner, host) = known.ok_or_else(|| WebError::NotFound(format!("no mailbox {name}")))?;
    let st = web.store.mailbox_state(&name)?;
    let folders: Vec<_> = web
        .store
        .folder_states()?
        .into_iter()
        .filter(|f| f.mailbox == name)
        .collect();
    let alerts: Vec<_> = web
        .store
        .alerts(crate::store::MAX_ALERTS)?
        .into_iter()
        .filter(|a| a.mailbox == name)
        .collect();
    let row = pages::MailboxRow {
        name,
        owner,
        host,
        last_success: st.last_success,
        last_error: st.last_error,
        last_tracked: st.last_tracked,
    };
    Ok(Html(pages::mailbox(&row, &folders, &alerts)))
}

/// The messages that could not be tracked, with why.
async fn quarantine(State(web): State<Shared>) -> Result<Html<String>, WebError> {
    Ok(Html(pages::quarantine(&web.store.quarantine()?)))
}

#[cfg(test)]
mod tests;
