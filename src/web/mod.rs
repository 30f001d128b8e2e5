//! The web pages for people (`[web] listen`): a search over the records, a record's timeline
//! of email activities, an activity with its sources, attachments and audit trail, and the
//! mailboxes. Server-rendered HTML (maud, every value escaped), no script, nothing from
//! elsewhere: `Content-Security-Policy: default-src 'self'` and the stylesheet compiled in.
//!
//! Auth: `auth = "token"`: the admin token from `token_env`, given once in the login form
//! (which sets an HttpOnly, SameSite=Strict session cookie) or as `Authorization: Bearer` by
//! a script; an admin sees every record. `auth = "proxy"`: a reverse proxy on this host names
//! the person in a header; they see what the CRM's security model lets them ([`access`]).

mod access;
mod filter;
mod handlers;
mod pages;

use crate::config::{Config, WebAuth, WebSettings};
use crate::store::Store;
use access::Viewer;
use axum::extract::{Form, Request, State};
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
    /// The admin token (`auth = "token"`).
    token: Option<String>,
    /// The header naming the person (`auth = "proxy"`), lower case.
    proxy_header: Option<String>,
    /// The agent in this process (`run`), whose workers' live state the mailbox pages show;
    /// `None` under `foldertrack web`, which runs no worker.
    pub agent: Option<crate::agent::AgentHandle>,
    sessions: Mutex<HashMap<String, Instant>>,
}

/// A page's failure, as the person sees it.
#[derive(Debug)]
pub(crate) enum WebError {
    NotFound(String),
    /// What the reader may not see (named without its contents).
    Forbidden(String),
    /// A URL the page cannot read (a filter that is not a date, say), with why.
    BadRequest(String),
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
            WebError::Forbidden(what) => (
                StatusCode::FORBIDDEN,
                Html(pages::message(
                    "Not yours to read",
                    &format!(
                        "You may not read {what}: it is neither yours, shared, nor your team's."
                    ),
                )),
            )
                .into_response(),
            WebError::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                Html(pages::message("Bad request", &why)),
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
    /// The pages over `store`; with `auth = "token"`, the admin token read from its variable.
    ///
    /// # Errors
    /// The variable is unset or empty (the pages would open to anyone).
    pub(crate) fn new(
        store: Arc<Store>,
        config: Arc<RwLock<Config>>,
        settings: &WebSettings,
    ) -> Result<Web, String> {
        let (token, proxy_header) = match &settings.auth {
            WebAuth::Token { token_env } => {
                let token = std::env::var(token_env)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        format!("[web] needs the admin token in the environment variable {token_env} (web.token_env)")
                    })?;
                (Some(token), None)
            }
            WebAuth::Proxy { header } => (None, Some(header.clone())),
        };
        Ok(Web {
            store,
            config,
            token,
            proxy_header,
            agent: None,
            sessions: Mutex::default(),
        })
    }

    /// The pages with `token` as the admin token (tests).
    #[cfg(test)]
    pub(crate) fn with_token(store: Arc<Store>, config: Arc<RwLock<Config>>, token: &str) -> Web {
        Web {
            store,
            config,
            token: Some(token.to_string()),
            proxy_header: None,
            agent: None,
            sessions: Mutex::default(),
        }
    }

    /// The pages behind a proxy that names the person in `header` (tests).
    #[cfg(test)]
    pub(crate) fn behind_proxy(
        store: Arc<Store>,
        config: Arc<RwLock<Config>>,
        header: &str,
    ) -> Web {
        Web {
            store,
            config,
            token: None,
            proxy_header: Some(header.to_ascii_lowercase()),
            agent: None,
            sessions: Mutex::default(),
        }
    }

    /// Whether `given` is the admin token (compared in constant time).
    fn is_token(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let (a, b) = (token.as_bytes(), given.as_bytes());
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
        .route("/", get(handlers::home))
        .route("/records/{rtype}/{key}", get(handlers::record))
        .route("/activities/{id}", get(handlers::activity))
        .route(
            "/activities/{id}/attachments/{n}",
            get(handlers::attachment),
        )
        .route("/mailboxes", get(handlers::mailboxes))
        .route("/mailboxes/{name}", get(handlers::mailbox))
        .route("/quarantine", get(handlers::quarantine))
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
    agent: Option<crate::agent::AgentHandle>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let Some(settings) = config.web.clone() else {
        return Ok(());
    };
    let mut web = Web::new(store, shared, &settings).map_err(anyhow::Error::msg)?;
    web.agent = agent;
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

/// Who reads: the person the proxy names, or an admin with a session cookie or the bearer
/// token; else 401 (with the login form in token mode) or 403 for a name that is no user.
async fn require_login(State(web): State<Shared>, mut req: Request, next: Next) -> Response {
    let viewer = match &web.proxy_header {
        Some(h) => match proxied_user(&web, h, req.headers()) {
            Ok(v) => v,
            Err(res) => return *res,
        },
        None if web.logged_in(req.headers()) => Viewer::Admin,
        None => return (StatusCode::UNAUTHORIZED, Html(pages::login(false))).into_response(),
    };
    req.extensions_mut().insert(viewer);
    next.run(req).await
}

impl Web {
    /// A session cookie or the bearer token.
    fn logged_in(&self, headers: &axum::http::HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.is_token(t.trim()));
        bearer
            || headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().strip_prefix("ft_session="))
                .any(|id| self.has_session(id))
    }
}

/// The `systemuser` record the proxy's header names, as a reader with its teams.
fn proxied_user(
    web: &Web,
    header: &str,
    headers: &axum::http::HeaderMap,
) -> Result<Viewer, Box<Response>> {
    let deny = |code, text: String| {
        Box::new((code, Html(pages::message("Who are you?", &text))).into_response())
    };
    let Some(name) = headers
        .get(header)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    else {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            format!("The proxy in front of these pages sent no {header} header."),
        ));
    };
    let r = crate::model::RecordRef::new("systemuser", name);
    match web.store.record(&r) {
        Ok(Some(u)) => Ok(Viewer::User(crate::model::Writer {
            user: r.to_string(),
            teams: u.teams,
        })),
        Ok(None) => Err(deny(
            StatusCode::FORBIDDEN,
            format!("{r} is not a user of the CRM (no such systemuser record)."),
        )),
        Err(e) => Err(Box::new(WebError::Store(e).into_response())),
    }
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

#[cfg(test)]
mod tests;
