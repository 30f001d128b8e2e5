//! `store copy --from-sled` on the PostgreSQL side ([`crate::store::copy`] drives it): the
//! copy's progress row, bulk writes that keep the source's ids (a batch per transaction, the
//! progress in the same transaction, so an interrupted copy resumes without duplicates), the
//! sequences set past the copied ids, and whole-table reads for the verification.
//!
//! The progress lives in `copy_progress` (one row), created by the copy itself rather than by
//! a schema migration: it is bookkeeping of one admin command, not part of the product's data.

use super::rows::{self, big};
use super::{corrupt, PgError, PgStore, PgTx};
use crate::model::{Activity, QuarantineEntry, Record};
use crate::store::sledstore::TokenUser;
use crate::store::{FolderState, MailboxState, OutboxEntry, RuleBinding, StoredAlert};
use crate::track::tx::BatchTx;
use postgres::Transaction;

type Result<T> = std::result::Result<T, PgError>;

/// Where a copy into this database stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyProgress {
    /// The sled data dir copied from (canonical path).
    pub source: String,
    /// The phase to run next (`records`, `blobs`, `activities`, `indexes`, `state`,
    /// `verify`, `done`).
    pub phase: String,
    /// The highest activity id copied so far.
    pub last_activity: u64,
    /// The last blob copied (blobs go in sha256 order).
    pub last_blob: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// An activity as the copy writes it: its row and child rows, and its lookups.
pub(crate) struct CopiedActivity {
    pub activity: Activity,
    pub token_key: Option<String>,
    pub thread_key: Option<Vec<u8>>,
}

/// The rest of the state, written in one transaction with the phase after it.
pub(crate) struct State<'a> {
    pub checkpoints: &'a mut dyn Iterator<Item = crate::store::Result<FolderState>>,
    pub mailboxes: &'a mut dyn Iterator<Item = crate::store::Result<MailboxState>>,
    pub quarantine: &'a mut dyn Iterator<Item = crate::store::Result<(QuarantineEntry, Vec<u8>)>>,
    pub alerts: &'a mut dyn Iterator<Item = crate::store::Result<StoredAlert>>,
    pub manual_links: &'a mut dyn Iterator<Item = crate::store::Result<u64>>,
    pub bindings: &'a mut dyn Iterator<Item = crate::store::Result<(String, String, RuleBinding)>>,
    pub outbox: &'a mut dyn Iterator<Item = crate::store::Result<OutboxEntry>>,
    pub token_users: &'a [TokenUser],
    pub counters: crate::store::sledstore::Counters,
}

const PROGRESS_TABLE: &str = "CREATE TABLE IF NOT EXISTS copy_progress (
    id            integer PRIMARY KEY CHECK (id = 1),
    source        text NOT NULL,
    phase         text NOT NULL,
    last_activity bigint NOT NULL DEFAULT 0,
    last_blob     text,
    started_at    text NOT NULL,
    finished_at   text
)";

/// A store error (the copy's driver speaks [`crate::store::StoreError`]) as a PostgreSQL one.
fn from_store(e: crate::store::StoreError) -> PgError {
    corrupt(format!("reading the sled store: {e}"))
}

fn json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| corrupt(e.to_string()))
}

impl PgStore {
    /// Runs `f` in one READ COMMITTED transaction (the copy is the database's only writer:
    /// nothing to serialize against), committed when it succeeds.
    fn copy_tx<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let mut tx = c.parts().0.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// The copy's progress row, if a copy into this database ever started.
    pub(crate) fn copy_progress(&self) -> Result<Option<CopyProgress>> {
        self.with(|c| {
            c.batch_execute(PROGRESS_TABLE)?;
            let row = c.query_opt(
                "SELECT source, phase, last_activity, last_blob, started_at, finished_at
                 FROM copy_progress WHERE id = 1",
                &[],
            )?;
            Ok(row.map(|r| CopyProgress {
                source: r.get(0),
                phase: r.get(1),
                last_activity: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                last_blob: r.get(3),
                started_at: r.get(4),
                finished_at: r.get(5),
            }))
        })
    }

    /// What the database holds already, by table (only the non-empty ones).
    pub(crate) fn copy_target_contents(&self) -> Result<Vec<(&'static str, i64)>> {
        const TABLES: [&str; 10] = [
            "activities",
            "records",
            "quarantine",
            "checkpoints",
            "blobs",
            "outbox",
            "alerts",
            "mailbox_state",
            "rule_bindings",
            "token_users",
        ];
        self.with(|c| {
            let mut out = Vec::new();
            for t in TABLES {
                let n: i64 = c
                    .query_one(&format!("SELECT count(*) FROM {t}"), &[])?
                    .get(0);
                if n > 0 {
                    out.push((t, n));
                }
            }
            Ok(out)
        })
    }

    /// Records the start of a copy from `source`.
    pub(crate) fn copy_start(&self, source: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO copy_progress (id, source, phase, started_at)
                 VALUES (1, $1, 'records', $2)",
                &[&source, &crate::time::humantime_now()],
            )?;
            Ok(())
        })
    }

    /// Moves the copy on to `phase` (`done` also notes the time).
    pub(crate) fn copy_set_phase(&self, phase: &str) -> Result<()> {
        self.with(|c| set_phase(c.parts().0, phase))
    }

    /// Inserts or replaces a batch of records, in one transaction.
    pub(crate) fn copy_records(&self, recs: &[Record]) -> Result<()> {
        self.copy_tx(|tx| {
            let st = tx.prepare(
                "INSERT INTO records (reference, type, key, name, owner, shared, teams, emails)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (reference) DO UPDATE SET type = excluded.type,
                     key = excluded.key, name = excluded.name, owner = excluded.owner,
                     shared = excluded.shared, teams = excluded.teams, emails = excluded.emails",
            )?;
            for r in recs {
                tx.execute(&st, &rows::record_params(r, &r.reference().to_string()))?;
            }
            Ok(())
        })
    }

    /// Stores a batch of blobs (kept once) and the last one's key as progress.
    pub(crate) fn copy_blobs(&self, blobs: &[(String, Vec<u8>)]) -> Result<()> {
        self.copy_tx(|tx| {
            let st = tx.prepare(
                "INSERT INTO blobs (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )?;
            for (sha, bytes) in blobs {
                tx.execute(&st, &[sha, bytes])?;
            }
            if let Some((last, _)) = blobs.last() {
                tx.execute("UPDATE copy_progress SET last_blob = $1", &[last])?;
            }
            Ok(())
        })
    }

    /// Inserts a batch of activities with their own ids (rows, child rows and lookups, the
    /// columns the engine's insert writes) and the highest id as progress, in one transaction.
    pub(crate) fn copy_activities(&self, batch: &[CopiedActivity]) -> Result<()> {
        self.copy_tx(|tx| {
            if batch.is_empty() {
                return Ok(());
            }
            insert_batch(tx, batch)?;
            if let Some(last) = batch.iter().map(|a| a.activity.id).max() {
                tx.execute(
                    "UPDATE copy_progress SET last_activity = greatest(last_activity, $1)",
                    &[&big(last)],
                )?;
            }
            Ok(())
        })
    }

    /// Sets smart matching's subject keys of a batch of activities: (key, activity id).
    pub(crate) fn copy_subject_keys(&self, batch: &[(String, u64)]) -> Result<()> {
        self.copy_tx(|tx| {
            let st = tx.prepare("UPDATE activities SET subject_key = $1 WHERE id = $2")?;
            for (k, id) in batch {
                if tx.execute(&st, &[k, &big(*id)])? == 0 {
                    return Err(corrupt(format!(
                        "subject key of activity {id}, which is not in the sled store"
                    )));
                }
            }
            Ok(())
        })
    }

    /// Adds a batch of (Message-ID, activity id) awaiting a parent.
    pub(crate) fn copy_awaiting(&self, batch: &[(String, u64)]) -> Result<()> {
        self.copy_tx(|tx| {
            let st = tx.prepare(
                "INSERT INTO awaiting_parent (message_id, activity_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
            )?;
            for (m, id) in batch {
                tx.execute(&st, &[m, &big(*id)])?;
            }
            Ok(())
        })
    }

    /// Writes the rest of the state (checkpoints, mailbox states, quarantine, alerts, manual
    /// links, rule bindings, outbox, token users), sets the sequences past the copied ids and
    /// moves on to `next`: all in one transaction, so a resumed copy runs it again whole.
    pub(crate) fn copy_state(&self, s: State<'_>, next: &str) -> Result<()> {
        self.with(|c| {
            let (client, stmts) = c.parts();
            let t = PgTx::new(client.transaction()?, stmts);
            for st in s.checkpoints {
                t.put_checkpoint(&st.map_err(from_store)?)?;
            }
            for q in s.quarantine {
                let (e, raw) = q.map_err(from_store)?;
                t.quarantine(&e, &raw)?;
            }
            let mut tx = t.tx.into_inner();
            for m in s.mailboxes {
                let m = m.map_err(from_store)?;
                tx.execute(
                    "INSERT INTO mailbox_state (mailbox, state) VALUES ($1, $2)",
                    &[&m.name, &json(&m)?],
                )?;
            }
            for a in s.alerts {
                let a = a.map_err(from_store)?;
                tx.execute(
                    "INSERT INTO alerts (mailbox, message, level, count, first_at, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &a.mailbox,
                        &a.alert.message,
                        &a.alert.level.as_str(),
                        &big(a.count),
                        &a.first_at,
                        &a.at,
                    ],
                )?;
            }
            for id in s.manual_links {
                tx.execute(
                    "INSERT INTO manual_links (activity_id) VALUES ($1)",
                    &[&big(id.map_err(from_store)?)],
                )?;
            }
            for b in s.bindings {
                let (mailbox, rule, b) = b.map_err(from_store)?;
                tx.execute(
                    "INSERT INTO rule_bindings (mailbox, rule, folder, uidvalidity)
                     VALUES ($1, $2, $3, $4)",
                    &[&mailbox, &rule, &b.folder, &big(b.uidvalidity)],
                )?;
            }
            for e in s.outbox {
                let e = e.map_err(from_store)?;
                tx.execute(
                    "INSERT INTO outbox (activity_id, mailbox, message_id, state, entry)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &big(e.activity),
                        &e.mailbox,
                        &e.message_id,
                        &e.state.as_str(),
                        &json(&e)?,
                    ],
                )?;
            }
            for u in s.token_users {
                tx.execute(
                    "INSERT INTO token_users (user_ref, number, counter) VALUES ($1, $2, $3)",
                    &[&u.user, &big(u.number), &big(u.counter)],
                )?;
            }
            let max_user = s.token_users.iter().map(|u| u.number).max().unwrap_or(0);
            let seqs = [
                (
                    "activity_id_seq",
                    "SELECT max(id) FROM activities",
                    s.counters.activity,
                ),
                (
                    "quarantine_id_seq",
                    "SELECT max(id) FROM quarantine",
                    s.counters.quarantine,
                ),
                (
                    "outbox_uid_seq",
                    "SELECT NULL::bigint",
                    s.counters.outbox_uid,
                ),
                (
                    "token_user_seq",
                    "SELECT NULL::bigint",
                    s.counters.token_users.max(max_user),
                ),
            ];
            for (seq, max_sql, counter) in seqs {
                let max: Option<i64> = tx.query_one(max_sql, &[])?.get(0);
                let last = max.unwrap_or(0).max(big(counter));
                if last > 0 {
                    // The next value handed out is last + 1: after every copied id.
                    tx.execute("SELECT setval($1::text::regclass, $2)", &[&seq, &last])?;
                }
            }
            set_phase(&mut tx, next)?;
            tx.commit()?;
            Ok(())
        })
    }

    // ---- reads for the verification ----------------------------------------------------------

    /// Rows of `sql` (keyset-paged on its first column, a text key), streamed a page at a
    /// time: `sql` takes the previous page's last key as `$1` (NULL for the first).
    fn paged_text<T: Send + 'static>(
        &self,
        sql: &'static str,
        row: fn(&postgres::Row) -> Result<T>,
    ) -> impl Iterator<Item = Result<(String, T)>> + '_ {
        let mut after: Option<String> = None;
        let mut buf: std::collections::VecDeque<(String, T)> = Default::default();
        let mut done = false;
        std::iter::from_fn(move || {
            if buf.is_empty() && !done {
                let rows = self.with(|c| Ok(c.query(sql, &[&after])?));
                match rows {
                    Ok(rows) => {
                        done = rows.len() < 200;
                        for r in &rows {
                            match row(r) {
                                Ok(t) => buf.push_back((r.get(0), t)),
                                Err(e) => {
                                    done = true;
                                    return Some(Err(e));
                                }
                            }
                        }
                        after = buf.back().map(|(k, _)| k.clone());
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
            buf.pop_front().map(Ok)
        })
    }

    /// Every blob (sha256, bytes), in sha256 order.
    pub(crate) fn copy_blobs_iter(&self) -> impl Iterator<Item = Result<(String, Vec<u8>)>> + '_ {
        self.paged_text(
            "SELECT sha256, bytes FROM blobs WHERE $1::text IS NULL OR sha256 > $1 COLLATE \"C\"
             ORDER BY sha256 COLLATE \"C\" LIMIT 200",
            |r| Ok(r.get::<_, Vec<u8>>(1)),
        )
    }

    /// The last value a sequence handed out (0: none yet).
    pub(crate) fn copy_sequence_last(&self, seq: &str) -> Result<u64> {
        let sql = format!("SELECT last_value, is_called FROM {seq}");
        self.with(|c| {
            let r = c.query_one(&sql, &[])?;
            let called: bool = r.get(1);
            Ok(u64::try_from(r.get::<_, i64>(0)).unwrap_or(0) * u64::from(called))
        })
    }

    /// Every mailbox state, named.
    pub(crate) fn copy_mailbox_states(&self) -> Result<Vec<MailboxState>> {
        self.with(|c| {
            c.query("SELECT mailbox, state FROM mailbox_state", &[])?
                .iter()
                .map(|r| {
                    let st: MailboxState = serde_json::from_value(r.get(1))
                        .map_err(|e| corrupt(format!("mailbox_state: {e}")))?;
                    Ok(MailboxState {
                        name: r.get(0),
                        ..st
                    })
                })
                .collect()
        })
    }

    /// Every rule binding: (mailbox, rule, binding).
    pub(crate) fn copy_rule_bindings(&self) -> Result<Vec<(String, String, RuleBinding)>> {
        self.with(|c| {
            c.query(
                "SELECT mailbox, rule, folder, uidvalidity FROM rule_bindings",
                &[],
            )?
            .iter()
            .map(|r| {
                let uv: i64 = r.get(3);
                Ok((
                    r.get(0),
                    r.get(1),
                    RuleBinding {
                        folder: r.get(2),
                        uidvalidity: u32::try_from(uv)
                            .map_err(|_| corrupt("uidvalidity out of range"))?,
                    },
                ))
            })
            .collect()
        })
    }

    /// A query's (text, bigint) rows, for the lookups' verification.
    pub(crate) fn copy_pairs(&self, sql: &str) -> Result<Vec<(String, u64)>> {
        self.with(|c| {
            c.query(sql, &[])?
                .iter()
                .map(|r| Ok((r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0))))
                .collect()
        })
    }

    /// Every Thread-Index key and its activity.
    pub(crate) fn copy_thread_keys(&self) -> Result<Vec<(Vec<u8>, u64)>> {
        self.with(|c| {
            c.query(
                "SELECT thread_key, id FROM activities WHERE thread_key IS NOT NULL",
                &[],
            )?
            .iter()
            .map(|r| Ok((r.get(0), u64::try_from(r.get::<_, i64>(1)).unwrap_or(0))))
            .collect()
        })
    }

    /// Every manual link's activity id.
    pub(crate) fn copy_manual_links(&self) -> Result<Vec<u64>> {
        self.with(|c| super::ids(c, "SELECT activity_id FROM manual_links", &[]))
    }

    /// Every token user: (user, number, counter).
    pub(crate) fn copy_token_users(&self) -> Result<Vec<TokenUser>> {
        self.with(|c| {
            c.query("SELECT user_ref, number, counter FROM token_users", &[])?
                .iter()
                .map(|r| {
                    Ok(TokenUser {
                        user: r.get(0),
                        number: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                        counter: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                    })
                })
                .collect()
        })
    }

    /// Every alert.
    pub(crate) fn copy_alerts(&self) -> Result<Vec<StoredAlert>> {
        self.alerts(usize::MAX).map_err(|e| corrupt(e.to_string()))
    }
}

fn set_phase(c: &mut impl postgres::GenericClient, phase: &str) -> Result<()> {
    let done = (phase == "done").then(crate::time::humantime_now);
    c.execute(
        "UPDATE copy_progress SET phase = $1, finished_at = $2",
        &[&phase, &done],
    )?;
    Ok(())
}

/// A batch of activities as one multi-row statement per table (`unnest` of one array per
/// column): a few round trips per batch instead of several per activity. The columns are
/// the ones [`rows::insert`] writes; the verification reads them back through the engine's
/// own reads, so a column written wrong here shows as a checksum mismatch.
fn insert_batch(tx: &mut Transaction<'_>, batch: &[CopiedActivity]) -> Result<()> {
    insert_activity_rows(tx, batch)?;
    insert_sources(tx, batch)?;
    insert_parties(tx, batch)?;
    let (mut id, mut pos, mut msg) = (Vec::new(), Vec::new(), Vec::new());
    for a in batch.iter().map(|c| &c.activity) {
        for (i, m) in a.references.iter().enumerate() {
            id.push(big(a.id));
            pos.push(i as i32);
            msg.push(m.as_str());
        }
    }
    tx.execute(
        "INSERT INTO activity_references (activity_id, position, message_id)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[])",
        &[&id, &pos, &msg],
    )?;
    let (mut id, mut pos) = (Vec::new(), Vec::new());
    let (mut name, mut mime, mut size, mut sha, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in batch.iter().map(|c| &c.activity) {
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
    tx.execute(
        "INSERT INTO attachments (activity_id, position, name, mime_type, size, sha256, skipped)
         SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::bigint[],
             $6::text[], $7::text[])",
        &[&id, &pos, &name, &mime, &size, &sha, &skipped],
    )?;
    Ok(())
}

fn insert_activity_rows(tx: &mut Transaction<'_>, batch: &[CopiedActivity]) -> Result<()> {
    let acts = || batch.iter().map(|c| &c.activity);
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
    let token_key: Vec<Option<&str>> = batch.iter().map(|c| c.token_key.as_deref()).collect();
    let thread_index: Vec<Option<&str>> = acts().map(|a| a.thread_index.as_deref()).collect();
    let thread_key: Vec<Option<&[u8]>> = batch.iter().map(|c| c.thread_key.as_deref()).collect();
    let method: Vec<Option<&str>> = acts()
        .map(|a| a.correlation.as_ref().map(|c| c.method.as_str()))
        .collect();
    let corr: Vec<Option<i64>> = acts()
        .map(|a| a.correlation.as_ref().map(|c| big(c.activity)))
        .collect();
    let inherits: Vec<bool> = acts().map(|a| a.inherits).collect();
    let tracked_at: Vec<&str> = acts().map(|a| a.tracked_at.as_str()).collect();
    let size: Vec<i64> = acts().map(|a| big(a.size)).collect();
    let body: Vec<&str> = acts().map(|a| a.body_text.as_str()).collect();
    let body_blob: Vec<Option<&str>> = acts().map(|a| a.body_blob.as_deref()).collect();
    let alerts: Vec<serde_json::Value> = acts().map(|a| json(&a.alerts)).collect::<Result<_>>()?;
    tx.execute(
        "INSERT INTO activities (id, dedup_key, direction, subject, message_id, date, date_at,
             regarding, in_reply_to, token, token_key, thread_index, thread_key,
             correlation_method, correlation_activity, inherits, tracked_at, size, body_text,
             body_blob, alerts)
         SELECT i, dk, dir, subj, mid, d, to_timestamp(dat), reg, irt, tok, tk, ti, thk, cm, ca,
             inh, ta, sz, bt, bb, al
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
             $7::float8[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
             $13::bytea[], $14::text[], $15::bigint[], $16::bool[], $17::text[], $18::bigint[],
             $19::text[], $20::text[], $21::jsonb[])
             AS t(i, dk, dir, subj, mid, d, dat, reg, irt, tok, tk, ti, thk, cm, ca, inh, ta, sz,
                  bt, bb, al)",
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
        ],
    )?;
    Ok(())
}

/// Sources, position 0 the first; a source listed twice goes to the later activity, as the
/// engine's insert (`ON CONFLICT … DO UPDATE`) would leave it.
fn insert_sources(tx: &mut Transaction<'_>, batch: &[CopiedActivity]) -> Result<()> {
    type Key<'a> = (&'a str, &'a str, u32, u32);
    let mut rows: std::collections::HashMap<Key<'_>, (i64, i32)> = Default::default();
    for a in batch.iter().map(|c| &c.activity) {
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
    tx.execute(
        "INSERT INTO sources (mailbox, folder, uidvalidity, uid, activity_id, position)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
             $6::int[])
         ON CONFLICT (mailbox, folder, uidvalidity, uid)
         DO UPDATE SET activity_id = excluded.activity_id, position = excluded.position",
        &[&mb, &f, &uv, &uid, &id, &pos],
    )?;
    Ok(())
}

fn insert_parties(tx: &mut Transaction<'_>, batch: &[CopiedActivity]) -> Result<()> {
    let (mut id, mut role, mut pos, mut addr, mut name, mut record, mut records) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for a in batch.iter().map(|c| &c.activity) {
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
                // A text[] per row: carried as JSON (arrays of arrays must be rectangular).
                records.push(json(&p.records)?);
            }
        }
    }
    tx.execute(
        "INSERT INTO parties (activity_id, role, position, address, name, record, records)
         SELECT i, r, p, a, n, rec,
             ARRAY(SELECT jsonb_array_elements_text(recs))
         FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
             $7::jsonb[]) AS t(i, r, p, a, n, rec, recs)",
        &[&id, &role, &pos, &addr, &name, &record, &records],
    )?;
    Ok(())
}
