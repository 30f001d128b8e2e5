//! Activities written many at a time: one multi-row statement per table (`unnest` of one array
//! per column), a few round trips for a whole batch instead of several per activity. The batch
//! transaction writes the activities it created this way when it commits ([`super::PgTx`]),
//! an update rewrites an activity's child rows this way, and `store copy` writes its batches
//! this way: one list of columns for all three.

use super::db::Db;
use super::rows::big;
use super::{corrupt, PgError};
use crate::model::Activity;
use postgres::GenericClient;

type Result<T> = std::result::Result<T, PgError>;

/// A new activity and the lookups that find it (see `Findable`): set at insert, left alone by
/// updates.
pub(crate) struct NewActivity {
    pub activity: Activity,
    /// Upper-cased tracking token, when this activity is the one its token finds.
    pub token_key: Option<String>,
    /// Decoded Thread-Index, when it has one.
    pub thread_key: Option<Vec<u8>>,
    /// Smart matching's subject key.
    pub subject_key: Option<String>,
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| corrupt(e.to_string()))
}
/// Inserts new activities: their rows, then [`insert_children`].
pub(super) fn insert(c: &mut Db<'_, impl GenericClient>, batch: &[NewActivity]) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    insert_activity_rows(c, batch)?;
    let acts: Vec<&Activity> = batch.iter().map(|n| &n.activity).collect();
    insert_children(c, &acts)
}

/// The child rows of activities: sources, parties, references and attachments.
pub(super) fn insert_children(
    c: &mut Db<'_, impl GenericClient>,
    acts: &[&Activity],
) -> Result<()> {
    insert_sources(c, acts)?;
    insert_parties(c, acts)?;
    let (mut id, mut pos, mut msg) = (Vec::new(), Vec::new(), Vec::new());
    for a in acts {
        for (i, m) in a.references.iter().enumerate() {
            id.push(big(a.id));
            pos.push(i as i32);
            msg.push(m.as_str());
        }
    }
    if !id.is_empty() {
        c.execute(
            "INSERT INTO activity_references (activity_id, position, message_id)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[])",
            &[&id, &pos, &msg],
        )?;
    }
    let (mut id, mut pos) = (Vec::new(), Vec::new());
    let (mut name, mut mime, mut size, mut sha, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in acts {
        for (i, t) in a.attachments.iter().enumerate() {
            id.push(big(a.id));
            pos.push(i as i32);
            name.push(t.name.as_deref());
            mime.push(t.mime_type.as_str());
            size.push(big(t.size));
            sha.push(t.sha256.as_str());
            skipped.push(t.skipped.as_deref());
        }
    }
    if id.is_empty() {
        return Ok(());
    }
    c.execute(
        "INSERT INTO attachments (activity_id, position, name, mime_type, size, sha256, skipped)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[],
             $6::text[], $7::text[])",
        &[&id, &pos, &name, &mime, &size, &sha, &skipped],
    )?;
    Ok(())
}

fn insert_activity_rows(c: &mut Db<'_, impl GenericClient>, batch: &[NewActivity]) -> Result<()> {
    let acts = || batch.iter().map(|n| &n.activity);
    let id: Vec<i64> = acts().map(|a| big(a.id)).collect();
    let dedup: Vec<&str> = acts().map(|a| a.dedup_key.as_str()).collect();
    let direction: Vec<&str> = acts().map(|a| a.direction.as_str()).collect();
    let subject: Vec<Option<&str>> = acts().map(|a| a.subject.as_deref()).collect();
    let message_id: Vec<Option<&str>> = acts().map(|a| a.message_id.as_deref()).collect();
    let date: Vec<Option<&str>> = acts().map(|a| a.date.as_deref()).collect();
    let date_at: Vec<Option<f64>> = acts()
        .map(|a| {
            a.date
                .as_deref()
                .and_then(|d| crate::time::try_parse_date(d).ok())
                .map(|s| s as f64)
        })
        .collect();
    let regarding: Vec<Option<&str>> = acts().map(|a| a.regarding.as_deref()).collect();
    let in_reply_to: Vec<Option<&str>> = acts().map(|a| a.in_reply_to.as_deref()).collect();
    let token: Vec<Option<&str>> = acts().map(|a| a.token.as_deref()).collect();
    let token_key: Vec<Option<&str>> = batch.iter().map(|n| n.token_key.as_deref()).collect();
    let thread_index: Vec<Option<&str>> = acts().map(|a| a.thread_index.as_deref()).collect();
    let thread_key: Vec<Option<&[u8]>> = batch.iter().map(|n| n.thread_key.as_deref()).collect();
    let subject_key: Vec<Option<&str>> = batch.iter().map(|n| n.subject_key.as_deref()).collect();
    let method: Vec<Option<&str>> = acts()
        .map(|a| a.correlation.as_ref().map(|k| k.method.as_str()))
        .collect();
    let corr: Vec<Option<i64>> = acts()
        .map(|a| a.correlation.as_ref().map(|k| big(k.activity)))
        .collect();
    let inherits: Vec<bool> = acts().map(|a| a.inherits).collect();
    let tracked_at: Vec<&str> = acts().map(|a| a.tracked_at.as_str()).collect();
    let size: Vec<i64> = acts().map(|a| big(a.size)).collect();
    let body: Vec<&str> = acts().map(|a| a.body_text.as_str()).collect();
    let body_blob: Vec<Option<&str>> = acts().map(|a| a.body_blob.as_deref()).collect();
    let alerts: Vec<serde_json::Value> = acts().map(|a| json(&a.alerts)).collect::<Result<_>>()?;
    c.execute(
        "INSERT INTO activities (id, dedup_key, direction, subject, message_id, date, date_at,
             regarding, in_reply_to, token, token_key, thread_index, thread_key,
             correlation_method, correlation_activity, inherits, tracked_at, size, body_text,
             body_blob, alerts, subject_key)
         SELECT i, dk, dir, subj, mid, d, to_timestamp(dat), reg, irt, tok, tk, ti, thk, cm, ca,
             inh, ta, sz, bt, bb, al, sk
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::float8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::bytea[], $14::text[], $15::bigint[], $16::bool[], $17::text[], $18::bigint[],
             $19::text[], $20::text[], $21::jsonb[], $22::text[])
             AS t(i, dk, dir, subj, mid, d, dat, reg, irt, tok, tk, ti, thk, cm, ca, inh, ta, sz,
                  bt, bb, al, sk)",
        &[
            &id,
            &dedup,
            &direction,
            &subject,
            &message_id,
            &date,
            &date_at,
            &regarding,
            &in_reply_to,
            &token,
            &token_key,
            &thread_index,
            &thread_key,
            &method,
            &corr,
            &inherits,
            &tracked_at,
            &size,
            &body,
            &body_blob,
            &alerts,
            &subject_key,
        ],
    )?;
    Ok(())
}

/// Sources, position 0 the first; a source listed twice goes to the later activity, as the
/// engine's insert (`ON CONFLICT … DO UPDATE`) would leave it.
fn insert_sources(c: &mut Db<'_, impl GenericClient>, acts: &[&Activity]) -> Result<()> {
    type Key<'a> = (&'a str, &'a str, u32, u32);
    let mut rows: std::collections::HashMap<Key<'_>, (i64, i32)> = Default::default();
    for a in acts {
        for (i, s) in std::iter::once(&a.source)
            .chain(&a.other_sources)
            .enumerate()
        {
            let k = (s.mailbox.as_str(), s.folder.as_str(), s.uidvalidity, s.uid);
            rows.insert(k, (big(a.id), i as i32));
        }
    }
    let (mut mb, mut f, mut uv, mut uid, mut id, mut pos) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for ((m, fo, v, u), (a, p)) in rows {
        mb.push(m);
        f.push(fo);
        uv.push(big(v));
        uid.push(big(u));
        id.push(a);
        pos.push(p);
    }
    c.execute(
        "INSERT INTO sources (mailbox, folder, uidvalidity, uid, activity_id, position)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
             $6::int[])
         ON CONFLICT (mailbox, folder, uidvalidity, uid)
         DO UPDATE SET activity_id = excluded.activity_id, position = excluded.position",
        &[&mb, &f, &uv, &uid, &id, &pos],
    )?;
    Ok(())
}

fn insert_parties(c: &mut Db<'_, impl GenericClient>, acts: &[&Activity]) -> Result<()> {
    let (mut id, mut role, mut pos, mut addr, mut name, mut record, mut records) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for a in acts {
        let roles: [(&str, &[crate::model::Party]); 4] = [
            ("from", a.from.as_slice()),
            ("to", &a.to),
            ("cc", &a.cc),
            ("bcc", &a.bcc),
        ];
        for (r, parties) in roles {
            for (i, p) in parties.iter().enumerate() {
                id.push(big(a.id));
                role.push(r);
                pos.push(i as i32);
                addr.push(p.address.as_deref());
                name.push(p.name.as_deref());
                record.push(p.record.as_deref());
                // A text[] per row: carried as JSON (arrays of arrays must be rectangular);
                // most parties match no record, and NULL spares them the JSON unpacking.
                records.push(match p.records.is_empty() {
                    true => None,
                    false => Some(json(&p.records)?),
                });
            }
        }
    }
    if id.is_empty() {
        return Ok(());
    }
    c.execute(
        "INSERT INTO parties (activity_id, role, position, address, name, record, records)
         SELECT i, r, p, a, n, rec, CASE WHEN recs IS NULL THEN '{}'::text[]
             ELSE ARRAY(SELECT jsonb_array_elements_text(recs)) END
         FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
             $7::jsonb[]) AS t(i, r, p, a, n, rec, recs)",
        &[&id, &role, &pos, &addr, &name, &record, &records],
    )?;
    Ok(())
}
