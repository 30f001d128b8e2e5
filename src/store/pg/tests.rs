//! The PostgreSQL engine against a private PostgreSQL (testkit's `PgCluster`): the
//! conformance suite, the schema as SQL sees it, the schema version check, and an activity
//! with every field round-tripping through the tables.

use super::{schema, PgError, PgStore};
use crate::model::{
    Activity, Alert, AlertLevel, AttachmentMeta, Correlation, CorrelationMethod, Direction, Party,
};
use crate::track::conformance::{activity, commit, draft, source, thread_index};
use crate::track::tx::{BatchTx, Counter, Engine, Findable, Lookups};
use testkit::pg::PgCluster;

/// A private cluster and a migrated store on it; `None` when PostgreSQL is missing (skipped).
fn store() -> Option<(PgCluster, PgStore)> {
    let pg = PgCluster::start()?;
    let store = PgStore::open(pg.url()).expect("open the PostgreSQL store");
    Some((pg, store))
}

#[test]
fn pg_engine_passes_the_conformance_suite() {
    let Some((_pg, store)) = store() else { return };
    crate::track::conformance::suite(&store);
    // The concurrent writers and the race on one message made the server refuse some
    // transactions, which ran again (printed: how often is up to the scheduler).
    eprintln!(
        "transactions run again after a conflict: {}",
        store.retries()
    );
}

/// The tables are real: a reporting tool reads a committed batch with plain SQL.
#[test]
fn pg_schema_is_plain_sql_tables() {
    let Some((_pg, store)) = store() else { return };
    let mut a = activity("alice", "INBOX/Acme", 7, "<sql@t>");
    a.regarding = Some("account:acme".into());
    commit(&store, &[draft(a)]).unwrap();
    let mut sql = store.sql().unwrap();
    let rows = sql
        .query("SELECT subject, direction, regarding FROM activities", &[])
        .unwrap();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![(
            "about <sql@t>".to_string(),
            "incoming".to_string(),
            "account:acme".to_string()
        )]
    );
    let row = sql
        .query_one(
            "SELECT s.mailbox, s.folder, s.uid, a.date_at = '2024-09-02T10:00:00Z'::timestamptz,
                 c.last_uid
             FROM sources s JOIN activities a ON a.id = s.activity_id
             JOIN checkpoints c ON c.mailbox = s.mailbox AND c.folder = s.folder",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    assert_eq!(row.get::<_, String>(1), "INBOX/Acme");
    assert_eq!(row.get::<_, i64>(2), 7);
    assert!(
        row.get::<_, bool>(3),
        "date_at is the Date header as a timestamp"
    );
    assert_eq!(
        row.get::<_, i64>(4),
        7,
        "the checkpoint committed with the batch"
    );
}

#[test]
fn pg_newer_schema_version_is_refused_with_a_clear_message() {
    let Some((pg, store)) = store() else { return };
    let mut sql = store.sql().unwrap();
    assert_eq!(schema::version(&mut sql).unwrap(), schema::VERSION);
    sql.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&(schema::VERSION + 1)],
    )
    .unwrap();
    drop(store);
    let err = PgStore::open(pg.url()).unwrap_err();
    assert!(
        matches!(err, PgError::SchemaTooNew { found, known }
            if found == schema::VERSION + 1 && known == schema::VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("newer than this foldertrack knows") && msg.contains("upgrade foldertrack"),
        "{msg}"
    );
    // Opening a database already at this version changes nothing.
    let mut sql2 = postgres::Client::connect(pg.url(), postgres::NoTls).unwrap();
    sql2.execute(
        "DELETE FROM schema_version WHERE version > $1",
        &[&schema::VERSION],
    )
    .unwrap();
    PgStore::open(pg.url()).expect("the same version opens");
}

/// A connection failure names the server, database and user, never the password.
#[test]
fn pg_connect_error_names_the_target_but_not_the_password() {
    let err = PgStore::open("host=/nonexistent/ft port=1 dbname=crm user=agent password=s3cret")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/ft") && msg.contains("crm") && msg.contains("agent"),
        "{msg}"
    );
    assert!(
        !msg.contains("s3cret") && !format!("{err:?}").contains("s3cret"),
        "{msg}"
    );
}

fn party(address: &str, name: Option<&str>, records: &[&str]) -> Party {
    Party {
        address: Some(address.into()),
        name: name.map(str::to_string),
        record: records.first().map(|r| r.to_string()),
        records: records.iter().map(|r| r.to_string()).collect(),
    }
}

/// An activity with every field set.
fn full_activity() -> Activity {
    let mut a = activity("alice", "INBOX/Acme", 11, "<full@t>");
    a.direction = Direction::Outgoing;
    a.regarding = Some("account:acme".into());
    a.from = Some(party(
        "alice@example.com",
        Some("Alice"),
        &["systemuser:alice"],
    ));
    a.to = vec![
        party(
            "bob@acme.com",
            Some("Bob Builder"),
            &["contact:bob", "lead:bob"],
        ),
        party("x@y.z", None, &[]),
    ];
    a.cc = vec![party("carol@acme.com", Some("Carol"), &["contact:carol"])];
    a.bcc = vec![Party {
        address: None,
        name: Some("undisclosed".into()),
        record: None,
        records: Vec::new(),
    }];
    a.date = Some("Mon, 2 Sep 2024 10:00:00 +0200".into());
    a.in_reply_to = Some("<parent@t>".into());
    a.references = vec!["<root@t>".into(), "<parent@t>".into()];
    a.thread_index = Some(thread_index(1));
    a.body_blob = Some("ab".repeat(32));
    a.attachments = vec![
        AttachmentMeta {
            name: Some("quote.pdf".into()),
            mime_type: "application/pdf".into(),
            size: 1234,
            sha256: "cd".repeat(32),
            skipped: None,
        },
        AttachmentMeta {
            name: None,
            mime_type: "application/x-msdownload".into(),
            size: 99,
            sha256: "ef".repeat(32),
            skipped: Some("blocked extension".into()),
        },
    ];
    a.other_sources = vec![source("bob", "Sent", 3), source("carol", "INBOX/x", 4)];
    a.size = 4321;
    a.tracked_at = "2026-12-02T00:00:00Z".into();
    a.alerts = vec![Alert {
        level: AlertLevel::Warning,
        message: "the rule's record is missing".into(),
    }];
    a.correlation = Some(Correlation {
        method: CorrelationMethod::References,
        activity: 1,
    });
    a.token = Some("crm:0001002".into());
    a.inherits = true;
    a
}

/// How [`full_activity`] is found: by its token, awaiting its parent, by its subject.
const FULL_FINDABLE: Findable<'static> = Findable {
    by_token: true,
    awaiting_parent: true,
    subject_key: Some("about full"),
};

#[test]
fn pg_activity_with_every_field_round_trips() {
    let Some((_pg, store)) = store() else { return };
    let a = full_activity();
    let id = store
        .transaction(|tx| {
            let mut a = a.clone();
            a.id = tx.next_id(Counter::Activity)?;
            tx.insert_activity(&a, FULL_FINDABLE)?;
            assert_eq!(
                tx.activity(a.id)?.as_ref(),
                Some(&a),
                "read in the transaction"
            );
            Ok(a.id)
        })
        .unwrap();
    let mut want = a.clone();
    want.id = id;
    assert_eq!(store.activity(id).unwrap(), Some(want.clone()));
    // Late correlation's read: the same but for the body, sources and attachments.
    let headers = store
        .activities_for_correlation(&[999_999, id], true)
        .unwrap();
    let mut bare = want.clone();
    bare.body_text = String::new();
    bare.source = source("", "", 0);
    bare.source.uidvalidity = 0;
    (bare.other_sources, bare.attachments) = (vec![], vec![]);
    assert_eq!(headers, vec![bare.clone()]);
    // Without smart matching, no parties either.
    let headers = store.activities_for_correlation(&[id], false).unwrap();
    (bare.from, bare.to, bare.cc, bare.bcc) = (None, vec![], vec![], vec![]);
    assert_eq!(headers, vec![bare]);
    assert!(!want.body_text.is_empty() && !want.references.is_empty() && !want.to.is_empty());
    assert_eq!(store.activity_by_token("CRM:0001002").unwrap(), Some(id));
    for s in std::iter::once(&want.source).chain(&want.other_sources) {
        assert_eq!(store.activity_by_source(s).unwrap(), Some(id));
    }
    // An update rewrites the child rows: one source fewer, one party more, no attachments.
    let mut after = want.clone();
    after.other_sources.pop();
    after.cc.push(party("dave@acme.com", None, &[]));
    after.attachments.clear();
    after.regarding = None;
    after.correlation = None;
    store
        .transaction(|tx| tx.update_activity(&want, &after))
        .unwrap();
    assert_eq!(store.activity(id).unwrap(), Some(after));
    assert_eq!(
        store
            .activity_by_source(&source("carol", "INBOX/x", 4))
            .unwrap(),
        None
    );
    // The scan's other form (a prefix of 0xff bytes has no successor) runs too.
    use crate::track::tx::Scans as _;
    assert!(store.extending_thread(&[0xff; 3]).unwrap().is_empty());
    use crate::track::ActivityLookup as _;
    let found = store.by_subject("about full");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, id);
    assert_eq!(
        found[0].1[..2],
        ["alice@example.com".to_string(), "bob@acme.com".into()]
    );
}

#[test]
fn pg_prefix_successor_bounds_the_thread_scan() {
    assert_eq!(super::successor(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(super::successor(&[1, 0xff, 0xff]), Some(vec![2]));
    assert_eq!(super::successor(&[0xff, 0xff]), None);
    assert_eq!(super::successor(&[]), None);
}

/// `[store] tls` against a server with TLS on: `verify-full` connects when the certificate
/// chains to `ca_file` and refuses one that does not, `require` connects to any certificate,
/// and the connection really is encrypted (the server's `pg_stat_ssl` says so).
#[test]
fn pg_tls_modes_verify_full_require_and_disable() {
    use crate::config::{PgSettings, PgTls, PgUrl};
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = testkit::pki::pki(dir.path());
    let Some(pg) = PgCluster::start_tls(&files) else {
        return;
    };
    let settings = |tls, ca_file: Option<&std::path::Path>| PgSettings {
        url: PgUrl::Literal(pg.url().to_string()),
        tls,
        ca_file: ca_file.map(Into::into),
        statement_timeout: crate::defaults::STATEMENT_TIMEOUT,
    };
    let encrypted = |store: &PgStore| -> bool {
        let mut c = store.sql().unwrap();
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let verified = PgStore::open_with(pg.url(), &settings(PgTls::VerifyFull, Some(&ca))).unwrap();
    assert!(encrypted(&verified));
    let other = testkit::pki::unrelated_ca(dir.path());
    let err = PgStore::open_with(pg.url(), &settings(PgTls::VerifyFull, Some(&other)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate") || err.contains("TLS"), "{err}");
    let any = PgStore::open_with(pg.url(), &settings(PgTls::Require, None)).unwrap();
    assert!(encrypted(&any));
    let plain = PgStore::open_with(pg.url(), &settings(PgTls::Disable, None)).unwrap();
    assert!(!encrypted(&plain));
    // On the cluster's Unix socket TLS does not apply: verify-full (the default) connects.
    let dir = pg.socket_dir().unwrap().display().to_string();
    let port = pg
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let local = format!(
        "postgresql:///postgres?host={dir}&port={port}&user={}",
        testkit::pg::USER
    );
    let s = PgSettings {
        url: PgUrl::Literal(local.clone()),
        tls: PgTls::VerifyFull,
        ca_file: None,
        statement_timeout: crate::defaults::STATEMENT_TIMEOUT,
    };
    let over_socket = PgStore::open_with(&local, &s).unwrap();
    assert!(!encrypted(&over_socket));
}

/// Many threads at once share at most `MAX_CONNECTIONS` connections: the others wait their
/// turn (a thousand mailbox workers must not open a thousand server processes), and every one
/// of them gets its answer.
#[test]
fn pg_connections_are_bounded_and_threads_wait_their_turn() {
    let Some((_pg, store)) = store() else { return };
    let threads = 3 * super::MAX_CONNECTIONS;
    let seen: Vec<i64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    store
                        .with(|c| {
                            let n = c.query_one(
                                "SELECT count(*) FROM pg_stat_activity
                                 WHERE datname = current_database() AND backend_type = 'client backend'",
                                &[],
                            )?;
                            c.execute("SELECT pg_sleep(0.05)", &[])?;
                            Ok(n.get::<_, i64>(0))
                        })
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(seen.len(), threads, "every thread got its answer");
    let most = *seen.iter().max().unwrap();
    assert!(
        most <= super::MAX_CONNECTIONS as i64,
        "{most} connections open at once, over {}",
        super::MAX_CONNECTIONS
    );
    assert!(most > 1, "the threads did run concurrently ({most})");
}

/// Alerts raised in a transaction are written at its end, one row each: the count grows by
/// how often it was raised, `first_at` is the first raise's, level and `at` the last one's;
/// a later transaction adds to the same row. An aborted transaction raises nothing.
#[test]
fn pg_alerts_raised_in_a_transaction_count_every_raise() {
    let Some((_pg, store)) = store() else { return };
    let warn = |m: &str| Alert {
        level: AlertLevel::Warning,
        message: m.into(),
    };
    let raise = |tx: &super::PgTx<'_>, m: &str, at: &str| tx.raise_alert("alice", &warn(m), at);
    store
        .transaction(|tx| {
            raise(tx, "rule's record is missing", "2026-12-01T10:00:00Z")?;
            raise(tx, "other", "2026-12-01T10:00:01Z")?;
            raise(tx, "rule's record is missing", "2026-12-01T10:00:02Z")?;
            let error = Alert {
                level: AlertLevel::Error,
                ..warn("rule's record is missing")
            };
            tx.raise_alert("alice", &error, "2026-12-01T10:00:03Z")
        })
        .unwrap();
    let aborted: Result<(), PgError> = store.transaction(|tx| {
        raise(tx, "other", "2026-12-01T11:00:00Z")?;
        Err(PgError::NotFound("abort".into()))
    });
    assert!(aborted.is_err());
    store
        .transaction(|tx| raise(tx, "rule's record is missing", "2026-12-01T12:00:00Z"))
        .unwrap();
    let mut got: Vec<_> = store
        .alerts(10)
        .unwrap()
        .into_iter()
        .map(|a| {
            (
                a.alert.message,
                a.alert.level.as_str(),
                a.count,
                a.first_at,
                a.at,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "other".to_string(),
                "warning",
                1,
                "2026-12-01T10:00:01Z".to_string(),
                "2026-12-01T10:00:01Z".to_string()
            ),
            (
                "rule's record is missing".to_string(),
                "warning",
                4,
                "2026-12-01T10:00:00Z".to_string(),
                "2026-12-01T12:00:00Z".to_string()
            ),
        ]
    );
}

/// The batch's writes run with generic plans (the foreign-key checks of its child rows are
/// not planned one by one) and the transaction's later reads with the session's custom ones.
#[test]
fn pg_writes_use_generic_plans_and_reads_custom_ones() {
    let Some((_pg, store)) = store() else { return };
    let mode = |tx: &super::PgTx<'_>| {
        tx.db(|c| {
            Ok(c.query_one("SHOW plan_cache_mode", &[])?
                .get::<_, String>(0))
        })
    };
    let (inside, after) = store
        .transaction(|tx| {
            tx.generic_plans(|| mode(tx))
                .and_then(|i| Ok((i, mode(tx)?)))
        })
        .unwrap();
    assert_eq!(inside, "auto");
    assert_eq!(after, "force_custom_plan");
}

/// Deleting an activity leaves no row in any table that names it by `activity_id` (the audit
/// trail apart, which outlives it by design). The child tables written with every activity
/// carry no foreign key (schema version 8), so this is what keeps them whole: a table added
/// later and forgotten by the delete fails here, found through the catalogue.
#[test]
fn pg_a_deleted_activity_leaves_no_row_that_names_it() {
    let Some((_pg, store)) = store() else { return };
    let id = store
        .transaction(|tx| {
            let mut a = full_activity();
            a.id = tx.next_id(Counter::Activity)?;
            tx.insert_activity(&a, FULL_FINDABLE)?;
            tx.put_field_state(a.id, &crate::model::FieldState::default())?;
            Ok(a.id)
        })
        .unwrap();
    let acme = crate::model::RecordRef::new("account", "acme");
    assert!(store.link_by_hand(id, &acme, "test").unwrap());
    assert_eq!(store.untrack(id, "test").unwrap(), Some(true));
    let mut sql = store.sql().unwrap();
    let tables: Vec<String> = sql
        .query(
            "SELECT table_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND column_name = 'activity_id'
               AND table_name <> 'audit' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let naming = |sql: &mut postgres::Client| -> Vec<(String, i64)> {
        let named = |t: &String| {
            let q = format!("SELECT count(*) FROM {t} WHERE activity_id = $1");
            (
                t.clone(),
                sql.query_one(&q, &[&(id as i64)]).unwrap().get(0),
            )
        };
        tables.iter().map(named).filter(|(_, n)| *n > 0).collect()
    };
    let before: Vec<String> = naming(&mut sql).into_iter().map(|(t, _)| t).collect();
    for t in [
        "activity_fields",
        "activity_references",
        "attachments",
        "awaiting_parent",
        "manual_links",
        "parties",
        "sources",
        "untracked",
    ] {
        assert!(before.contains(&t.to_string()), "{t} has a row: {before:?}");
    }
    store
        .delete_activity(id, Some("about full"), "test", None)
        .unwrap()
        .expect("the activity was there");
    assert_eq!(
        naming(&mut sql),
        vec![],
        "rows left naming the deleted activity"
    );
    assert_eq!(store.activity(id).unwrap(), None);
}
