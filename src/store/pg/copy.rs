//! `store copy --from-sled` on the PostgreSQL side ([`crate::store::copy`] drives it): the
//! copy's progress row, bulk writes that keep the source's ids (a batch per transaction, the
//! progress in the same transaction, so an interrupted copy resumes without duplicates), the
//! sequences set past the copied ids, and whole-table reads for the verification.
//!
//! The progress lives in `copy_progress` (one row), created by the copy itself rather than by
//! a schema migration: it is bookkeeping of one admin command, not part of the product's data.

use super::bulk::NewActivity;
use super::db::Db;
use super::rows::{self, big};
use super::{corrupt, PgError, PgStore, PgTx};
use crate::model::{QuarantineEntry, Record};
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

/// Writes every activity's synced fields (the store copy's state phase).
fn copy_fields(
    tx: &mut postgres::Transaction<'_>,
    fields: &mut dyn Iterator<Item = crate::store::Result<(u64, crate::model::FieldState)>>,
) -> Result<()> {
    for f in fields {
        let (id, st) = f.map_err(from_store)?;
        tx.execute(
            "INSERT INTO activity_fields (activity_id, read, follow_up, importance,
                 categories, copies)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &big(id),
                &st.crm.read,
                &st.crm.follow_up,
                &st.crm.importance.as_str(),
                &st.crm.categories,
                &json(&st.copies)?,
            ],
        )?;
    }
    Ok(())
}

/// The rest of the state, written in one transaction with the phase after it.
pub(crate) struct State<'a> {
    pub checkpoints: &'a mut dyn Iterator<Item = crate::store::Result<FolderState>>,
    pub mailboxes: &'a mut dyn Iterator<Item = crate::store::Result<MailboxState>>,
    pub quarantine: &'a mut dyn Iterator<Item = crate::store::Result<(QuarantineEntry, Vec<u8>)>>,
    pub alerts: &'a mut dyn Iterator<Item = crate::store::Result<StoredAlert>>,
    pub audit: &'a mut dyn Iterator<Item = crate::store::Result<crate::model::AuditEntry>>,
    pub manual_links: &'a mut dyn Iterator<Item = crate::store::Result<u64>>,
    pub untracked: &'a mut dyn Iterator<Item = crate::store::Result<u64>>,
    pub fields: &'a mut dyn Iterator<Item = crate::store::Result<(u64, crate::model::FieldState)>>,
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
    fn copy_tx<T>(&self, f: impl FnOnce(&mut Db<'_, Transaction<'_>>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let (client, stmts) = c.parts();
            let mut tx = client.transaction()?;
            let out = f(&mut Db::new(&mut tx, stmts))?;
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
        const TABLES: [&str; 11] = [
            "activities",
            "audit",
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
            for r in recs {
                tx.execute(
                    rows::UPSERT_RECORD,
                    &rows::record_params(r, &r.reference().to_string()),
                )?;
            }
            Ok(())
        })
    }

    /// Stores a batch of blobs (kept once) and the last one's key as progress.
    pub(crate) fn copy_blobs(&self, blobs: &[(String, Vec<u8>)]) -> Result<()> {
        self.copy_tx(|tx| {
            for (sha, bytes) in blobs {
                tx.execute(rows::INSERT_BLOB, &[sha, bytes])?;
            }
            if let Some((last, _)) = blobs.last() {
                tx.execute("UPDATE copy_progress SET last_blob = $1", &[last])?;
            }
            Ok(())
        })
    }

    /// Inserts a batch of activities with their own ids (rows, child rows and lookups, the
    /// columns the engine's insert writes) and the highest id as progress, in one transaction.
    pub(crate) fn copy_activities(&self, batch: &[NewActivity]) -> Result<()> {
        self.copy_tx(|tx| {
            if batch.is_empty() {
                return Ok(());
            }
            super::bulk::insert(tx, batch)?;
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
            let st = "UPDATE activities SET subject_key = $1 WHERE id = $2";
            for (k, id) in batch {
                if tx.execute(st, &[k, &big(*id)])? == 0 {
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
            let st = "INSERT INTO awaiting_parent (message_id, activity_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING";
            for (m, id) in batch {
                tx.execute(st, &[m, &big(*id)])?;
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
            for e in s.audit {
                t.append_audit(&e.map_err(from_store)?)?;
            }
            let mut tx = t.into_inner()?;
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
            for id in s.untracked {
                tx.execute(
                    "INSERT INTO untracked (activity_id) VALUES ($1)",
                    &[&big(id.map_err(from_store)?)],
                )?;
            }
            copy_fields(&mut tx, s.fields)?;
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
    /// Every audit entry, by activity, oldest first (as sled keeps them).
    pub(crate) fn copy_audit(&self) -> Result<Vec<crate::model::AuditEntry>> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT activity_id, at, actor, action, field, old, new FROM audit
                 ORDER BY activity_id, seq",
                &[],
            )?)
        })?;
        rows.iter().map(super::product::audit_entry).collect()
    }

    /// Every activity's synced fields, by activity.
    pub(crate) fn copy_fields(&self) -> Result<Vec<(u64, crate::model::FieldState)>> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT read, follow_up, importance, categories, copies, activity_id
                 FROM activity_fields ORDER BY activity_id",
                &[],
            )?)
        })?;
        rows.iter()
            .map(|r| Ok((r.get::<_, i64>(5) as u64, super::rows::field_state(r)?)))
            .collect()
    }

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
