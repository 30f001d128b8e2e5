//! The batch transaction on PostgreSQL: [`BatchTx`] over one SERIALIZABLE transaction. New
//! activities wait in [`Pending`] and are written at commit with one statement per table; the
//! rules' lookups see them there first. Activity ids are drawn from the sequence a batch at a
//! time. A batch of a hundred messages so costs a few dozen round trips, not a thousand.

use super::bulk::{self, NewActivity};
use super::db::{Db, Statements};
use super::pending::Pending;
use super::rows::{self, big};
use super::{by_source, corrupt, dedup_id, id_of, load_record, thread_id, token_id, PgError};
use crate::model::{
    Activity, Alert, AuditEntry, Direction, FieldState, FolderState, QuarantineEntry, Record,
    Source,
};
use crate::track::tx::{BatchTx, Counter, Findable, Head, Lookups};
use postgres::Transaction;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

type Result<T> = std::result::Result<T, PgError>;

/// A transaction of the PostgreSQL engine. The trait methods take `&self`, the client's
/// `&mut self`: the cells lend the transaction to one statement at a time.
pub(crate) struct PgTx<'t> {
    tx: RefCell<Transaction<'t>>,
    stmts: RefCell<&'t mut Statements>,
    pending: RefCell<Pending>,
    /// Activity ids drawn and not yet taken, the next last.
    ids: RefCell<Vec<u64>>,
    /// What [`BatchTx::prefetch`] read of the written activities: `None` for a key looked
    /// for and not there.
    known: RefCell<Known>,
    /// Audit entries of the transaction, written at its end in one statement.
    audit: RefCell<Vec<AuditEntry>>,
    /// Synced fields the transaction wrote, by activity, written at its end in one statement
    /// (a first sync writes one per new activity; a statement each would undo the batching).
    fields: RefCell<std::collections::BTreeMap<u64, FieldState>>,
    /// Alerts raised, by mailbox and message, written at the end in one statement: a rule
    /// whose record is missing raises its alert once per message, a round trip each before.
    alerts: RefCell<BTreeMap<(String, String), Raised>>,
    /// Records read, by reference (`None`: not there): the rules look up a folder's record
    /// for every message of the batch. Forgotten when the transaction inserts that record.
    records: RefCell<HashMap<String, Option<Record>>>,
}

/// Pending activities taken for writing, and the (Message-ID, activity) pairs awaiting a parent.
type Written = (Vec<NewActivity>, Vec<(String, u64)>);

/// An alert raised one or more times in a transaction.
struct Raised {
    level: &'static str,
    count: i64,
    first_at: String,
    at: String,
}

/// Lookups read ahead for a batch, answered without a round trip.
#[derive(Default)]
struct Known {
    sources: HashMap<Source, Option<u64>>,
    dedup: HashMap<(String, Direction), Option<u64>>,
    /// Synced fields and untracked marks read ahead for a flag scan (`None`: none stored).
    fields: HashMap<u64, Option<FieldState>>,
    untracked: HashMap<u64, bool>,
    /// The written activities the batch's own dedup keys found (a copy merges into its
    /// activity), unless their message was found already tracked.
    activities: HashMap<u64, Activity>,
    /// The heads of the written activities the correlation keys found (a reply inherits its
    /// parent's regarding): two columns, not the parent's body, parties and sources.
    heads: HashMap<u64, Head>,
}

impl<'t> PgTx<'t> {
    pub(super) fn new(tx: Transaction<'t>, stmts: &'t mut Statements) -> PgTx<'t> {
        PgTx {
            tx: RefCell::new(tx),
            stmts: RefCell::new(stmts),
            pending: RefCell::default(),
            ids: RefCell::default(),
            known: RefCell::default(),
            audit: RefCell::default(),
            fields: RefCell::default(),
            alerts: RefCell::default(),
            records: RefCell::default(),
        }
    }

    /// Runs `f` on the transaction as the database has it: the new activities not yet written
    /// are not there (the lookups look at them first).
    pub(super) fn db<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, Transaction<'t>>) -> Result<T>,
    ) -> Result<T> {
        let mut tx = self.tx.borrow_mut();
        let mut stmts = self.stmts.borrow_mut();
        f(&mut Db::new(&mut *tx, &mut stmts))
    }

    /// Runs `f` on the transaction with every new activity written first, for statements that
    /// may name them (the outbox, links).
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut Db<'_, Transaction<'t>>) -> Result<T>,
    ) -> Result<T> {
        self.flush()?;
        self.db(f)
    }

    /// Writes the new activities: the token and Thread-Index keys they take are given up by
    /// the written activities that held them, then the rows, then what awaits a parent.
    fn flush(&self) -> Result<()> {
        let Some(new) = self.release_keys()? else {
            return Ok(());
        };
        self.generic_plans(|| self.write_rows(&new.0, &new.1))
    }

    /// Takes the pending activities and clears the token and Thread-Index keys they take from
    /// the written ones; `None` when nothing is pending. These two `UPDATE … = ANY($1)` stay
    /// planned for their parameters (see [`Self::generic_plans`]).
    fn release_keys(&self) -> Result<Option<Written>> {
        let (new, awaiting) = self.pending.borrow_mut().take();
        if new.is_empty() {
            return Ok(None);
        }
        // What was read ahead said "not there" of what is written now.
        *self.known.borrow_mut() = Known::default();
        self.db(|c| {
            let tokens: Vec<&str> = new.iter().filter_map(|n| n.token_key.as_deref()).collect();
            if !tokens.is_empty() {
                c.execute(
                    "UPDATE activities SET token_key = NULL WHERE token_key = ANY($1)",
                    &[&tokens],
                )?;
            }
            let threads: Vec<&[u8]> = new.iter().filter_map(|n| n.thread_key.as_deref()).collect();
            if !threads.is_empty() {
                c.execute(
                    "UPDATE activities SET thread_key = NULL WHERE thread_key = ANY($1)",
                    &[&threads],
                )?;
            }
            Ok(())
        })?;
        Ok(Some((new, awaiting)))
    }

    /// The rows of new activities (their children included) and what awaits a parent.
    fn write_rows(&self, new: &[NewActivity], awaiting: &[(String, u64)]) -> Result<()> {
        self.db(|c| {
            bulk::insert(c, new)?;
            if !awaiting.is_empty() {
                let (m, id): (Vec<&str>, Vec<i64>) = awaiting
                    .iter()
                    .map(|(m, id)| (m.as_str(), big(*id)))
                    .unzip();
                c.execute(
                    "INSERT INTO awaiting_parent (message_id, activity_id)
                     SELECT * FROM unnest($1::text[], $2::bigint[]) ON CONFLICT DO NOTHING",
                    &[&m, &id],
                )?;
            }
            Ok(())
        })
    }

    /// Runs the batch's writes with the server's plan cache on `auto` (the session's
    /// own setting back afterwards: `force_custom_plan`, see `custom_plans`).
    ///
    /// Why: the session plans every statement for its parameters, which is right for reads
    /// (`= ANY($1)` planned once on a first sync's empty tables scanned them whole ever after),
    /// but the setting reaches the foreign-key checks too: PostgreSQL checks each child row
    /// (a party, a source, a reference, an attachment) with a statement of its own, and
    /// planned all 71,000 of a 10,000-message sync anew, a fifth of the server's CPU. The
    /// writes are `INSERT … SELECT FROM unnest(…)` and key lookups, whose generic plans are the
    /// custom ones.
    pub(super) fn generic_plans<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.db(|c| Ok(c.batch_execute("SET LOCAL plan_cache_mode = auto")?))?;
        let out = f()?;
        self.db(|c| Ok(c.batch_execute("SET LOCAL plan_cache_mode = DEFAULT")?))?;
        Ok(out)
    }

    /// Writes what is pending and commits.
    pub(super) fn commit(self) -> Result<()> {
        self.write_all()?;
        Ok(self.tx.into_inner().commit()?)
    }

    /// Everything the transaction holds back: new activities, audit entries, synced fields.
    fn write_all(&self) -> Result<()> {
        let new = self.release_keys()?;
        let nothing_else = self.audit.borrow().is_empty()
            && self.fields.borrow().is_empty()
            && self.alerts.borrow().is_empty();
        if new.is_none() && nothing_else {
            return Ok(());
        }
        self.generic_plans(|| {
            if let Some((new, awaiting)) = &new {
                self.write_rows(new, awaiting)?;
            }
            self.flush_audit()?;
            self.flush_fields()?;
            self.flush_alerts()
        })
    }

    /// The transaction itself, for statements that take it whole (store copy).
    pub(super) fn into_inner(self) -> Result<Transaction<'t>> {
        self.write_all()?;
        Ok(self.tx.into_inner())
    }

    /// Writes the synced fields the transaction changed, with one statement.
    fn flush_fields(&self) -> Result<()> {
        let all = std::mem::take(&mut *self.fields.borrow_mut());
        if all.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = all.keys().map(|id| big(*id)).collect();
        let read: Vec<bool> = all.values().map(|f| f.crm.read).collect();
        let follow: Vec<bool> = all.values().map(|f| f.crm.follow_up).collect();
        let imp: Vec<&str> = all.values().map(|f| f.crm.importance.as_str()).collect();
        // text[][] must be rectangular: the categories go as one JSON array each.
        let cats = all
            .values()
            .map(|f| serde_json::to_value(&f.crm.categories))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        let copies = all
            .values()
            .map(|f| serde_json::to_value(&f.copies))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        self.db(|c| {
            c.execute(
                "INSERT INTO activity_fields (activity_id, read, follow_up, importance,
                     categories, copies)
                 SELECT a, b, c, d, ARRAY(SELECT jsonb_array_elements_text(e)), f
                 FROM unnest($1::bigint[], $2::boolean[], $3::boolean[], $4::text[],
                             $5::jsonb[], $6::jsonb[]) AS u(a, b, c, d, e, f)
                 ON CONFLICT (activity_id) DO UPDATE SET read = excluded.read,
                     follow_up = excluded.follow_up, importance = excluded.importance,
                     categories = excluded.categories, copies = excluded.copies",
                &[&ids, &read, &follow, &imp, &cats, &copies],
            )?;
            Ok(())
        })
    }

    /// Writes the alerts the transaction raised, with one statement: a row per alert, its count
    /// raised by how often, the level and time of the last raise.
    fn flush_alerts(&self) -> Result<()> {
        let all = std::mem::take(&mut *self.alerts.borrow_mut());
        if all.is_empty() {
            return Ok(());
        }
        let (mut mailbox, mut message, mut level) = (Vec::new(), Vec::new(), Vec::new());
        let (mut count, mut first_at, mut at) = (Vec::new(), Vec::new(), Vec::new());
        for ((mb, msg), r) in &all {
            mailbox.push(mb.as_str());
            message.push(msg.as_str());
            level.push(r.level);
            count.push(r.count);
            first_at.push(r.first_at.as_str());
            at.push(r.at.as_str());
        }
        self.db(|c| {
            c.execute(
                "INSERT INTO alerts (mailbox, message, level, count, first_at, at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                     $5::text[], $6::text[])
                 ON CONFLICT (mailbox, message) DO UPDATE
                 SET count = alerts.count + excluded.count, at = excluded.at,
                     level = excluded.level",
                &[&mailbox, &message, &level, &count, &first_at, &at],
            )?;
            Ok(())
        })
    }

    /// Writes the transaction's audit entries, in order, with one statement.
    fn flush_audit(&self) -> Result<()> {
        let entries = std::mem::take(&mut *self.audit.borrow_mut());
        if entries.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&AuditEntry) -> Option<&str>| -> Vec<Option<&str>> {
            entries.iter().map(f).collect()
        };
        let ids: Vec<i64> = entries.iter().map(|e| big(e.activity)).collect();
        let at = col(|e| Some(e.at.as_str()));
        let actor = col(|e| Some(e.actor.as_str()));
        let action = col(|e| Some(e.action.as_str()));
        let (field, old, new) = (
            col(|e| e.field.as_deref()),
            col(|e| e.old.as_deref()),
            col(|e| e.new.as_deref()),
        );
        self.db(|c| {
            c.execute(
                "INSERT INTO audit (activity_id, at, actor, action, field, old, new)
                 SELECT a, b, c, d, e, f, g
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                             $5::text[], $6::text[], $7::text[])
                     WITH ORDINALITY AS u(a, b, c, d, e, f, g, n)
                 ORDER BY n",
                &[&ids, &at, &actor, &action, &field, &old, &new],
            )?;
            Ok(())
        })
    }
}

impl Lookups for PgTx<'_> {
    type Error = PgError;
    fn activity(&self, id: u64) -> Result<Option<Activity>> {
        if let Some(a) = self.pending.borrow().activity(id) {
            return Ok(Some(a.clone()));
        }
        if let Some(a) = self.known.borrow().activities.get(&id) {
            return Ok(Some(a.clone()));
        }
        self.db(|c| rows::load(c, id))
    }
    fn activity_head(&self, id: u64) -> Result<Option<Head>> {
        if let Some(a) = self.pending.borrow().activity(id) {
            return Ok(Some(Head::from(a)));
        }
        let known = self.known.borrow();
        if let Some(h) = known.activities.get(&id).map(Head::from) {
            return Ok(Some(h));
        }
        if let Some(h) = known.heads.get(&id) {
            return Ok(Some(h.clone()));
        }
        drop(known);
        Ok(self.db(|c| rows::heads(c, &[id]))?.pop().map(|(_, h)| h))
    }
    fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>> {
        if let Some(id) = self.pending.borrow().by_dedup(key, d) {
            return Ok(Some(id));
        }
        if let Some(known) = self.known.borrow().dedup.get(&(key.to_string(), d)) {
            return Ok(*known);
        }
        self.db(|c| dedup_id(c, key, d))
    }
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        if let Some(id) = self.pending.borrow().by_source(s) {
            return Ok(Some(id));
        }
        if let Some(known) = self.known.borrow().sources.get(s) {
            return Ok(*known);
        }
        self.db(|c| by_source(c, "sources", "activity_id", s))
    }
    fn activity_by_token(&self, token: &str) -> Result<Option<u64>> {
        if let Some(id) = self.pending.borrow().by_token(&token.to_ascii_uppercase()) {
            return Ok(Some(id));
        }
        self.db(|c| token_id(c, token))
    }
    fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>> {
        if let Some(id) = self.pending.borrow().by_thread(bytes) {
            return Ok(Some(id));
        }
        self.db(|c| thread_id(c, bytes))
    }
    fn record(&self, reference: &str) -> Result<Option<Record>> {
        if let Some(r) = self.records.borrow().get(reference) {
            return Ok(r.clone());
        }
        let r = self.db(|c| load_record(c, reference))?;
        self.records
            .borrow_mut()
            .insert(reference.to_string(), r.clone());
        Ok(r)
    }
}

impl BatchTx for PgTx<'_> {
    fn is_quarantined(&self, s: &Source) -> Result<bool> {
        self.db(|c| Ok(by_source(c, "quarantine", "id", s)?.is_some()))
    }

    /// A few statements for the whole batch: which of these sources are tracked, which
    /// activities have these dedup keys (`own` and `parents`), the activities `own` finds
    /// (five statements, if any) and the heads of those only `parents` finds (one).
    fn prefetch(&self, sources: &[&Source], own: &[&str], parents: &[&str]) -> Result<()> {
        let keys: Vec<&str> = own.iter().chain(parents).copied().collect();
        let (mb, f, uv, uid): (Vec<&str>, Vec<&str>, Vec<i64>, Vec<i64>) =
            sources
                .iter()
                .fold(Default::default(), |(mut mb, mut f, mut uv, mut uid), s| {
                    mb.push(&s.mailbox);
                    f.push(&s.folder);
                    uv.push(big(s.uidvalidity));
                    uid.push(big(s.uid));
                    (mb, f, uv, uid)
                });
        let mut known = Known::default();
        for s in sources {
            known.sources.insert((*s).clone(), None);
        }
        for k in &keys {
            for d in [Direction::Incoming, Direction::Outgoing] {
                known.dedup.insert((k.to_string(), d), None);
            }
        }
        self.db(|c| {
            for r in c.query(
                "SELECT k.m, k.f, k.v, k.u, s.activity_id
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS k(m, f, v, u)
                 CROSS JOIN LATERAL (SELECT activity_id FROM sources
                     WHERE mailbox = k.m AND folder = k.f AND uidvalidity = k.v AND uid = k.u
                     OFFSET 0) s",
                &[&mb, &f, &uv, &uid],
            )? {
                let s = Source {
                    mailbox: r.get(0),
                    folder: r.get(1),
                    uidvalidity: rows::unsigned(r.get(2), "uidvalidity")?,
                    uid: rows::unsigned(r.get(3), "uid")?,
                };
                known
                    .sources
                    .insert(s, Some(rows::unsigned(r.get(4), "activity id")?));
            }
            for r in c.query(
                "SELECT k.key, a.direction, a.id FROM unnest($1::text[]) AS k(key)
                 CROSS JOIN LATERAL (SELECT direction, id FROM activities
                     WHERE dedup_key = k.key OFFSET 0) a",
                &[&keys],
            )? {
                let text: String = r.get(1);
                let d = Direction::from_text(&text)
                    .ok_or_else(|| corrupt(format!("unknown direction {text:?}")))?;
                let id = rows::unsigned(r.get(2), "activity id")?;
                known.dedup.insert((r.get(0), d), Some(id));
            }
            let replayed: std::collections::HashSet<u64> =
                known.sources.values().flatten().copied().collect();
            let found = |keys: &[&str]| -> Vec<u64> {
                let mut ids: Vec<u64> = keys
                    .iter()
                    .flat_map(|k| {
                        [Direction::Incoming, Direction::Outgoing]
                            .map(|d| known.dedup.get(&(k.to_string(), d)).copied().flatten())
                    })
                    .flatten()
                    .filter(|id| !replayed.contains(id))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            let (whole, parents) = (found(own), found(parents));
            if !whole.is_empty() {
                for a in rows::load_many(c, &whole)? {
                    known.activities.insert(a.id, a);
                }
            }
            let heads: Vec<u64> = parents
                .into_iter()
                .filter(|id| !known.activities.contains_key(id))
                .collect();
            if !heads.is_empty() {
                known.heads.extend(rows::heads(c, &heads)?);
            }
            Ok(())
        })?;
        *self.known.borrow_mut() = known;
        Ok(())
    }

    /// Draws `n` activity ids from the sequence in one round trip.
    fn reserve_ids(&self, counter: Counter, n: usize) -> Result<()> {
        if counter != Counter::Activity || n < 2 {
            return Ok(());
        }
        let drawn = self.db(|c| {
            let rows = c.query(
                "SELECT nextval('activity_id_seq') FROM generate_series(1, $1)",
                &[&(n.min(10_000) as i32)],
            )?;
            rows.into_iter()
                .map(|r| id_of(Some(r)).map(Option::unwrap_or_default))
                .collect::<Result<Vec<u64>>>()
        })?;
        let mut ids = self.ids.borrow_mut();
        ids.extend(drawn);
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(())
    }

    /// From a sequence: no row every writer updates, so writers do not queue on it; an
    /// aborted transaction, or ids reserved and not taken, leave gaps (ids are unique and
    /// increasing, not dense).
    fn next_id(&self, counter: Counter) -> Result<u64> {
        if counter == Counter::Activity {
            if let Some(id) = self.ids.borrow_mut().pop() {
                return Ok(id);
            }
        }
        let sql = match counter {
            Counter::Activity => "SELECT nextval('activity_id_seq')",
            Counter::Quarantine => "SELECT nextval('quarantine_id_seq')",
        };
        self.db(|c| id_of(Some(c.query_one(sql, &[])?)))?
            .ok_or_else(|| corrupt("a sequence gave no value"))
    }

    fn insert_activity(&self, a: &Activity, find: Findable<'_>) -> Result<()> {
        let new = NewActivity {
            activity: a.clone(),
            token_key: a
                .token
                .as_ref()
                .filter(|_| find.by_token)
                .map(|t| t.to_ascii_uppercase()),
            thread_key: a
                .thread_index
                .as_deref()
                .and_then(crate::track::correlate::thread_bytes),
            subject_key: find.subject_key.map(str::to_string),
        };
        self.pending.borrow_mut().push(new, find.awaiting_parent);
        Ok(())
    }

    fn update_activity(&self, before: &Activity, after: &Activity) -> Result<()> {
        if before.id != after.id {
            return Err(corrupt(format!(
                "activity {} updated as {}",
                before.id, after.id
            )));
        }
        if self.pending.borrow_mut().update(after) {
            return Ok(());
        }
        // Sources move with the update: what was read ahead of them is read again.
        let mut known = self.known.borrow_mut();
        if let Some(a) = known.activities.get_mut(&after.id) {
            *a = after.clone();
        }
        if let Some(h) = known.heads.get_mut(&after.id) {
            *h = Head::from(after);
        }
        for s in [before, after]
            .into_iter()
            .flat_map(|a| std::iter::once(&a.source).chain(&a.other_sources))
        {
            known.sources.remove(s);
        }
        drop(known);
        self.db(|c| rows::update(c, after))
    }

    fn insert_record_once(&self, r: &Record) -> Result<()> {
        self.records.borrow_mut().remove(&r.reference().to_string());
        self.db(|c| {
            c.execute(
                "INSERT INTO records (reference, type, key, name, owner, shared, teams, emails)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (reference) DO NOTHING",
                &rows::record_params(r, &r.reference().to_string()),
            )?;
            Ok(())
        })
    }

    fn raise_alert(&self, mailbox: &str, alert: &Alert, at: &str) -> Result<()> {
        let key = (mailbox.to_string(), alert.message.clone());
        let mut alerts = self.alerts.borrow_mut();
        let raised = alerts.entry(key).or_insert_with(|| Raised {
            level: alert.level.as_str(),
            count: 0,
            first_at: at.to_string(),
            at: at.to_string(),
        });
        raised.level = alert.level.as_str();
        raised.count += 1;
        raised.at = at.to_string();
        Ok(())
    }

    fn quarantine(&self, e: &QuarantineEntry, raw: &[u8]) -> Result<()> {
        let s = &e.source;
        self.db(|c| {
            c.execute(
                "INSERT INTO quarantine (id, mailbox, folder, uidvalidity, uid, reason, size,
                     at, raw) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &big(e.id),
                    &s.mailbox,
                    &s.folder,
                    &big(s.uidvalidity),
                    &big(s.uid),
                    &e.reason,
                    &big(e.size),
                    &e.at,
                    &raw,
                ],
            )?;
            Ok(())
        })
    }

    fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        self.audit.borrow_mut().push(e.clone());
        Ok(())
    }

    fn prefetch_fields(&self, ids: &[u64]) -> Result<()> {
        let keys: Vec<i64> = ids.iter().map(|id| big(*id)).collect();
        let mut fields: HashMap<u64, Option<FieldState>> =
            ids.iter().map(|id| (*id, None)).collect();
        let mut untracked: HashMap<u64, bool> = ids.iter().map(|id| (*id, false)).collect();
        self.db(|c| {
            for r in c.query(
                "SELECT read, follow_up, importance, categories, copies, activity_id
                 FROM activity_fields WHERE activity_id = ANY($1)",
                &[&keys],
            )? {
                let id = rows::unsigned(r.get(5), "activity id")?;
                fields.insert(id, Some(rows::field_state(&r)?));
            }
            for r in c.query(
                "SELECT activity_id FROM untracked WHERE activity_id = ANY($1)",
                &[&keys],
            )? {
                untracked.insert(rows::unsigned(r.get(0), "activity id")?, true);
            }
            Ok(())
        })?;
        let mut known = self.known.borrow_mut();
        known.fields.extend(fields);
        known.untracked.extend(untracked);
        Ok(())
    }

    fn is_untracked(&self, id: u64) -> Result<bool> {
        if let Some(u) = self.known.borrow().untracked.get(&id) {
            return Ok(*u);
        }
        self.db(|c| {
            Ok(c.query_opt(
                "SELECT 1 FROM untracked WHERE activity_id = $1",
                &[&big(id)],
            )?
            .is_some())
        })
    }

    fn set_untracked(&self, id: u64, untracked: bool) -> Result<()> {
        let sql = match untracked {
            true => "INSERT INTO untracked (activity_id) VALUES ($1) ON CONFLICT DO NOTHING",
            false => "DELETE FROM untracked WHERE activity_id = $1",
        };
        self.known.borrow_mut().untracked.insert(id, untracked);
        self.with(|c| {
            c.execute(sql, &[&big(id)])?;
            Ok(())
        })
    }

    fn field_state(&self, id: u64) -> Result<Option<FieldState>> {
        if let Some(st) = self.fields.borrow().get(&id) {
            return Ok(Some(st.clone()));
        }
        if let Some(st) = self.known.borrow().fields.get(&id) {
            return Ok(st.clone());
        }
        // An activity not yet written has no row: `db`, not `with`, so a batch's new
        // activities stay pending and are written together.
        self.db(|c| rows::load_field_state(c, id))
    }

    fn put_field_state(&self, id: u64, st: &FieldState) -> Result<()> {
        self.fields.borrow_mut().insert(id, st.clone());
        Ok(())
    }

    /// The child rows first (the hand-written ones' foreign keys name the activity), then the
    /// row itself; the token, Thread-Index and subject keys are columns of it. The rows the
    /// sync writes have no foreign key (schema version 8): this list is what keeps them whole,
    /// and `pg_a_deleted_activity_leaves_no_row_that_names_it` checks it against the catalogue.
    fn delete_activity(&self, a: &Activity, _subject_key: Option<&str>) -> Result<()> {
        self.fields.borrow_mut().remove(&a.id);
        self.known.borrow_mut().activities.remove(&a.id);
        self.known.borrow_mut().heads.remove(&a.id);
        self.known.borrow_mut().fields.remove(&a.id);
        self.known
            .borrow_mut()
            .sources
            .retain(|_, v| *v != Some(a.id));
        self.with(|c| {
            for table in [
                "parties",
                "sources",
                "activity_references",
                "awaiting_parent",
                "attachments",
                "activity_fields",
                "untracked",
                "manual_links",
                "activities",
            ] {
                let column = if table == "activities" {
                    "id"
                } else {
                    "activity_id"
                };
                c.execute(
                    &format!("DELETE FROM {table} WHERE {column} = $1"),
                    &[&big(a.id)],
                )?;
            }
            Ok(())
        })
    }

    fn put_checkpoint(&self, st: &FolderState) -> Result<()> {
        self.db(|c| {
            c.execute(
                "INSERT INTO checkpoints (mailbox, folder, uidvalidity, last_uid, uid_next,
                     messages, last_sync, rule, regarding, synced_uid_next, highest_modseq,
                     flags_scanned_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                     last_uid = excluded.last_uid, uid_next = excluded.uid_next,
                     messages = excluded.messages, last_sync = excluded.last_sync,
                     rule = excluded.rule, regarding = excluded.regarding,
                     synced_uid_next = excluded.synced_uid_next,
                     highest_modseq = excluded.highest_modseq,
                     flags_scanned_at = excluded.flags_scanned_at",
                &[
                    &st.mailbox,
                    &st.folder,
                    &big(st.uidvalidity),
                    &big(st.last_uid),
                    &big(st.uid_next),
                    &big(st.messages),
                    &st.last_sync,
                    &st.rule,
                    &st.regarding,
                    &big(st.synced_uid_next),
                    &big(st.highest_modseq),
                    &big(st.flags_scanned_at),
                ],
            )?;
            Ok(())
        })
    }
}
