//! An activity as rows: the `activities` row and its child rows (sources, parties,
//! references, attachments), written and read back whole. Each function takes any client (the
//! committed store's or a transaction's), so the reads inside a transaction and outside it are
//! one code.

use super::db::Db;
use super::{corrupt, PgError};
use crate::model::{
    Activity, AttachmentMeta, Correlation, CorrelationMethod, Direction, Party, Record, Source,
};
use crate::track::tx::Head;
use postgres::{GenericClient, Row};

type Result<T> = std::result::Result<T, PgError>;

/// A u32 or u64 from the model as a PostgreSQL bigint (ids, UIDs and sizes all fit).
/// Inserts or replaces a record, with [`record_params`].
pub(super) const UPSERT_RECORD: &str = "INSERT INTO records (reference, type, key, name, owner,
         shared, teams, emails) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (reference) DO UPDATE SET type = excluded.type, key = excluded.key,
         name = excluded.name, owner = excluded.owner, shared = excluded.shared,
         teams = excluded.teams, emails = excluded.emails";

/// Stores a blob (sha256, bytes) once.
pub(super) const INSERT_BLOB: &str =
    "INSERT INTO blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// A record's columns, in the order `records (reference, type, key, name, owner, shared,
/// teams, emails)` lists them: the statements that write a record all take this list.
pub(super) fn record_params<'a>(
    r: &'a Record,
    reference: &'a String,
) -> [&'a (dyn postgres::types::ToSql + Sync); 8] {
    [
        reference, &r.rtype, &r.key, &r.name, &r.owner, &r.shared, &r.teams, &r.emails,
    ]
}

/// A record from a row of `SELECT type, key, name, emails, owner, shared, teams`.
pub(super) fn record_of(r: &Row) -> Record {
    Record {
        rtype: r.get(0),
        key: r.get(1),
        name: r.get(2),
        emails: r.get(3),
        owner: r.get(4),
        shared: r.get(5),
        teams: r.get(6),
    }
}

pub(super) fn big(n: impl Into<u64>) -> i64 {
    i64::try_from(n.into()).unwrap_or(i64::MAX)
}

pub(super) fn unsigned<T: TryFrom<i64>>(n: i64, what: &str) -> Result<T> {
    T::try_from(n).map_err(|_| corrupt(format!("{what} {n} is out of range")))
}

/// Rewrites a changed activity: its columns (not the lookups of [`Keys`]) and all its child
/// rows. A source another activity held moves to this one, as sled's index entry would.
pub(super) fn update(c: &mut Db<'_, impl GenericClient>, a: &Activity) -> Result<()> {
    let date_at = a
        .date
        .as_deref()
        .and_then(|d| crate::time::try_parse_date(d).ok())
        .map(|s| s as f64);
    let alerts = serde_json::to_value(&a.alerts).map_err(|e| corrupt(e.to_string()))?;
    let corr = a.correlation.as_ref();
    let n = c.execute(
        "UPDATE activities SET subject = $2, message_id = $3, date = $4,
             date_at = to_timestamp($5::float8), regarding = $6, in_reply_to = $7, token = $8,
             thread_index = $9, correlation_method = $10, correlation_activity = $11,
             inherits = $12, tracked_at = $13, size = $14, body_text = $15, body_blob = $16,
             alerts = $17
         WHERE id = $1",
        &[
            &big(a.id),
            &a.subject,
            &a.message_id,
            &a.date,
            &date_at,
            &a.regarding,
            &a.in_reply_to,
            &a.token,
            &a.thread_index,
            &corr.map(|c| c.method.as_str()),
            &corr.map(|c| big(c.activity)),
            &a.inherits,
            &a.tracked_at,
            &big(a.size),
            &a.body_text,
            &a.body_blob,
            &alerts,
        ],
    )?;
    if n == 0 {
        return Err(corrupt(format!("activity {} to update is missing", a.id)));
    }
    c.execute(
        "WITH s AS (DELETE FROM sources WHERE activity_id = $1),
             p AS (DELETE FROM parties WHERE activity_id = $1),
             r AS (DELETE FROM activity_references WHERE activity_id = $1)
         DELETE FROM attachments WHERE activity_id = $1",
        &[&big(a.id)],
    )?;
    super::bulk::insert_children(c, &[a])
}

/// Activity `id` with everything it holds, or `None`.
pub(super) fn load(c: &mut Db<'_, impl GenericClient>, id: u64) -> Result<Option<Activity>> {
    Ok(load_many(c, &[id])?.pop())
}

/// The [`Head`]s of the activities of `ids` that exist: one statement, two columns.
pub(super) fn heads(c: &mut Db<'_, impl GenericClient>, ids: &[u64]) -> Result<Vec<(u64, Head)>> {
    let keys: Vec<i64> = ids.iter().map(|id| big(*id)).collect();
    c.query(
        "SELECT a.* FROM unnest($1::bigint[]) AS k(want)
         CROSS JOIN LATERAL (SELECT id, date, regarding FROM activities
             WHERE id = k.want OFFSET 0) a",
        &[&keys],
    )?
    .iter()
    .map(|r| {
        let id = unsigned(r.get(0), "activity id")?;
        Ok((
            id,
            Head {
                date: r.get(1),
                regarding: r.get(2),
            },
        ))
    })
    .collect()
}

/// The activities of `ids` that exist, in the order of `ids`, with everything they hold: five
/// statements (the rows, then each kind of child row) however many there are. Each looks its
/// ids up one by one in the index (`LATERAL … OFFSET 0`, which the planner cannot flatten): as
/// `= ANY($1)` the planner scanned whole tables while a first sync filled them.
pub(super) fn load_many(c: &mut Db<'_, impl GenericClient>, ids: &[u64]) -> Result<Vec<Activity>> {
    let (keys, mut found) = load_rows(c, ids, "body_text")?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    load_sources(c, &keys, &mut found)?;
    load_parties(c, &keys, &mut found)?;
    load_references(c, &keys, &mut found)?;
    load_attachments(c, &keys, &mut found)?;
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// [`load_many`] as late correlation reads activities (`Lookups::activities_for_correlation`):
/// the rows without their bodies, with references and, when `parties` (smart matching), the
/// parties; no sources or attachments. Two or three statements; at the end of a
/// 10,000-message first sync the bodies alone were 58 MB read out of line, the parties
/// 40,000 rows that only smart matching reads.
pub(super) fn load_headers(
    c: &mut Db<'_, impl GenericClient>,
    ids: &[u64],
    parties: bool,
) -> Result<Vec<Activity>> {
    let (keys, mut found) = load_rows(c, ids, "'' AS body_text")?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    if parties {
        load_parties(c, &keys, &mut found)?;
    }
    load_references(c, &keys, &mut found)?;
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// The `activities` rows of `ids` (their child rows left empty) by id, and the ids as the
/// child rows' statements take them (sorted, once each). `body` is the select-list entry
/// for `body_text`: the column, or an empty text in its place.
fn load_rows(
    c: &mut Db<'_, impl GenericClient>,
    ids: &[u64],
    body: &str,
) -> Result<(Vec<i64>, std::collections::HashMap<u64, Activity>)> {
    let mut keys: Vec<i64> = ids.iter().map(|id| big(*id)).collect();
    keys.sort_unstable();
    keys.dedup();
    let sql = format!(
        "SELECT a.* FROM unnest($1::bigint[]) AS k(want)
         CROSS JOIN LATERAL (SELECT id, dedup_key, direction, subject, message_id, date,
             regarding, in_reply_to, token, thread_index, correlation_method,
             correlation_activity, inherits, tracked_at, size, {body}, body_blob, alerts
             FROM activities WHERE id = k.want OFFSET 0) a"
    );
    let found = c
        .query(&sql, &[&keys])?
        .iter()
        .map(|r| from_row(r).map(|a| (a.id, a)))
        .collect::<Result<_>>()?;
    Ok((keys, found))
}

/// The references of the activities in `found`, in their order.
fn load_references(
    c: &mut Db<'_, impl GenericClient>,
    keys: &[i64],
    found: &mut std::collections::HashMap<u64, Activity>,
) -> Result<()> {
    for r in c.query(
        "SELECT k.id, r.message_id FROM unnest($1::bigint[]) AS k(id)
         CROSS JOIN LATERAL (SELECT message_id, position FROM activity_references
             WHERE activity_id = k.id OFFSET 0) r
         ORDER BY k.id, r.position",
        &[&keys],
    )? {
        if let Some(a) = found.get_mut(&unsigned(r.get(0), "activity id")?) {
            a.references.push(r.get(1));
        }
    }
    Ok(())
}

/// The columns of an `activities` row; the child rows are left empty.
fn from_row(r: &Row) -> Result<Activity> {
    let text: String = r.get("direction");
    let direction = Direction::from_text(&text)
        .ok_or_else(|| corrupt(format!("unknown direction {text:?}")))?;
    let correlation = match (
        r.get::<_, Option<String>>("correlation_method"),
        r.get::<_, Option<i64>>("correlation_activity"),
    ) {
        (Some(m), Some(id)) => Some(Correlation {
            method: CorrelationMethod::from_text(&m)
                .ok_or_else(|| corrupt(format!("unknown correlation method {m:?}")))?,
            activity: unsigned(id, "correlation activity")?,
        }),
        _ => None,
    };
    let alerts = serde_json::from_value(r.get("alerts")).map_err(|e| corrupt(e.to_string()))?;
    Ok(Activity {
        id: unsigned(r.get("id"), "activity id")?,
        subject: r.get("subject"),
        message_id: r.get("message_id"),
        dedup_key: r.get("dedup_key"),
        direction,
        regarding: r.get("regarding"),
        from: None,
        to: Vec::new(),
        cc: Vec::new(),
        bcc: Vec::new(),
        date: r.get("date"),
        in_reply_to: r.get("in_reply_to"),
        references: Vec::new(),
        thread_index: r.get("thread_index"),
        body_text: r.get("body_text"),
        body_blob: r.get("body_blob"),
        attachments: Vec::new(),
        source: Source {
            mailbox: String::new(),
            folder: String::new(),
            uidvalidity: 0,
            uid: 0,
        },
        other_sources: Vec::new(),
        size: unsigned(r.get("size"), "size")?,
        tracked_at: r.get("tracked_at"),
        alerts,
        correlation,
        token: r.get("token"),
        inherits: r.get("inherits"),
    })
}

/// Sources in their order: the first is the activity's source, the rest its other sources.
fn load_sources(
    c: &mut Db<'_, impl GenericClient>,
    keys: &[i64],
    found: &mut std::collections::HashMap<u64, Activity>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in c.query(
        "SELECT k.id, s.mailbox, s.folder, s.uidvalidity, s.uid FROM unnest($1::bigint[]) AS k(id)
         CROSS JOIN LATERAL (SELECT * FROM sources WHERE activity_id = k.id OFFSET 0) s
         ORDER BY k.id, s.position",
        &[&keys],
    )? {
        let id = unsigned(r.get(0), "activity id")?;
        let s = Source {
            mailbox: r.get(1),
            folder: r.get(2),
            uidvalidity: unsigned(r.get(3), "uidvalidity")?,
            uid: unsigned(r.get(4), "uid")?,
        };
        if let Some(a) = found.get_mut(&id) {
            match seen.insert(id) {
                true => a.source = s,
                false => a.other_sources.push(s),
            }
        }
    }
    match found.keys().find(|id| !seen.contains(*id)) {
        Some(id) => Err(corrupt(format!("activity {id} has no source"))),
        None => Ok(()),
    }
}

fn load_parties(
    c: &mut Db<'_, impl GenericClient>,
    keys: &[i64],
    found: &mut std::collections::HashMap<u64, Activity>,
) -> Result<()> {
    let rows = c.query(
        "SELECT k.id, p.role, p.address, p.name, p.record, p.records
         FROM unnest($1::bigint[]) AS k(id)
         CROSS JOIN LATERAL (SELECT * FROM parties WHERE activity_id = k.id OFFSET 0) p
         ORDER BY k.id, p.role, p.position",
        &[&keys],
    )?;
    for r in rows {
        let Some(a) = found.get_mut(&unsigned(r.get(0), "activity id")?) else {
            continue;
        };
        let p = Party {
            address: r.get(2),
            name: r.get(3),
            record: r.get(4),
            records: r.get(5),
        };
        match r.get::<_, &str>(1) {
            "from" => a.from = Some(p),
            "to" => a.to.push(p),
            "cc" => a.cc.push(p),
            "bcc" => a.bcc.push(p),
            other => return Err(corrupt(format!("unknown party role {other:?}"))),
        }
    }
    Ok(())
}

fn load_attachments(
    c: &mut Db<'_, impl GenericClient>,
    keys: &[i64],
    found: &mut std::collections::HashMap<u64, Activity>,
) -> Result<()> {
    for r in c.query(
        "SELECT k.id, t.name, t.mime_type, t.size, t.sha256, t.skipped
         FROM unnest($1::bigint[]) AS k(id)
         CROSS JOIN LATERAL (SELECT * FROM attachments WHERE activity_id = k.id OFFSET 0) t
         ORDER BY k.id, t.position",
        &[&keys],
    )? {
        if let Some(a) = found.get_mut(&unsigned(r.get(0), "activity id")?) {
            a.attachments.push(AttachmentMeta {
                name: r.get(1),
                mime_type: r.get(2),
                size: unsigned(r.get(3), "attachment size")?,
                sha256: r.get(4),
                skipped: r.get(5),
            });
        }
    }
    Ok(())
}

/// Activity `id`'s `activity_fields` row, if it has one.
pub(super) fn load_field_state(
    c: &mut Db<'_, impl GenericClient>,
    id: u64,
) -> Result<Option<crate::model::FieldState>> {
    c.query_opt(
        "SELECT read, follow_up, importance, categories, copies FROM activity_fields
         WHERE activity_id = $1",
        &[&big(id)],
    )?
    .map(|r| field_state(&r))
    .transpose()
}

/// An `activity_fields` row (`read, follow_up, importance, categories, copies`).
pub(super) fn field_state(r: &Row) -> Result<crate::model::FieldState> {
    let importance: String = r.get(2);
    Ok(crate::model::FieldState {
        crm: crate::model::Fields {
            read: r.get(0),
            follow_up: r.get(1),
            importance: crate::model::Importance::from_text(&importance)
                .ok_or_else(|| corrupt(format!("importance `{importance}`")))?,
            categories: r.get(3),
        },
        copies: serde_json::from_value(r.get(4)).map_err(|e| corrupt(e.to_string()))?,
    })
}
