//! The PostgreSQL engine (DESIGN §5.1): the storage traits of [`crate::track::tx`] over real
//! tables ([`schema`]), so that the tracking rules run unchanged on a database many agents and
//! reporting tools share, and the product's store methods ([`product`]) that
//! [`crate::store::Store`] dispatches to when `[store] engine = "postgres"`.
//!
//! The traits are synchronous (sled is), so this uses the `postgres` crate, the blocking
//! wrapper over tokio-postgres: it must not be called on a tokio runtime thread, so `Store`
//! runs every call through [`crate::store::blocking`]. Connections come from a small pool of
//! clients, so concurrent writers really run concurrently and conflict as they would in
//! production. TLS: [`tls`].

/// `store copy --from-sled`: bulk writes and whole-store reads.
pub(crate) mod copy;
mod faults;
mod product;
mod rows;
pub(crate) mod schema;
#[cfg(test)]
mod tests;
mod tls;

use crate::model::{Activity, Alert, Direction, FolderState, QuarantineEntry, Record, Source};
use crate::track::tx::{BatchTx, Broken, Counter, Engine, Findable, Lookups, Scans};
use crate::track::ActivityLookup;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Transaction};
use rows::big;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What can go wrong in the PostgreSQL engine.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server could not be reached or refused us. Names where and as whom, never the
    /// password. The message holds the whole cause ([`faults::text`]), so it has no `source`.
    #[error(
        "cannot connect to PostgreSQL at {host}, database {dbname:?}, user {user:?}: {}{}",
        faults::text(.cause),
        faults::connect_hint(.cause)
    )]
    Connect {
        host: String,
        dbname: String,
        user: String,
        cause: postgres::Error,
    },
    /// A statement failed (the whole cause in the message, as `Connect`).
    #[error("PostgreSQL: {}{}", faults::text(.0), faults::statement_hint(.0))]
    Db(postgres::Error),
    /// The database was migrated by a newer foldertrack; this one would misread it.
    #[error(
        "the database's schema is version {found}, newer than this foldertrack knows \
         (version {known}): upgrade foldertrack, or point it at another database"
    )]
    SchemaTooNew { found: i32, known: i32 },
    /// TLS to the server cannot be set up (`[store] tls`, `ca_file`).
    #[error("PostgreSQL TLS: {0}")]
    Tls(String),
    /// Something a command names is not there (aborts the transaction it is raised in).
    #[error("{0}")]
    NotFound(String),
    /// A stored value the model cannot hold, or an inconsistency a rule found.
    #[error("the PostgreSQL store is inconsistent: {0}")]
    Corrupt(String),
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> PgError {
        PgError::Db(e)
    }
}

impl From<Broken> for PgError {
    fn from(b: Broken) -> PgError {
        PgError::Corrupt(b.0)
    }
}

pub(crate) fn corrupt(message: impl Into<String>) -> PgError {
    PgError::Corrupt(message.into())
}

impl PgError {
    /// Whether running the transaction again may succeed: a serialization failure or a
    /// deadlock (the server chose us as the victim), or a unique violation (two writers raced
    /// to insert one message: run again, the rules see the winner's row and merge the copy).
    fn is_retryable(&self) -> bool {
        let PgError::Db(e) = self else {
            return false;
        };
        [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
        ]
        .iter()
        .any(|s| e.code() == Some(s))
    }
}

type Result<T> = std::result::Result<T, PgError>;

/// How many times a transaction runs before its conflict is returned as an error.
const ATTEMPTS: u32 = 50;
/// Idle connections kept for reuse; more are opened while more threads need one.
const IDLE: usize = 8;

/// A PostgreSQL database holding foldertrack's tables.
pub(crate) struct PgStore {
    config: postgres::Config,
    /// TLS for new connections (`None`: plaintext).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    idle: Mutex<Vec<Client>>,
    /// Transactions run again after a conflict, since open (for tests and, later, metrics).
    retries: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config: it may hold the password.
        f.debug_struct("PgStore")
            .field("target", &describe(&self.config))
            .finish()
    }
}

impl Drop for PgStore {
    /// A `postgres::Client` shuts its connection (and its own runtime) down when dropped,
    /// which must not happen on an async task's thread: the idle ones go through
    /// [`crate::store::blocking`].
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        crate::store::blocking(move || drop(idle));
    }
}

/// Host(s), database and user of a config, for messages (never the password).
fn describe(c: &postgres::Config) -> (String, String, String) {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    let host = match ports.is_empty() {
        true => hosts.join(","),
        false => format!("{} port {}", hosts.join(","), ports.join(",")),
    };
    let dbname = c.get_dbname().unwrap_or("(default)").to_string();
    let user = c.get_user().unwrap_or("(default)").to_string();
    (host, dbname, user)
}

impl PgStore {
    /// Connects to the database of `conninfo` (a `postgresql://` URL or `key=value` pairs)
    /// and brings its schema to this binary's version ([`schema::migrate`]).
    #[cfg(test)]
    pub(crate) fn open(conninfo: &str) -> Result<PgStore> {
        let config: postgres::Config = conninfo.parse().map_err(|e| PgError::Connect {
            host: "(unparsable connection string)".into(),
            dbname: String::new(),
            user: String::new(),
            cause: e,
        })?;
        PgStore::connect(config, None)
    }

    /// Connects as the `[store]` settings say: `url` (a `postgresql://` URL or `key=value`
    /// pairs) over TLS as `settings.tls` asks, and migrates the schema.
    pub(crate) fn open_with(url: &str, settings: &crate::config::PgSettings) -> Result<PgStore> {
        let mut config: postgres::Config = url.parse().map_err(|e| PgError::Connect {
            host: "(unparsable connection string)".into(),
            dbname: String::new(),
            user: String::new(),
            cause: e,
        })?;
        // A Unix socket is local: TLS does not apply there (libpq ignores sslmode for it too,
        // and the server would refuse the TLS request on it).
        let local = !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, postgres::config::Host::Unix(_)));
        let tls = match local {
            true => None,
            false => tls::connector(settings.tls, settings.ca_file.as_deref())?,
        };
        config.ssl_mode(match tls {
            Some(_) => postgres::config::SslMode::Require,
            None => postgres::config::SslMode::Disable,
        });
        faults::session_limits(&mut config, settings);
        PgStore::connect(config, tls)
    }

    fn connect(
        config: postgres::Config,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<PgStore> {
        let store = PgStore {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            retries: AtomicU64::new(0),
        };
        let mut c = store.client()?;
        schema::migrate(&mut c)?;
        store.give_back(c);
        Ok(store)
    }

    /// An idle connection, or a new one.
    fn client(&self) -> Result<Client> {
        if let Some(c) = self.idle.lock().expect("pool poisoned").pop() {
            if !c.is_closed() {
                return Ok(c);
            }
        }
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        connected.map_err(|source| {
            let (host, dbname, user) = describe(&self.config);
            PgError::Connect {
                host,
                dbname,
                user,
                cause: source,
            }
        })
    }

    /// Returns a connection to the pool (a closed one, or one too many, is dropped). A closed
    /// one drops the idle ones too: the server went away (restarted, crashed) and took them
    /// along, which each would otherwise show by failing one more attempt.
    fn give_back(&self, c: Client) {
        let mut idle = self.idle.lock().expect("pool poisoned");
        if c.is_closed() {
            let stale = std::mem::take(&mut *idle);
            drop(idle);
            drop(stale);
            return;
        }
        if idle.len() < IDLE {
            idle.push(c);
        }
    }

    /// Runs `f` on a pooled connection, outside of a transaction (one statement reads
    /// committed data on its own).
    fn with<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let out = f(&mut c);
        self.give_back(c);
        out
    }

    /// Runs `f` in a read-only snapshot, for reads of several statements (an activity and
    /// its child rows) that must see one committed state.
    fn snapshot<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Host, database and user, for `status` and messages (never the password).
    pub(crate) fn target(&self) -> String {
        let (host, dbname, user) = describe(&self.config);
        format!("{host}, database {dbname}, user {user}")
    }

    /// How many transactions ran again after a conflict since the store was opened.
    #[cfg(test)]
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// A plain SQL client on the store's database, for tests and reporting-like checks.
    #[cfg(test)]
    pub(crate) fn sql(&self) -> Result<Client> {
        self.client()
    }
}

/// A transaction of the PostgreSQL engine. The trait methods take `&self`, the client's
/// `&mut self`: the cell lends the transaction to one statement at a time.
pub(crate) struct PgTx<'t> {
    tx: RefCell<Transaction<'t>>,
}

impl PgTx<'_> {
    fn with<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        f(&mut self.tx.borrow_mut())
    }

    fn snapshot<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> Result<T>) -> Result<T> {
        self.with(f)
    }
}

/// The id of a one-column `bigint` row, if any.
fn id_of(row: Option<postgres::Row>) -> Result<Option<u64>> {
    row.map(|r| u64::try_from(r.get::<_, i64>(0)).map_err(|_| corrupt("negative id")))
        .transpose()
}

/// Point reads, the same SQL on the committed store and inside a transaction.
macro_rules! lookups {
    ($ty:ty) => {
        impl Lookups for $ty {
            type Error = PgError;
            fn activity(&self, id: u64) -> Result<Option<Activity>> {
                self.snapshot(|c| rows::load(c, id))
            }
            fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>> {
                let sql = "SELECT id FROM activities WHERE dedup_key = $1 AND direction = $2";
                self.with(|c| id_of(c.query_opt(sql, &[&key, &d.as_str()])?))
            }
            fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
                self.with(|c| by_source(c, "sources", "activity_id", s))
            }
            fn activity_by_token(&self, token: &str) -> Result<Option<u64>> {
                let sql = "SELECT id FROM activities WHERE token_key = $1";
                self.with(|c| id_of(c.query_opt(sql, &[&token.to_ascii_uppercase()])?))
            }
            fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>> {
                let sql = "SELECT id FROM activities WHERE thread_key = $1";
                self.with(|c| id_of(c.query_opt(sql, &[&bytes])?))
            }
            fn record(&self, reference: &str) -> Result<Option<Record>> {
                self.with(|c| load_record(c, reference))
            }
        }
    };
}

lookups!(PgStore);
lookups!(PgTx<'_>);

/// The id column of the row of `table` keyed by source `s` (sources, quarantine).
fn by_source(c: &mut impl GenericClient, table: &str, id: &str, s: &Source) -> Result<Option<u64>> {
    let sql = format!(
        "SELECT {id} FROM {table}
         WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 AND uid = $4 LIMIT 1"
    );
    id_of(c.query_opt(
        &sql,
        &[&s.mailbox, &s.folder, &big(s.uidvalidity), &big(s.uid)],
    )?)
}

fn load_record(c: &mut impl GenericClient, reference: &str) -> Result<Option<Record>> {
    let row = c.query_opt(
        "SELECT type, key, name, emails, owner, shared, teams FROM records
         WHERE reference = $1",
        &[&reference],
    )?;
    Ok(row.as_ref().map(rows::record_of))
}

impl BatchTx for PgTx<'_> {
    fn is_quarantined(&self, s: &Source) -> Result<bool> {
        self.with(|c| Ok(by_source(c, "quarantine", "id", s)?.is_some()))
    }

    /// From a sequence: no row every writer updates, so writers do not queue on it; an
    /// aborted transaction leaves a gap (ids are unique and increasing, not dense).
    fn next_id(&self, counter: Counter) -> Result<u64> {
        let sql = match counter {
            Counter::Activity => "SELECT nextval('activity_id_seq')",
            Counter::Quarantine => "SELECT nextval('quarantine_id_seq')",
        };
        self.with(|c| id_of(Some(c.query_one(sql, &[])?)))?
            .ok_or_else(|| corrupt("a sequence gave no value"))
    }

    fn insert_activity(&self, a: &Activity, find: Findable<'_>) -> Result<()> {
        let token = a
            .token
            .as_ref()
            .filter(|_| find.by_token)
            .map(|t| t.to_ascii_uppercase());
        let thread = a
            .thread_index
            .as_deref()
            .and_then(crate::track::correlate::thread_bytes);
        self.with(|c| {
            // One activity per token and per Thread-Index, the newest written: the previous
            // holder gives its key up (sled's index entry is overwritten the same way).
            if let Some(t) = &token {
                let sql = "UPDATE activities SET token_key = NULL WHERE token_key = $1";
                c.execute(sql, &[t])?;
            }
            if let Some(t) = &thread {
                let sql = "UPDATE activities SET thread_key = NULL WHERE thread_key = $1";
                c.execute(sql, &[t])?;
            }
            let keys = rows::Keys {
                token,
                thread,
                subject: find.subject_key,
            };
            rows::insert(c, a, &keys)?;
            if find.awaiting_parent {
                for parent in a.in_reply_to.iter().chain(&a.references) {
                    c.execute(
                        "INSERT INTO awaiting_parent (message_id, activity_id) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[parent, &big(a.id)],
                    )?;
                }
            }
            Ok(())
        })
    }

    fn update_activity(&self, before: &Activity, after: &Activity) -> Result<()> {
        if before.id != after.id {
            return Err(corrupt(format!(
                "activity {} updated as {}",
                before.id, after.id
            )));
        }
        self.with(|c| rows::update(c, after))
    }

    fn insert_record_once(&self, r: &Record) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO records (reference, type, key, name, owner, shared, teams, emails)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (reference) DO NOTHING",
                &rows::record_params(r, &r.reference().to_string()),
            )?;
            Ok(())
        })
    }

    fn raise_alert(&self, mailbox: &str, alert: &Alert, at: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO alerts (mailbox, message, level, count, first_at, at)
                 VALUES ($1, $2, $3, 1, $4, $4)
                 ON CONFLICT (mailbox, message) DO UPDATE
                 SET count = alerts.count + 1, at = excluded.at, level = excluded.level",
                &[&mailbox, &alert.message, &alert.level.as_str(), &at],
            )?;
            Ok(())
        })
    }

    fn quarantine(&self, e: &QuarantineEntry, raw: &[u8]) -> Result<()> {
        let s = &e.source;
        self.with(|c| {
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

    fn put_checkpoint(&self, st: &FolderState) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO checkpoints (mailbox, folder, uidvalidity, last_uid, uid_next,
                     messages, last_sync, rule, regarding, synced_uid_next)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (mailbox, folder) DO UPDATE SET uidvalidity = excluded.uidvalidity,
                     last_uid = excluded.last_uid, uid_next = excluded.uid_next,
                     messages = excluded.messages, last_sync = excluded.last_sync,
                     rule = excluded.rule, regarding = excluded.regarding,
                     synced_uid_next = excluded.synced_uid_next",
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
                ],
            )?;
            Ok(())
        })
    }
}

/// The ids of the rows `sql` returns (one `bigint` column).
fn ids(
    c: &mut Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<u64>> {
    c.query(sql, params)?
        .into_iter()
        .map(|r| id_of(Some(r)).map(|id| id.unwrap_or_default()))
        .collect()
}

impl Scans for PgStore {
    fn awaiting_parent(&self, message_id: &str) -> Result<Vec<u64>> {
        let sql = "SELECT activity_id FROM awaiting_parent WHERE message_id = $1
                   ORDER BY activity_id";
        self.with(|c| ids(c, sql, &[&message_id]))
    }

    /// A range scan on the `thread_key` index: every key that starts with `bytes` and is
    /// longer sorts after `bytes` and before its prefix successor.
    fn extending_thread(&self, bytes: &[u8]) -> Result<Vec<u64>> {
        let upper = successor(bytes);
        let sql = match upper {
            Some(_) => {
                "SELECT id FROM activities WHERE thread_key > $1 AND thread_key < $2
                 ORDER BY thread_key"
            }
            None => {
                "SELECT id FROM activities WHERE thread_key > $1
                     AND substring(thread_key from 1 for length($1)) = $1 ORDER BY thread_key"
            }
        };
        self.with(|c| match &upper {
            Some(u) => ids(c, sql, &[&bytes, u]),
            None => ids(c, sql, &[&bytes]),
        })
    }
}

/// The smallest byte string greater than every string that starts with `prefix`: `prefix`
/// with its last byte below 0xff raised by one and the rest cut; `None` when there is none.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let i = prefix.iter().rposition(|b| *b < 0xff)?;
    let mut s = prefix[..=i].to_vec();
    s[i] += 1;
    Some(s)
}

impl ActivityLookup for PgStore {
    /// The 50 newest activities with this subject key and their addresses (From, To, Cc,
    /// Bcc). A failed read finds nothing, as on sled: smart matching is a best effort.
    fn by_subject(&self, subject: &str) -> Vec<(u64, Vec<String>)> {
        let found = self.snapshot(|c| {
            let rows = c.query(
                "SELECT id FROM activities WHERE subject_key = $1 ORDER BY id DESC LIMIT 50",
                &[&subject],
            )?;
            let mut out = Vec::new();
            for r in rows {
                let id: i64 = r.get(0);
                let addrs = c.query(
                    "SELECT address FROM parties WHERE activity_id = $1 AND address IS NOT NULL
                     ORDER BY array_position(ARRAY['from', 'to', 'cc', 'bcc'], role), position",
                    &[&id],
                )?;
                let addrs = addrs.iter().map(|a| a.get(0)).collect();
                out.push((u64::try_from(id).unwrap_or_default(), addrs));
            }
            Ok(out)
        });
        found.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "smart matching could not read PostgreSQL");
            Vec::new()
        })
    }
}

impl Engine for PgStore {
    type Tx<'t> = PgTx<'t>;

    /// Runs `f` in a SERIALIZABLE transaction and runs it again on a conflict (see
    /// [`PgError::is_retryable`]), after a short random pause that grows with the attempts.
    /// SERIALIZABLE because the rules read, decide and write (merge a copy into the activity
    /// they read): under READ COMMITTED two writers merging copies into one activity would
    /// each rewrite it from what they read and one source would be lost, whereas SERIALIZABLE
    /// makes one of them fail with 40001 and run again on the other's result. It is also the
    /// only level CockroachDB runs by default, so one retry rule serves both.
    fn transaction<T>(&self, f: impl Fn(&PgTx<'_>) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(&f) {
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    pause(attempt);
                }
                out => return out,
            }
        }
    }
}

impl PgStore {
    /// One run of `f` in a transaction, committed when `f` succeeds.
    fn attempt<T>(&self, f: &impl Fn(&PgTx<'_>) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let out = (|| {
            let tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::Serializable)
                .start()?;
            let tx = PgTx {
                tx: RefCell::new(tx),
            };
            let out = f(&tx)?;
            tx.tx.into_inner().commit()?;
            Ok(out)
        })();
        self.give_back(c);
        out
    }
}

/// Sleeps a random 1..=2^min(attempt, 6) ms before running a conflicted transaction again, so
/// that the writers that collided do not collide again in step.
fn pause(attempt: u32) {
    use std::hash::{BuildHasher, RandomState};
    let cap = 1u64 << attempt.min(6);
    let r = RandomState::new().hash_one(std::time::Instant::now()) % cap;
    std::thread::sleep(Duration::from_millis(1 + r));
}
