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

pub(crate) mod bulk;
/// `store copy --from-sled`: bulk writes and whole-store reads.
pub(crate) mod copy;
mod db;
mod faults;
/// Mailbox leases and the fences of their writes (DESIGN §5.2).
pub(crate) mod lease;
mod pending;
mod product;
mod rows;
pub(crate) mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod tx;

pub(crate) use tx::PgTx;

use crate::model::{Activity, Direction, Record, Source};
use crate::track::tx::{Broken, Engine, Lookups, Scans};
use crate::track::ActivityLookup;
use db::{Conn, Db, Statements};
use postgres::error::SqlState;
use postgres::{Client, GenericClient, IsolationLevel, NoTls, Transaction};
use rows::big;
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
    /// A write of a leased mailbox whose lease this agent no longer holds (another agent was
    /// granted it, or it lapsed): the transaction rolled back, nothing of it written.
    #[error(
        "commit refused: this agent no longer holds the lease of mailbox {mailbox}{}: \
         another agent works it now; nothing of this batch was written",
        .epoch.map(|e| format!(" (epoch {e} moved on)")).unwrap_or_default()
    )]
    Fenced { mailbox: String, epoch: Option<i64> },
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

impl PgError {
    /// Two processes created the same table or row of the schema at once (see
    /// [`PgStore::connect`]).
    fn is_migration_race(&self) -> bool {
        let PgError::Db(e) = self else {
            return false;
        };
        self.is_retryable()
            || [SqlState::DUPLICATE_TABLE, SqlState::DUPLICATE_OBJECT]
                .iter()
                .any(|s| e.code() == Some(s))
    }
}

type Result<T> = std::result::Result<T, PgError>;

/// How many times a transaction runs before its conflict is returned as an error.
const ATTEMPTS: u32 = 50;
/// Connections open at most: a thread that needs one beyond them waits for one to be given
/// back. A thousand mailbox workers so share a few connections (the server's default
/// `max_connections` is 100, and each connection is a server process), and a batch commit
/// waits its turn instead of failing.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// The connections: the idle ones, and how many are open (idle or lent out).
#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

/// A connection lent out of the pool, given back when dropped; dropped by a panic (it may be in
/// the middle of a transaction), it is closed and counted out instead.
struct Lent<'a> {
    store: &'a PgStore,
    conn: Option<Conn>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("a lent connection")
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a lent connection")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            match std::thread::panicking() {
                true => {
                    drop(c);
                    self.store.forget();
                }
                false => self.store.give_back(c),
            }
        }
    }
}

/// A PostgreSQL database holding foldertrack's tables.
pub(crate) struct PgStore {
    config: postgres::Config,
    /// TLS for new connections (`None`: plaintext).
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool: Mutex<Pool>,
    /// Signalled when a connection is given back or closed.
    freed: std::sync::Condvar,
    /// Transactions run again after a conflict, since open (for tests and, later, metrics).
    retries: AtomicU64,
    /// The leases this agent holds, which its mailboxes' writes check.
    fences: lease::Fences,
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
        let idle = std::mem::take(&mut self.pool.lock().unwrap_or_else(|p| p.into_inner()).idle);
        crate::store::blocking(move || drop(idle));
    }
}

/// Every statement is planned for its parameters (`plan_cache_mode = force_custom_plan`, ahead
/// of the URL's own `options`). The statements stay prepared (one round trip each), but the
/// server's generic plan, which it settles on after five runs, is a plan for the tables as they
/// were then: made while a first sync's tables were still empty, it scanned them whole for
/// every `= ANY($1)` ever after, and that was most of the server's time at 10,000 messages.
fn custom_plans(config: &mut postgres::Config) {
    let ours = "-c plan_cache_mode=force_custom_plan";
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours.to_string(),
    };
    config.options(&options);
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
        mut config: postgres::Config,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<PgStore> {
        custom_plans(&mut config);
        let store = PgStore {
            config,
            tls,
            pool: Mutex::default(),
            freed: std::sync::Condvar::new(),
            retries: AtomicU64::new(0),
            fences: lease::Fences::default(),
        };
        // Agents started together on an empty database migrate at once: all but one fail on a
        // table the winner created, and their next attempt finds the schema in place.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let migrated = schema::migrate(&mut store.conn()?.client);
            match migrated {
                Err(e) if e.is_migration_race() && attempt < 5 => pause(attempt + 4),
                Err(e) => return Err(e),
                Ok(()) => return Ok(store),
            }
        }
    }

    /// An idle connection, or a new one while fewer than [`MAX_CONNECTIONS`] are open; else
    /// waits for one to be given back.
    fn conn(&self) -> Result<Lent<'_>> {
        let lent = |c| Lent {
            store: self,
            conn: Some(c),
        };
        let mut pool = self.pool.lock().expect("pool poisoned");
        loop {
            match pool.idle.pop() {
                Some(c) if !c.client.is_closed() => return Ok(lent(c)),
                Some(closed) => {
                    pool.open -= 1;
                    drop(closed);
                }
                None if pool.open < MAX_CONNECTIONS => break,
                None => pool = self.freed.wait(pool).expect("pool poisoned"),
            }
        }
        pool.open += 1;
        drop(pool);
        match self.open_conn() {
            Ok(c) => Ok(lent(c)),
            Err(e) => {
                self.forget();
                Err(e)
            }
        }
    }

    /// Counts a connection out of the pool (closed, failed to open, or taken away).
    fn forget(&self) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
        self.freed.notify_one();
    }

    /// A new connection.
    fn open_conn(&self) -> Result<Conn> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        let client = connected.map_err(|source| {
            let (host, dbname, user) = describe(&self.config);
            PgError::Connect {
                host,
                dbname,
                user,
                cause: source,
            }
        })?;
        Ok(Conn {
            client,
            stmts: Statements::default(),
        })
    }

    /// Returns a connection to the pool. A closed one drops the idle ones too: the server went
    /// away (restarted, crashed) and took them along, which each would otherwise show by
    /// failing one more attempt.
    fn give_back(&self, c: Conn) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let stale = match c.client.is_closed() {
            true => {
                let stale = std::mem::take(&mut pool.idle);
                pool.open -= 1 + stale.len();
                stale
            }
            false => {
                pool.idle.push(c);
                Vec::new()
            }
        };
        drop(pool);
        drop(stale);
        self.freed.notify_all();
    }

    /// Runs `f` on a pooled connection, outside of a transaction (one statement reads
    /// committed data on its own).
    fn with<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T>) -> Result<T> {
        let mut c = self.conn()?;
        let c = &mut *c;
        f(&mut Db::new(&mut c.client, &mut c.stmts))
    }

    /// Runs `f` in a read-only snapshot, for reads of several statements (an activity and
    /// its child rows) that must see one committed state.
    fn snapshot<T>(&self, f: impl FnOnce(&mut Db<'_, Transaction<'_>>) -> Result<T>) -> Result<T> {
        self.with(|c| {
            let (client, stmts) = c.parts();
            let mut tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let out = f(&mut Db::new(&mut tx, stmts))?;
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
        let c = self.conn()?.conn.take().expect("a lent connection");
        self.forget();
        Ok(c.client)
    }
}

/// The id of a one-column `bigint` row, if any.
fn id_of(row: Option<postgres::Row>) -> Result<Option<u64>> {
    row.map(|r| u64::try_from(r.get::<_, i64>(0)).map_err(|_| corrupt("negative id")))
        .transpose()
}

/// Point reads on the committed store; the transaction's ([`tx`]) see its new activities
/// first, then the same SQL.
impl Lookups for PgStore {
    type Error = PgError;
    fn activity(&self, id: u64) -> Result<Option<Activity>> {
        self.snapshot(|c| rows::load(c, id))
    }
    fn activities(&self, ids: &[u64]) -> Result<Vec<Activity>> {
        self.snapshot(|c| rows::load_many(c, ids))
    }
    fn activities_for_correlation(&self, ids: &[u64], parties: bool) -> Result<Vec<Activity>> {
        self.snapshot(|c| rows::load_headers(c, ids, parties))
    }
    fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>> {
        self.with(|c| dedup_id(c, key, d))
    }
    fn activity_by_source(&self, s: &Source) -> Result<Option<u64>> {
        self.with(|c| by_source(c, "sources", "activity_id", s))
    }
    fn activity_by_token(&self, token: &str) -> Result<Option<u64>> {
        self.with(|c| token_id(c, token))
    }
    fn activity_by_thread(&self, bytes: &[u8]) -> Result<Option<u64>> {
        self.with(|c| thread_id(c, bytes))
    }
    fn record(&self, reference: &str) -> Result<Option<Record>> {
        self.with(|c| load_record(c, reference))
    }
}

fn dedup_id(c: &mut Db<'_, impl GenericClient>, key: &str, d: Direction) -> Result<Option<u64>> {
    let sql = "SELECT id FROM activities WHERE dedup_key = $1 AND direction = $2";
    id_of(c.query_opt(sql, &[&key, &d.as_str()])?)
}

fn token_id(c: &mut Db<'_, impl GenericClient>, token: &str) -> Result<Option<u64>> {
    let sql = "SELECT id FROM activities WHERE token_key = $1";
    id_of(c.query_opt(sql, &[&token.to_ascii_uppercase()])?)
}

fn thread_id(c: &mut Db<'_, impl GenericClient>, bytes: &[u8]) -> Result<Option<u64>> {
    let sql = "SELECT id FROM activities WHERE thread_key = $1";
    id_of(c.query_opt(sql, &[&bytes])?)
}

/// The id column of the row of `table` keyed by source `s` (sources, quarantine).
fn by_source(
    c: &mut Db<'_, impl GenericClient>,
    table: &str,
    id: &str,
    s: &Source,
) -> Result<Option<u64>> {
    let sql = format!(
        "SELECT {id} FROM {table}
         WHERE mailbox = $1 AND folder = $2 AND uidvalidity = $3 AND uid = $4 LIMIT 1"
    );
    id_of(c.query_opt(
        &sql,
        &[&s.mailbox, &s.folder, &big(s.uidvalidity), &big(s.uid)],
    )?)
}

fn load_record(c: &mut Db<'_, impl GenericClient>, reference: &str) -> Result<Option<Record>> {
    let row = c.query_opt(
        "SELECT type, key, name, emails, owner, shared, teams FROM records
         WHERE reference = $1",
        &[&reference],
    )?;
    Ok(row.as_ref().map(rows::record_of))
}

/// The ids of the rows `sql` returns (one `bigint` column).
fn ids(
    c: &mut Db<'_, impl GenericClient>,
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

    fn awaiting_parents(&self, message_ids: &[&str]) -> Result<Vec<(String, u64)>> {
        let sql = "SELECT message_id, activity_id FROM awaiting_parent
                   WHERE message_id = ANY($1) ORDER BY message_id, activity_id";
        self.with(|c| {
            c.query(sql, &[&message_ids])?
                .iter()
                .map(|r| Ok((r.get(0), rows::unsigned(r.get(1), "activity id")?)))
                .collect()
        })
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
        let mut c = self.conn()?;
        let c = &mut *c;
        let tx = c
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()?;
        let tx = PgTx::new(tx, &mut c.stmts);
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
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
