//! The routes in process (tower `oneshot`) over a sled store: the login, the headers, paging,
//! not found, escaping, downloads.

use super::*;
use crate::track::conformance::{activity, checkpoint, draft, record};
use axum::body::Body;
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

/// A sled store, and a PostgreSQL one when PostgreSQL is installed (the cluster is kept with
/// it): the timeline queries differ per engine.
fn both_engines() -> Vec<(Arc<Store>, Box<dyn std::any::Any>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut out: Vec<(Arc<Store>, Box<dyn std::any::Any>)> = vec![(
        Arc::new(Store::open(dir.path(), 8 << 20).unwrap()),
        Box::new(dir),
    )];
    if let Some(pg) = testkit::pg::PgCluster::start() {
        let p = crate::store::pg::PgStore::open(pg.url()).unwrap();
        out.push((Arc::new(Store::from_pg(p)), Box::new(pg)));
    }
    out
}

fn party(address: &str, record: Option<&str>) -> crate::model::Party {
    crate::model::Party {
        address: Some(address.into()),
        name: None,
        record: record.map(str::to_string),
        records: record.iter().map(|r| r.to_string()).collect(),
    }
}

/// Three activities around contact:bob: one regarding it, one where bob is only a party (from
/// another mailbox, outgoing, with an attachment), one regarding account:acme.
fn bob_store(store: &Store) {
    let mut bob = record("contact", "bob", None);
    bob.emails = vec!["bob@acme.com".into()];
    store
        .put_records(&[record("account", "acme", None), bob])
        .unwrap();
    let mut acme = activity("alice", "INBOX/Acme", 1, "<a1@x>");
    (acme.regarding, acme.date) = (
        Some("account:acme".into()),
        Some("2024-01-10T09:00:00+01:00".into()),
    );
    let mut about_bob = activity("alice", "INBOX/Bob", 2, "<a2@x>");
    about_bob.regarding = Some("contact:bob".into());
    about_bob.date = Some("2024-02-01T09:00:00Z".into());
    about_bob.from = Some(party("bob@acme.com", Some("contact:bob")));
    let mut sent = activity("carol", "Sent", 3, "<a3@x>");
    sent.direction = crate::model::Direction::Outgoing;
    sent.date = Some("2024-03-01T09:00:00Z".into());
    sent.body_text = "The Invoice is attached.".into();
    sent.to = vec![
        party("bob@acme.com", Some("contact:bob")),
        party("x@y.z", None),
    ];
    sent.cc = vec![party("bob2@acme.com", Some("contact:bob"))];
    store.put_blob("cd34", b"INV").unwrap();
    sent.attachments = vec![crate::model::AttachmentMeta {
        name: Some("inv.pdf".into()),
        mime_type: "application/pdf".into(),
        size: 3,
        sha256: "cd34".into(),
        skipped: None,
    }];
    for (a, mb, folder) in [
        (acme, "alice", "INBOX/Acme"),
        (about_bob, "alice", "INBOX/Bob"),
        (sent, "carol", "Sent"),
    ] {
        let uid = a.source.uid;
        store
            .commit_batch(&[draft(a)], &checkpoint(mb, folder, uid), mb)
            .unwrap();
    }
}

fn ids_on(page: &str) -> Vec<u64> {
    page.split("href=\"/activities/")
        .skip(1)
        .filter_map(|x| x.split('"').next()?.parse().ok())
        .collect()
}

const TWO_MAILBOXES: &str = "[[mailbox]]\nname = \"alice\"\nowner = \"systemuser:alice\"\nhost = \"imap.example.com\"\nuser = \"alice\"\npassword_env = \"X\"\n[[mailbox]]\nname = \"carol\"\nowner = \"systemuser:carol\"\nhost = \"imap.example.com\"\nuser = \"carol\"\npassword_env = \"X\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_timeline_lists_where_the_record_is_a_party_and_filters_by_the_url() {
    for (store, _keep) in tokio::task::block_in_place(both_engines) {
        let engine = if store.is_postgres() {
            "postgres"
        } else {
            "sled"
        };
        bob_store(&store);
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(&dir.path().join("foldertrack.toml"), TWO_MAILBOXES).unwrap();
        let app = router(Web::with_token(store, Arc::new(RwLock::new(config)), TOKEN));
        let timeline = |q: &str| {
            let app = app.clone();
            let path = format!("/records/contact/bob{q}");
            async move { get(&app, &path, Some(TOKEN)).await }
        };
        let (st, _, all) = timeline("").await;
        assert_eq!(st, StatusCode::OK, "{engine}: {all}");
        assert_eq!(
            ids_on(&all),
            vec![3, 2],
            "{engine}: regarding and party, newest first, once each"
        );
        for (q, want) in [
            ("?direction=outgoing", vec![3]),
            ("?direction=incoming&q=", vec![2]),
            ("?mailbox=carol", vec![3]),
            ("?since=2024-01-15&until=2024-02-15", vec![2]),
            ("?until=2024-02-01", vec![2]),
            ("?attachments=1", vec![3]),
            ("?q=INVOICE+attached", vec![3]),
            ("?q=invoice+missing", vec![]),
        ] {
            let (st, _, page) = timeline(q).await;
            assert_eq!(st, StatusCode::OK, "{engine} {q}");
            assert_eq!(ids_on(&page), want, "{engine} {q}");
        }
        let (st, _, page) = timeline("?since=2024-02-30").await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{engine}");
        assert!(page.contains("since"), "{page}");
        let (_, _, acme) = get(&app, "/records/account/acme", Some(TOKEN)).await;
        assert_eq!(ids_on(&acme), vec![1], "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filtered_timeline_keeps_its_filter_on_the_older_link() {
    let s = site(60);
    let (_, _, first) = get(&s.app, "/records/account/acme?q=mail", Some(TOKEN)).await;
    let one = ids_on(&first);
    assert_eq!(one.len(), 25);
    assert_eq!(one[0], 59, "the last one's subject has no 'mail'");
    let older = first
        .split("class=\"older\" href=\"")
        .nth(1)
        .and_then(|x| x.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(older.ends_with("&q=mail"), "{older}");
    let (_, _, second) = get(&s.app, &older, Some(TOKEN)).await;
    assert_eq!(ids_on(&second), (10..=34).rev().collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_proxy_a_user_reads_only_what_the_crm_lets_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 8 << 20).unwrap());
    let mut alice = record("systemuser", "alice", None);
    alice.teams = vec!["sales".into()];
    let mut team = record("account", "team", Some("systemuser:carol"));
    team.teams = vec!["sales".into()];
    store
        .put_records(&[
            alice,
            record("account", "acme", Some("systemuser:alice")),
            record("account", "secret", Some("systemuser:carol")),
            team,
            record("account", "open", None),
        ])
        .unwrap();
    for (i, regarding) in ["account:acme", "account:secret", "account:team"]
        .iter()
        .enumerate()
    {
        let uid = i as u32 + 1;
        let mut a = activity("carol", "INBOX/T", uid, &format!("<p{uid}@x>"));
        a.regarding = Some(regarding.to_string());
        store
            .commit_batch(&[draft(a)], &checkpoint("carol", "INBOX/T", uid), "carol")
            .unwrap();
    }
    let config = Config::parse(&dir.path().join("foldertrack.toml"), TWO_MAILBOXES).unwrap();
    let app = router(Web::behind_proxy(
        store,
        Arc::new(RwLock::new(config)),
        "X-Remote-User",
    ));
    let as_user = |user: Option<&'static str>, path: &'static str| {
        let app = app.clone();
        async move {
            let mut req = HttpRequest::get(path);
            if let Some(u) = user {
                req = req.header("x-remote-user", u);
            }
            let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let st = res.status();
            let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .unwrap();
            (st, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let alice = Some("alice");
    for (path, want) in [
        ("/records/account/acme", StatusCode::OK),
        ("/records/account/team", StatusCode::OK),
        ("/records/account/open", StatusCode::OK),
        ("/records/account/secret", StatusCode::FORBIDDEN),
        ("/activities/1", StatusCode::OK),
        ("/activities/2", StatusCode::FORBIDDEN),
        ("/activities/3", StatusCode::OK),
        ("/mailboxes/alice", StatusCode::OK),
        ("/mailboxes/carol", StatusCode::FORBIDDEN),
        ("/records/account/nobody", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(as_user(alice, path).await.0, want, "{path}");
    }
    let (_, found) = as_user(alice, "/?q=account").await;
    assert!(
        found.contains("/records/account/acme") && !found.contains("secret"),
        "{found}"
    );
    let (_, mbs) = as_user(alice, "/mailboxes").await;
    assert!(
        mbs.contains("/mailboxes/alice") && !mbs.contains("/mailboxes/carol"),
        "{mbs}"
    );
    assert_eq!(as_user(None, "/").await.0, StatusCode::UNAUTHORIZED);
    let (st, body) = as_user(Some("mallory"), "/").await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(body.contains("systemuser:mallory"), "{body}");
    let (st, _) = as_user(Some("carol"), "/records/account/secret").await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "carol has no systemuser record here"
    );
}
