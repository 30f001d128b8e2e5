//! What the product asks of its store besides the tracking rules (records, listings, folder
//! and mailbox state, alerts, quarantine, links, bindings, blobs, the outbox), on the tables
//! of [`super::schema`], with the same names and types as sled's so that
//! [`crate::store::Store`] dispatches to either. Every method returns the product's
//! [`StoreError`]; the batch and the outgoing activity go through the same rules
//! ([`crate::track::batch`]) inside [`Engine::transaction`], as on sled.

use super::rows::{self, big};
use super::{corrupt, load_record, PgError, PgStore, PgTx};
use crate::model::{Activity, Alert, AlertLevel, Direction, Draft, Record, RecordRef, Source};
use crate::store::{
    BatchOutcome, FolderState, MailboxState, OutboxEntry, QuarantineEntry, RuleBinding, SendState,
    StoreError, StoredAlert, ALERT_MAX_AGE_DAYS, MAX_ALERTS, OUTBOX_FOLDER,
};
use crate::track::batch::{self, apply_activity, BatchItem, Committed};
use crate::track::fields;
use crate::track::tx::{Engine, Lookups};
use postgres::Row;

type Result<T> = std::result::Result<T, StoreError>;

/// Rows read per round trip by the streaming iterators.
const PAGE: i64 = 200;

fn json<T: serde::Serialize>(v: &T) -> std::result::Result<serde_json::Value, PgError> {
    serde_json::to_value(v).map_err(|e| corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> std::result::Result<T, PgError> {
    serde_json::from_value(v).map_err(|e| corrupt(format!("{what}: {e}")))
}

fn u32_of(n: i64, what: &str) -> std::result::Result<u32, PgError> {
    u32::try_from(n).map_err(|_| corrupt(format!("{what} {n} is out of range")))
}

fn u64_of(n: i64, what: &str) -> std::result::Result<u64, PgError> {
    u64::try_from(n).map_err(|_| corrupt(format!("{what} {n} is out of range")))
}

const RECORD_COLUMNS: &str = "type, key, name, emails, owner, shared, teams";

const CHECKPOINT_COLUMNS: &str = "mailbox, folder, uidvalidity, last_uid, uid_next, messages, \
     last_sync, rule, regarding, synced_uid_next, highest_modseq, flags_scanned_at";

fn checkpoint_of(r: &Row) -> std::result::Result<FolderState, PgError> {
    Ok(FolderState {
        mailbox: r.get(0),
        folder: r.get(1),
        uidvalidity: u32_of(r.get(2), "uidvalidity")?,
        last_uid: u32_of(r.get(3), "last_uid")?,
        uid_next: u32_of(r.get(4), "uid_next")?,
        messages: u32_of(r.get(5), "messages")?,
        last_sync: r.get(6),
        rule: r.get(7),
        regarding: r.get(8),
        synced_uid_next: u32_of(r.get(9), "synced_uid_next")?,
        highest_modseq: u64_of(r.get(10), "highest_modseq")?,
        flags_scanned_at: u64_of(r.get(11), "flags_scanned_at")?,
    })
}

const QUARANTINE_COLUMNS: &str = "id, mailbox, folder, uidvalidity, uid, reason, size, at";

fn quarantine_of(r: &Row) -> std::result::Result<QuarantineEntry, PgError> {
    Ok(QuarantineEntry {
        id: u64_of(r.get(0), "quarantine id")?,
        source: Source {
            mailbox: r.get(1),
            folder: r.get(2),
            uidvalidity: u32_of(r.get(3), "uidvalidity")?,
            uid: u32_of(r.get(4), "uid")?,
        },
        reason: r.get(5),
        size: u64_of(r.get(6), "size")?,
        at: r.get(7),
    })
}

fn alert_of(r: &Row) -> std::result::Result<StoredAlert, PgError> {
    let level: String = r.get(2);
    Ok(StoredAlert {
        mailbox: r.get(0),
        alert: Alert {
            message: r.get(1),
            level: AlertLevel::from_text(&level)
                .ok_or_else(|| corrupt(format!("unknown alert level {level:?}")))?,
        },
        count: u64_of(r.get(3), "alert count")?,
        first_at: r.get(4),
        at: r.get(5),
    })
}

impl PgTx<'_> {
    /// The outbox entry of a queued send, in the transaction that creates its activity.
    fn put_outbox(&self, e: &OutboxEntry) -> std::result::Result<(), PgError> {
        let entry = json(e)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO outbox (activity_id, mailbox, message_id, state, entry)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &big(e.activity),
                    &e.mailbox,
                    &e.message_id,
                    &e.state.as_str(),
                    &entry,
                ],
            )?;
            Ok(())
        })
    }
}

impl PgStore {
    // ---- meta ------------------------------------------------------------------------------

    pub(crate) fn schema_version(&self) -> Result<u32> {
        let v = self.with(|c| super::schema::version(c.parts().0))?;
        Ok(u32::try_from(v).unwrap_or(0))
    }

    /// A committed transaction is durable already.
    pub(crate) fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// The database's size (`pg_database_size`), for the metrics; 0 when it cannot be read.
    pub(crate) fn disk_usage(&self) -> u64 {
        self.with(|c| {
            let row = c.query_one("SELECT pg_database_size(current_database())", &[])?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .unwrap_or(0)
    }

    // ---- records ---------------------------------------------------------------------------

    /// Inserts or replaces records, all or none.
    pub(crate) fn put_records(&self, recs: &[Record]) -> Result<()> {
        Engine::transaction(self, |tx| {
            tx.with(|c| {
                for r in recs {
                    c.execute(
                        rows::UPSERT_RECORD,
                        &rows::record_params(r, &r.reference().to_string()),
                    )?;
                }
                Ok(())
            })
        })?;
        Ok(())
    }

    pub(crate) fn record(&self, r: &RecordRef) -> Result<Option<Record>> {
        Ok(self.with(|c| load_record(c, &r.to_string()))?)
    }

    /// All records, optionally of one type, in `type:key` order (bytewise, as sled's keys).
    pub(crate) fn records(&self, rtype: Option<&str>) -> Result<Vec<Record>> {
        self.records_iter(rtype).collect()
    }

    /// Every record (of `rtype`, if given) in `type:key` order, a page at a time.
    pub(crate) fn records_iter<'a>(
        &'a self,
        rtype: Option<&'a str>,
    ) -> impl Iterator<Item = Result<Record>> + Send + 'a {
        let page = move |after: &Option<String>| -> Result<Vec<(String, Record)>> {
            let sql = format!(
                "SELECT {RECORD_COLUMNS}, reference FROM records
                 WHERE ($1::text IS NULL OR type = $1)
                   AND ($2::text IS NULL OR reference > $2 COLLATE \"C\")
                 ORDER BY reference COLLATE \"C\" LIMIT {PAGE}"
            );
            let rows = self.with(|c| Ok(c.query(&sql, &[&rtype, after])?))?;
            Ok(rows
                .iter()
                .map(|r| (r.get(7), rows::record_of(r)))
                .collect())
        };
        paged(page)
    }

    // ---- activities ------------------------------------------------------------------------

    pub(crate) fn activity(&self, id: u64) -> Result<Option<Activity>> {
        Ok(Lookups::activity(self, id)?)
    }

    /// The activities of `ids` that exist, in that order, in one snapshot and a few
    /// statements (a timeline page: not five statements per activity).
    pub(crate) fn activities_by_id(&self, ids: &[u64]) -> Result<Vec<Activity>> {
        Ok(Lookups::activities(self, ids)?)
    }

    /// The ids of the activities regarding `r` or with `r` as a party, newest first: at most
    /// `limit` below `before` (keyset paging over `activities_regarding` and
    /// `parties_record_activity`).
    pub(crate) fn timeline_ids(
        &self,
        r: &RecordRef,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>> {
        let before = big(before.unwrap_or(i64::MAX as u64));
        Ok(self.with(|c| {
            super::ids(
                c,
                "SELECT id FROM (
                     (SELECT id FROM activities WHERE regarding = $1 AND id < $2
                      ORDER BY id DESC LIMIT $3)
                     UNION
                     (SELECT DISTINCT activity_id FROM parties WHERE record = $1 AND activity_id < $2
                      ORDER BY activity_id DESC LIMIT $3)
                 ) t ORDER BY id DESC LIMIT $3",
                &[&r.to_string(), &before, &(limit as i64)],
            )
        })?)
    }

    pub(crate) fn activities(&self, regarding: Option<&RecordRef>) -> Result<Vec<Activity>> {
        match regarding {
            None => self.activities_iter().collect(),
            Some(r) => {
                let ids = self.with(|c| {
                    super::ids(
                        c,
                        "SELECT id FROM activities WHERE regarding = $1 ORDER BY id",
                        &[&r.to_string()],
                    )
                })?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(a) = self.activity(id)? {
                        out.push(a);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Every activity in id order, a page of ids at a time.
    pub(crate) fn activities_iter(&self) -> impl Iterator<Item = Result<Activity>> + Send + '_ {
        let page = move |after: &Option<i64>| -> Result<Vec<(i64, Activity)>> {
            let ids = self.with(|c| {
                let sql = format!(
                    "SELECT id FROM activities WHERE $1::bigint IS NULL OR id > $1
                     ORDER BY id LIMIT {PAGE}"
                );
                Ok(c.query(&sql, &[after])?)
            })?;
            let mut out = Vec::with_capacity(ids.len());
            for r in ids {
                let id: i64 = r.get(0);
                if let Some(a) = self.activity(u64_of(id, "activity id")?)? {
                    out.push((id, a));
                }
            }
            Ok(out)
        };
        paged(page)
    }

    /// The activity of the same message in the other direction (sent copy ↔ received copy).
    pub(crate) fn counterpart(&self, a: &Activity) -> Result<Option<u64>> {
        let other = match a.direction {
            Direction::Incoming => Direction::Outgoing,
            Direction::Outgoing => Direction::Incoming,
        };
        Ok(self.activity_by_dedup(&a.dedup_key, other)?)
    }

    /// How many activities are stored (0, with a warning, when it cannot be read).
    pub(crate) fn activity_count(&self) -> usize {
        self.count("activities")
    }

    fn count(&self, table: &str) -> usize {
        let sql = format!("SELECT count(*) FROM {table}");
        self.with(|c| Ok(c.query_one(&sql, &[])?.get::<_, i64>(0)))
            .map(|n| usize::try_from(n).unwrap_or(0))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot count the {table} in PostgreSQL");
                0
            })
    }

    pub(crate) fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        Ok(Lookups::activity_by_source(self, s)?)
    }

    /// Records having this address (compared case-insensitively), in `type:key` order.
    pub(crate) fn by_email(&self, email: &str) -> Vec<Record> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM records
             WHERE EXISTS (SELECT 1 FROM unnest(emails) e WHERE lower(e) = $1)
             ORDER BY reference COLLATE \"C\""
        );
        self.records_where(&sql, &[&email.to_ascii_lowercase()])
    }

    /// [`PgStore::by_email`] of several addresses in one statement; an address no record has
    /// comes back with none.
    pub(crate) fn by_emails(&self, emails: &[&str]) -> Vec<(String, Vec<Record>)> {
        let lower: Vec<String> = emails.iter().map(|e| e.to_ascii_lowercase()).collect();
        let sql = format!(
            "SELECT DISTINCT ON (m.e, r.reference COLLATE \"C\") m.e, {RECORD_COLUMNS}
             FROM records r CROSS JOIN LATERAL unnest(r.emails) AS x(e)
                 JOIN unnest($1::text[]) AS m(e) ON lower(x.e) = m.e
             ORDER BY m.e, r.reference COLLATE \"C\""
        );
        let mut found: std::collections::HashMap<String, Vec<Record>> =
            lower.iter().map(|e| (e.clone(), Vec::new())).collect();
        let rows = self.with(|c| Ok(c.query(&sql, &[&lower])?));
        match rows {
            Ok(rows) => {
                for r in rows {
                    let e: String = r.get(0);
                    let rec = Record {
                        rtype: r.get(1),
                        key: r.get(2),
                        name: r.get(3),
                        emails: r.get(4),
                        owner: r.get(5),
                        shared: r.get(6),
                        teams: r.get(7),
                    };
                    found.entry(e).or_default().push(rec);
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking up records by address failed"),
        }
        emails
            .iter()
            .zip(lower)
            .map(|(asked, l)| {
                (
                    asked.to_string(),
                    found.get(&l).cloned().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Records of `rtype` whose name equals `name`, case-insensitively.
    pub(crate) fn by_name(&self, rtype: &str, name: &str) -> Vec<Record> {
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE type = $1 AND lower(name) = $2
             ORDER BY reference COLLATE \"C\""
        );
        self.records_where(&sql, &[&rtype, &name.to_lowercase()])
    }

    /// A failed read finds nothing, as on sled (the lookups resolve parties: best effort).
    fn records_where(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Vec<Record> {
        self.with(|c| Ok(c.query(sql, params)?.iter().map(rows::record_of).collect()))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "record lookup could not read PostgreSQL");
                Vec::new()
            })
    }

    // ---- folders, mailboxes, alerts, quarantine --------------------------------------------

    pub(crate) fn folder_state(&self, mailbox: &str, folder: &str) -> Result<Option<FolderState>> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints WHERE mailbox = $1 AND folder = $2"
        );
        Ok(self.with(|c| {
            c.query_opt(&sql, &[&mailbox, &folder])?
                .as_ref()
                .map(checkpoint_of)
                .transpose()
        })?)
    }

    /// Every checkpoint, by mailbox and folder (bytewise, as sled's keys).
    pub(crate) fn folder_states(&self) -> Result<Vec<FolderState>> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM checkpoints
             ORDER BY mailbox COLLATE \"C\", folder COLLATE \"C\""
        );
        Ok(self.with(|c| c.query(&sql, &[])?.iter().map(checkpoint_of).collect())?)
    }

    /// Writes a folder checkpoint on its own (the batch writes it in its transaction).
    pub(crate) fn put_folder_state(&self, st: &FolderState) -> Result<()> {
        use crate::track::tx::BatchTx;
        Ok(self.fenced(&st.mailbox, |tx| tx.put_checkpoint(st))?)
    }

    pub(crate) fn mailbox_state(&self, name: &str) -> Result<MailboxState> {
        let row = self.with(|c| {
            Ok(c.query_opt(
                "SELECT state FROM mailbox_state WHERE mailbox = $1",
                &[&name],
            )?)
        })?;
        let st = match row {
            Some(r) => from_json::<MailboxState>("mailbox_state", r.get(0))?,
            None => MailboxState::default(),
        };
        Ok(MailboxState {
            name: name.into(),
            ..st
        })
    }

    pub(crate) fn put_mailbox_state(&self, st: &MailboxState) -> Result<()> {
        let state = json(st)?;
        self.with(|c| {
            c.execute(
                "INSERT INTO mailbox_state (mailbox, state) VALUES ($1, $2)
                 ON CONFLICT (mailbox) DO UPDATE SET state = excluded.state",
                &[&st.name, &state],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    /// Raises an alert and prunes the mailbox's alerts (see `MAX_ALERTS`).
    pub(crate) fn add_alert(&self, mailbox: &str, alert: Alert) -> Result<()> {
        use crate::track::tx::BatchTx;
        let at = crate::time::humantime_now();
        Engine::transaction(self, |tx| tx.raise_alert(mailbox, &alert, &at))?;
        self.prune_alerts(mailbox)
    }

    /// A mailbox keeps its `MAX_ALERTS` most recently raised alerts, none older than
    /// `ALERT_MAX_AGE_DAYS` (the times are compared as sled compares them: parsed).
    fn prune_alerts(&self, mailbox: &str) -> Result<()> {
        let oldest = crate::time::unix_now() - ALERT_MAX_AGE_DAYS * 86_400;
        self.with(|c| {
            let rows = c.query(
                "SELECT message, at FROM alerts WHERE mailbox = $1",
                &[&mailbox],
            )?;
            let mut kept: Vec<(i64, String)> = Vec::new();
            let mut gone: Vec<String> = Vec::new();
            for r in rows {
                let at = crate::time::parse_date(r.get(1));
                match at < oldest {
                    true => gone.push(r.get(0)),
                    false => kept.push((at, r.get(0))),
                }
            }
            if kept.len() > MAX_ALERTS {
                kept.sort();
                let n = kept.len() - MAX_ALERTS;
                gone.extend(kept.drain(..n).map(|(_, m)| m));
            }
            if !gone.is_empty() {
                c.execute(
                    "DELETE FROM alerts WHERE mailbox = $1 AND message = ANY($2)",
                    &[&mailbox, &gone],
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The `n` most recently raised alerts, newest first.
    pub(crate) fn alerts(&self, n: usize) -> Result<Vec<StoredAlert>> {
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self.with(|c| {
            c.query(
                "SELECT mailbox, message, level, count, first_at, at FROM alerts
                 ORDER BY at DESC LIMIT $1",
                &[&limit],
            )?
            .iter()
            .map(alert_of)
            .collect()
        })?)
    }

    pub(crate) fn quarantine(&self) -> Result<Vec<QuarantineEntry>> {
        let sql = format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine ORDER BY id");
        Ok(self.with(|c| c.query(&sql, &[])?.iter().map(quarantine_of).collect())?)
    }

    pub(crate) fn quarantine_entry(&self, id: u64) -> Result<Option<QuarantineEntry>> {
        let sql = format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = $1");
        Ok(self.with(|c| {
            c.query_opt(&sql, &[&big(id)])?
                .as_ref()
                .map(quarantine_of)
                .transpose()
        })?)
    }

    pub(crate) fn quarantine_remove(&self, id: u64) -> Result<bool> {
        let n =
            self.with(|c| Ok(c.execute("DELETE FROM quarantine WHERE id = $1", &[&big(id)])?))?;
        Ok(n > 0)
    }

    pub(crate) fn quarantine_raw(&self, id: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.with(|c| {
            Ok(
                c.query_opt("SELECT raw FROM quarantine WHERE id = $1", &[&big(id)])?
                    .map(|r| r.get(0)),
            )
        })?)
    }

    pub(crate) fn quarantine_count(&self) -> usize {
        self.count("quarantine")
    }

    // ---- links, bindings -------------------------------------------------------------------

    /// Sets an activity's regarding by hand and remembers that it was by hand, in one
    /// transaction. `false` when there is no such activity.
    /// Marks activity `id` untracked ([`batch::untrack`]).
    pub(crate) fn untrack(&self, id: u64, actor: &str) -> Result<Option<bool>> {
        let at = crate::time::humantime_now();
        Ok(Engine::transaction(self, |tx| {
            batch::untrack(tx, id, actor, &at)
        })?)
    }

    /// The UIDs of a folder (under `uidvalidity`) that activities were tracked from, sorted.
    pub(crate) fn tracked_uids(
        &self,
        mailbox: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT uid FROM sources WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3
                 ORDER BY uid",
                &[&mailbox, &folder, &big(uidvalidity)],
            )?)
        })?;
        Ok(rows
            .iter()
            .map(|r| u32_of(r.get(0), "uid"))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Applies a folder's flag scan and moves its checkpoint, in one transaction fenced by the
    /// mailbox's lease ([`fields::apply_scan`]).
    pub(crate) fn apply_flag_scan(
        &self,
        found: &[(Source, Vec<String>)],
        mb: &crate::config::MailboxConfig,
        cp: &FolderState,
    ) -> Result<fields::ScanOutcome> {
        use crate::track::tx::BatchTx;
        let at = crate::time::humantime_now();
        let actor = format!("mailbox:{}", mb.name);
        let k = mb.crm.tracked_keyword.as_deref();
        Ok(self.fenced(&cp.mailbox, |tx| {
            let out = fields::apply_scan(tx, found, &mb.field_sync, k, &actor, &at)?;
            tx.put_checkpoint(cp)?;
            Ok(out)
        })?)
    }

    /// Records that the server took `pushes` ([`fields::record_pushed`]).
    pub(crate) fn record_pushed(&self, pushes: &[fields::Push]) -> Result<()> {
        if pushes.is_empty() {
            return Ok(());
        }
        Ok(Engine::transaction(self, |tx| {
            fields::record_pushed(tx, pushes)
        })?)
    }

    /// Sets an activity's fields in the CRM ([`fields::set_fields`]).
    pub(crate) fn set_fields(
        &self,
        id: u64,
        change: &fields::FieldChange,
        sync: &crate::config::FieldSync,
        actor: &str,
    ) -> Result<Option<Vec<fields::Push>>> {
        let at = crate::time::humantime_now();
        Ok(Engine::transaction(self, |tx| {
            fields::set_fields(tx, id, change, sync, actor, &at)
        })?)
    }

    /// An activity's synced fields, if they were ever seen.
    pub(crate) fn field_state(&self, id: u64) -> Result<Option<crate::model::FieldState>> {
        Ok(self.with(|c| super::rows::load_field_state(c, id))?)
    }

    /// Deletes activity `id` ([`batch::delete`]) and, in the same transaction, the blobs no
    /// other activity or outgoing message uses; `None` when there is no such activity.
    pub(crate) fn delete_activity(
        &self,
        id: u64,
        subject_key: Option<&str>,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Option<crate::store::Deleted>> {
        let at = crate::time::humantime_now();
        Ok(Engine::transaction(self, |tx| {
            let Some(a) = batch::delete(tx, id, subject_key, actor, reason, &at)? else {
                return Ok(None);
            };
            let shas: Vec<String> = crate::store::blobs_of(&a).into_iter().collect();
            let deleted = tx.with(|c| {
                Ok(c.execute(
                    "DELETE FROM blobs b WHERE b.sha256 = ANY($1)
                       AND NOT EXISTS (SELECT 1 FROM attachments t WHERE t.sha256 = b.sha256)
                       AND NOT EXISTS (SELECT 1 FROM activities x WHERE x.body_blob = b.sha256)
                       AND NOT EXISTS (SELECT 1 FROM outbox o
                                       WHERE o.entry->>'raw_sha256' = b.sha256)",
                    &[&shas],
                )?)
            })? as u32;
            Ok(Some(crate::store::Deleted {
                blobs_deleted: deleted,
                blobs_kept: shas.len() as u32 - deleted,
            }))
        })?)
    }

    /// The activities untracked, by id.
    pub(crate) fn untracked_ids(&self) -> Result<Vec<u64>> {
        let rows =
            self.with(|c| Ok(c.query("SELECT activity_id FROM untracked ORDER BY 1", &[])?))?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    /// Removes audit entries older than `before` (RFC 3339 UTC): how many.
    pub(crate) fn prune_audit(&self, before: &str) -> Result<u64> {
        Ok(self.with(|c| Ok(c.execute("DELETE FROM audit WHERE at < $1", &[&before])?))?)
    }

    /// The audit trail of activity `id`, newest first. It outlives the activity.
    pub(crate) fn audit(&self, id: u64) -> Result<Vec<crate::model::AuditEntry>> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT activity_id, at, actor, action, field, old, new FROM audit
                 WHERE activity_id = $1 ORDER BY seq DESC",
                &[&big(id)],
            )?)
        })?;
        Ok(rows
            .iter()
            .map(audit_entry)
            .collect::<std::result::Result<_, _>>()?)
    }

    pub(crate) fn link_by_hand(&self, id: u64, r: &RecordRef, actor: &str) -> Result<bool> {
        let regarding = r.to_string();
        Ok(Engine::transaction(self, |tx| {
            let found = batch::relink(tx, id, Some(&regarding), actor)?;
            if found {
                tx.with(|c| {
                    c.execute(
                        "INSERT INTO manual_links (activity_id) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[&big(id)],
                    )?;
                    Ok(())
                })?;
            }
            Ok(found)
        })?)
    }

    pub(crate) fn relink(&self, id: u64, regarding: Option<&str>, actor: &str) -> Result<bool> {
        Ok(Engine::transaction(self, |tx| {
            batch::relink(tx, id, regarding, actor)
        })?)
    }

    /// Activities linked by hand with a source in `mailbox`/`folder`, and their UID there.
    pub(crate) fn manual_links_in(&self, mailbox: &str, folder: &str) -> Result<Vec<(u64, u32)>> {
        Ok(self.with(|c| {
            c.query(
                "SELECT DISTINCT ON (m.activity_id) m.activity_id, s.uid
                 FROM manual_links m JOIN sources s ON s.activity_id = m.activity_id
                 WHERE s.mailbox = $1 AND s.folder = $2
                 ORDER BY m.activity_id, s.position",
                &[&mailbox, &folder],
            )?
            .iter()
            .map(|r| Ok((u64_of(r.get(0), "activity id")?, u32_of(r.get(1), "uid")?)))
            .collect()
        })?)
    }

    pub(crate) fn clear_manual_link(&self, id: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "DELETE FROM manual_links WHERE activity_id = $1",
                &[&big(id)],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    pub(crate) fn rule_binding(&self, mailbox: &str, rule: &str) -> Result<Option<RuleBinding>> {
        Ok(self.with(|c| {
            c.query_opt(
                "SELECT folder, uidvalidity FROM rule_bindings WHERE mailbox = $1 AND rule = $2",
                &[&mailbox, &rule],
            )?
            .map(|r| {
                Ok(RuleBinding {
                    folder: r.get(0),
                    uidvalidity: u32_of(r.get(1), "uidvalidity")?,
                })
            })
            .transpose()
        })?)
    }

    pub(crate) fn put_rule_binding(
        &self,
        mailbox: &str,
        rule: &str,
        b: &RuleBinding,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO rule_bindings (mailbox, rule, folder, uidvalidity)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (mailbox, rule) DO UPDATE SET folder = excluded.folder,
                     uidvalidity = excluded.uidvalidity",
                &[&mailbox, &rule, &b.folder, &big(b.uidvalidity)],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    /// Moves a folder's checkpoint to its new name (replacing one there), in one transaction.
    pub(crate) fn rename_folder_state(&self, mailbox: &str, from: &str, to: &str) -> Result<()> {
        self.fenced(mailbox, |tx| {
            tx.with(|c| {
                let moved = c.query_opt(
                    "SELECT 1 FROM checkpoints WHERE mailbox = $1 AND folder = $2",
                    &[&mailbox, &from],
                )?;
                if moved.is_some() {
                    c.execute(
                        "DELETE FROM checkpoints WHERE mailbox = $1 AND folder = $2",
                        &[&mailbox, &to],
                    )?;
                    c.execute(
                        "UPDATE checkpoints SET folder = $3 WHERE mailbox = $1 AND folder = $2",
                        &[&mailbox, &from, &to],
                    )?;
                }
                Ok(())
            })
        })?;
        Ok(())
    }

    // ---- late correlation ------------------------------------------------------------------

    /// Late correlation ([`crate::track::correlate::recorrelate_ids`]).
    pub(crate) fn recorrelate_ids(
        &self,
        ids: &[u64],
        writer: &crate::model::Writer,
        smart: Option<&crate::token::TokenFormat>,
    ) -> Result<u32> {
        Ok(crate::track::correlate::recorrelate_ids(
            self, ids, writer, smart,
        )?)
    }

    // ---- blobs -----------------------------------------------------------------------------

    /// Stores a blob under its sha256, once (the `blobs` table is shared by every activity and
    /// outgoing message, so one database backup holds everything).
    pub(crate) fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(rows::INSERT_BLOB, &[&sha256, &bytes])?;
            Ok(())
        })?;
        Ok(())
    }

    pub(crate) fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.with(|c| {
            Ok(
                c.query_opt("SELECT bytes FROM blobs WHERE sha256 = $1", &[&sha256])?
                    .map(|r| r.get(0)),
            )
        })?)
    }

    // ---- the batch transaction -------------------------------------------------------------

    /// Writes one batch and the folder checkpoint atomically ([`batch::apply_batch`]).
    pub(crate) fn commit_batch(
        &self,
        items: &[BatchItem],
        checkpoint: &FolderState,
        alerts_mailbox: &str,
    ) -> Result<Committed> {
        let at = crate::time::humantime_now();
        let outcome = self.fenced(&checkpoint.mailbox, |tx| {
            batch::apply_batch(tx, items, checkpoint, &at, alerts_mailbox)
        })?;
        let raised_alerts = items
            .iter()
            .any(|i| matches!(i, BatchItem::Tracked(d) if !d.activity.alerts.is_empty()));
        if raised_alerts {
            self.prune_alerts(alerts_mailbox)?;
        }
        Ok(outcome)
    }

    // ---- the outbox ------------------------------------------------------------------------

    /// Writes a new outgoing activity and its outbox entry in one transaction.
    pub(crate) fn enqueue_outgoing(&self, draft: &Draft, entry: &OutboxEntry) -> Result<u64> {
        let at = crate::time::humantime_now();
        let id = Engine::transaction(self, |tx| {
            let mut out = BatchOutcome::default();
            let mut created = Vec::new();
            apply_activity(tx, draft, &at, &entry.mailbox, &mut out, &mut created)?;
            let Some(a) = created.first() else {
                // Aborts: a merged copy writes nothing either.
                return Err(PgError::NotFound(format!(
                    "message {} is already tracked: nothing queued",
                    entry.message_id
                )));
            };
            let mut e = entry.clone();
            e.activity = a.id;
            tx.put_outbox(&e)?;
            Ok(a.id)
        })?;
        Ok(id)
    }

    /// A fresh pseudo source for an activity created in the CRM (its UID from a sequence).
    pub(crate) fn outbox_source(&self, mailbox: &str) -> Result<Source> {
        let n = self.with(|c| {
            Ok(c.query_one("SELECT nextval('outbox_uid_seq')", &[])?
                .get::<_, i64>(0))
        })?;
        let n = u64::try_from(n).unwrap_or(1);
        Ok(Source {
            mailbox: mailbox.to_string(),
            folder: OUTBOX_FOLDER.to_string(),
            uidvalidity: 0,
            uid: u32::try_from(n % u64::from(u32::MAX)).unwrap_or(u32::MAX),
        })
    }

    /// The next tracking token numbers of `user`: its user number (dense, from a sequence,
    /// taken on its first send) and its counter, in a row of its own (writers of different
    /// users never wait on each other).
    pub(crate) fn next_token_numbers(&self, user: &str) -> Result<(u32, u64)> {
        let (u, c) = Engine::transaction(self, |tx| {
            tx.with(|c| {
                let bumped = c.query_opt(
                    "UPDATE token_users SET counter = counter + 1 WHERE user_ref = $1
                     RETURNING number, counter",
                    &[&user],
                )?;
                let row = match bumped {
                    Some(r) => r,
                    None => c.query_one(
                        "INSERT INTO token_users (user_ref, number, counter)
                         VALUES ($1, nextval('token_user_seq'), 1) RETURNING number, counter",
                        &[&user],
                    )?,
                };
                Ok((row.get::<_, i64>(0), row.get::<_, i64>(1)))
            })
        })?;
        Ok((
            u32::try_from(u).unwrap_or(u32::MAX),
            u64_of(c, "token counter")?,
        ))
    }

    pub(crate) fn outbox_entry(&self, activity: u64) -> Result<Option<OutboxEntry>> {
        let row = self.with(|c| {
            Ok(c.query_opt(
                "SELECT entry FROM outbox WHERE activity_id = $1",
                &[&big(activity)],
            )?)
        })?;
        Ok(row.map(|r| from_json("outbox", r.get(0))).transpose()?)
    }

    /// Every entry, oldest first.
    pub(crate) fn outbox_entries(&self) -> Result<Vec<OutboxEntry>> {
        let rows =
            self.with(|c| Ok(c.query("SELECT entry FROM outbox ORDER BY activity_id", &[])?))?;
        Ok(rows
            .into_iter()
            .map(|r| from_json("outbox", r.get(0)))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Replaces an entry (it must exist); committed, so durable, before the caller acts.
    /// Claiming an entry for a send (`sending`) is fenced: only the owner of the mailbox's
    /// lease sends, so a message goes out once across agents and take-overs.
    pub(crate) fn put_outbox_entry(&self, e: &OutboxEntry) -> Result<()> {
        let entry = json(e)?;
        let sql = "UPDATE outbox SET mailbox = $2, message_id = $3, state = $4, entry = $5
                   WHERE activity_id = $1";
        let (id, state) = (big(e.activity), e.state.as_str());
        let n = match e.state {
            SendState::Sending => self.fenced(&e.mailbox, |tx| {
                tx.with(|c| Ok(c.execute(sql, &[&id, &e.mailbox, &e.message_id, &state, &entry])?))
            })?,
            _ => self
                .with(|c| Ok(c.execute(sql, &[&id, &e.mailbox, &e.message_id, &state, &entry])?))?,
        };
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "activity {} is not in the outbox",
                e.activity
            )));
        }
        Ok(())
    }
}

/// An `audit` row (`activity_id, at, actor, action, field, old, new`) as its entry.
pub(super) fn audit_entry(r: &Row) -> std::result::Result<crate::model::AuditEntry, PgError> {
    let action: String = r.get(3);
    Ok(crate::model::AuditEntry {
        activity: u64::try_from(r.get::<_, i64>(0)).map_err(|_| corrupt("negative activity id"))?,
        at: r.get(1),
        actor: r.get(2),
        action: crate::model::AuditAction::from_text(&action)
            .ok_or_else(|| corrupt(format!("audit action {action:?}")))?,
        field: r.get(4),
        old: r.get(5),
        new: r.get(6),
    })
}

/// Streams rows a page at a time: `page(after)` reads the page after the key `after` (`None`:
/// the first), each item with its key.
fn paged<'a, K: Clone + Send + 'a, T: Send + 'a>(
    page: impl Fn(&Option<K>) -> Result<Vec<(K, T)>> + Send + 'a,
) -> impl Iterator<Item = Result<T>> + Send + 'a {
    let mut after: Option<K> = None;
    let mut buf: std::collections::VecDeque<T> = Default::default();
    let mut done = false;
    std::iter::from_fn(move || {
        if buf.is_empty() && !done {
            match page(&after) {
                Ok(rows) => {
                    done = (rows.len() as i64) < PAGE;
                    if let Some((k, _)) = rows.last() {
                        after = Some(k.clone());
                    }
                    buf.extend(rows.into_iter().map(|(_, t)| t));
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
