//! The routes in process (tower `oneshot`) over a sled store: the login, the headers, paging,
//! not found, escaping, downloads.

use super::*;
use crate::track::conformance::{activity, checkpoint, draft, record};
use axum::http::Request as HttpRequest;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token";

struct Site {
    app: Router,
    _dir: tempfile::TempDir,
}

/// A store with record account:acme and `n` activities regarding it (ids 1..=n), the last
/// one with a hostile subject and an attachment.
fn site(n: u32) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 8 << 20).unwrap());
    store
        .put_records(&[record("account", "acme", None)])
        .unwrap();
    let items: Vec<_> = (1..=n)
        .map(|i| {
            let mut a = activity("alice", "INBOX/Acme", i, &format!("<m{i}@x>"));
            a.regarding = Some("account:acme".into());
            a.subject = Some(format!("mail {i}"));
            if i == n {
                a.subject = Some("<script>alert(1)</script>".into());
                store.put_blob("ab12", b"PDF-BYTES").unwrap();
                a.attachments = vec![crate::model::AttachmentMeta {
                    name: Some("q\"uote.pdf".into()),
                    mime_type: "application/pdf".into(),
                    size: 9,
                    sha256: "ab12".into(),
                    skipped: None,
                }];
            }
            draft(a)
        })
        .chain(std::iter::once(crate::store::BatchItem::Quarantined {
            source: activity("alice", "INBOX/Acme", n + 1, "<q@x>").source,
            reason: "cannot parse: <b>broken</b>".into(),
            raw: b"junk".to_vec(),
            size: 4,
        }))
        .collect();
    store
        .commit_batch(&items, &checkpoint("alice", "INBOX/Acme", n + 1), "alice")
        .unwrap();
    let text = "[[mailbox]]\nname = \"alice\"\nowner = \"systemuser:alice\"\nhost = \"imap.example.com\"\nuser = \"alice\"\npassword_env = \"X\"\n";
    let config = Config::parse(&dir.path().join("foldertrack.toml"), text).unwrap();
    let web = Web::with_token(store, Arc::new(RwLock::new(config)), TOKEN);
    Site {
        app: router(web),
        _dir: dir,
    }
}

async fn get(
    app: &Router,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut req = HttpRequest::get(path);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_need_a_login_and_the_form_sets_an_httponly_strict_cookie() {
    let s = site(1);
    let (st, h, body) = get(&s.app, "/records/account/acme", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(body.contains("name=\"token\""), "{body}");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .starts_with("default-src 'self'"));
    assert_eq!(
        get(&s.app, "/records/account/acme", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let login = |token: &str| {
        HttpRequest::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .unwrap()
    };
    let bad = s.app.clone().oneshot(login("nope")).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get(header::SET_COOKIE).is_none());
    let ok = s.app.clone().oneshot(login(TOKEN)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let cookie = ok.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let req = HttpRequest::get("/records/account/acme")
        .header(header::COOKIE, session)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        s.app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_pages_25_at_a_time_newest_first_without_gaps_or_repeats() {
    let s = site(30);
    let (st, _, first) = get(&s.app, "/records/account/acme", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    let ids = |page: &str| -> Vec<u64> {
        page.split("href=\"/activities/")
            .skip(1)
            .filter_map(|x| x.split('"').next()?.parse().ok())
            .collect()
    };
    let one = ids(&first);
    assert_eq!(one, (6..=30).rev().collect::<Vec<u64>>());
    assert!(first.contains("?before=6"), "link to the older page");
    let (_, _, second) = get(&s.app, "/records/account/acme?before=6", Some(TOKEN)).await;
    assert_eq!(ids(&second), vec![5, 4, 3, 2, 1]);
    assert!(!second.contains("?before="), "no older page after the last");
}

#[tokio::test(flavor = "multi_thread")]
async fn values_are_escaped_unknown_ones_are_404_and_attachments_download() {
    let s = site(2);
    let (_, _, page) = get(&s.app, "/activities/2", Some(TOKEN)).await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script"), "no script element from data");
    assert_eq!(
        get(&s.app, "/records/account/nobody", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&s.app, "/activities/99", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    let (st, h, bytes) = get(&s.app, "/activities/2/attachments/1", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(bytes, "PDF-BYTES");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"quote.pdf\""
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(
        get(&s.app, "/activities/2/attachments/2", Some(TOKEN))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (st, _, search) = get(&s.app, "/?q=acm", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        search.contains("href=\"/records/account/acme\""),
        "{search}"
    );
    let (st, _, mb) = get(&s.app, "/mailboxes", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(mb.contains("imap.example.com") && mb.contains("href=\"/mailboxes/alice\""));
    let (st, _, one) = get(&s.app, "/mailboxes/alice", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(one.contains("INBOX/Acme"), "its folder's checkpoint: {one}");
    assert_eq!(
        get(&s.app, "/mailboxes/bob", Some(TOKEN)).await.0,
        StatusCode::NOT_FOUND
    );
    let (st, _, q) = get(&s.app, "/quarantine", Some(TOKEN)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        q.contains("cannot parse: &lt;b&gt;broken&lt;/b&gt;") && q.contains("INBOX/Acme UID 3"),
        "{q}"
    );
}
