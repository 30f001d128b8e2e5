//! What a PostgreSQL failure says to a person, and what it means for the agent.
//!
//! `postgres::Error`'s own text is only its kind ("db error", "error connecting to server"):
//! the server's words and the operating system's are its causes. [`text`] writes them all on
//! one line, and [`PgError`]'s messages end with a hint where the fault has a usual remedy
//! (the server down, a refused password, a full disk, the statement timeout). None of it
//! holds a password: the server never repeats one, and the connection target is named from
//! the parsed config without it.

use super::PgError;
use crate::config::PgSettings;
use postgres::error::SqlState;
use std::time::Duration;

/// The error's kind and every cause beneath it, on one line: `db error: ERROR: canceling
/// statement due to statement timeout (SQLSTATE 57014)`. The server's DETAIL and HINT follow
/// after `;`.
pub(crate) fn text(e: &postgres::Error) -> String {
    let mut out = e.to_string();
    if let Some(db) = e.as_db_error() {
        out.push_str(&format!(
            ": {}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ));
        if let Some(d) = db.detail() {
            out.push_str(&format!("; DETAIL: {d}"));
        }
        if let Some(h) = db.hint() {
            out.push_str(&format!("; HINT: {h}"));
        }
        return out;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !out.ends_with(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cause = c.source();
    }
    out
}

/// Whether the server refused these credentials (SQLSTATE class 28: a wrong password, an
/// unknown role, no `pg_hba.conf` line for it) or does not have the database: a mistake in
/// `[store] url`, which trying again will not mend.
pub(crate) fn refused(e: &postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("28") || *c == SqlState::INVALID_CATALOG_NAME)
}

/// What a person can do about a failure to connect, if there is a usual remedy.
pub(crate) fn connect_hint(e: &postgres::Error) -> &'static str {
    if refused(e) {
        return " (check the user, password and database of [store] url, or of the variable \
                 url_env names)";
    }
    if io_cause(e) {
        return " (is the server running, and listening there?)";
    }
    ""
}

/// Whether the operating system's error is beneath `e` (the socket failed).
fn io_cause(e: &postgres::Error) -> bool {
    std::iter::successors(std::error::Error::source(e), |c| c.source())
        .any(|c| c.downcast_ref::<std::io::Error>().is_some())
}

/// What a person can do about a failed statement, if there is a usual remedy.
pub(crate) fn statement_hint(e: &postgres::Error) -> &'static str {
    if e.is_closed() || io_cause(e) {
        return " (the connection to the server was lost: is it down or restarting? foldertrack \
                 retries; nothing is lost)";
    }
    match e.code() {
        Some(c) if *c == SqlState::DISK_FULL => {
            " (the database server is out of disk space: free some there; tracking resumes \
             from the last committed batch, nothing is lost)"
        }
        Some(c) if *c == SqlState::QUERY_CANCELED => {
            " (ran past [store] statement_timeout, or was cancelled on the server: a lock held \
             by another session? foldertrack retries; nothing is lost)"
        }
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW =>
        {
            " (the server is shutting down or restarting: foldertrack retries; nothing is lost)"
        }
        _ => "",
    }
}

/// How long a connection attempt may take unless the URL says (`connect_timeout`): a server
/// that does not answer at all (a dropped route) fails the attempt instead of holding the
/// agent for the operating system's TCP timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits every session of the store gets: `[store] statement_timeout` as the server's
/// `statement_timeout` (a statement stuck behind another session's lock fails with SQLSTATE
/// 57014, and the agent backs off and tries again, instead of waiting for ever), put before
/// the URL's own `options` (where a `-c statement_timeout=…` of its own wins); and
/// [`CONNECT_TIMEOUT`] unless the URL sets one.
pub(crate) fn session_limits(config: &mut postgres::Config, settings: &PgSettings) {
    let ms = settings.statement_timeout.as_millis();
    let ours = format!("-c statement_timeout={ms}");
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{ours} {theirs}"),
        _ => ours,
    };
    config.options(&options);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
}

impl PgError {
    /// Whether the server refused the configured credentials or database (see [`refused`]):
    /// the caller's mistake, exit code 2 like a configuration error.
    pub(crate) fn is_refused(&self) -> bool {
        matches!(self, PgError::Connect { cause, .. } if refused(cause))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PgTls, PgUrl};
    use crate::model::Direction;
    use crate::store::pg::PgStore;
    use crate::track::tx::Lookups;
    use testkit::pg::PgCluster;

    fn settings(url: &str, statement_timeout: u64) -> PgSettings {
        PgSettings {
            url: PgUrl::Literal(url.into()),
            tls: PgTls::Disable,
            ca_file: None,
            statement_timeout: Duration::from_secs(statement_timeout),
        }
    }

    #[test]
    fn sessions_get_the_statement_timeout_before_the_urls_options_and_a_connect_timeout() {
        let mut c: postgres::Config = "host=h user=u options='-c search_path=crm'"
            .parse()
            .unwrap();
        session_limits(&mut c, &settings("", 30));
        assert_eq!(
            c.get_options(),
            Some("-c statement_timeout=30000 -c search_path=crm")
        );
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let mut c: postgres::Config = "postgresql://u@h/db?connect_timeout=3".parse().unwrap();
        session_limits(&mut c, &settings("", 5));
        assert_eq!(c.get_options(), Some("-c statement_timeout=5000"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    /// The server runs each session with the configured timeout, and a statement stuck behind
    /// another session's lock fails with a message that says so and what to look at.
    #[test]
    fn a_statement_stuck_behind_a_lock_fails_after_the_statement_timeout_saying_so() {
        let Some(pg) = PgCluster::start() else { return };
        let store = PgStore::open_with(pg.url(), &settings(pg.url(), 1)).unwrap();
        let mut c = store.sql().unwrap();
        let shown: String = c.query_one("SHOW statement_timeout", &[]).unwrap().get(0);
        assert_eq!(shown, "1s");
        let mut locker = pg.client();
        let mut lock = locker.transaction().unwrap();
        lock.batch_execute("LOCK TABLE activities IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        let t = std::time::Instant::now();
        let err = store
            .activity_by_dedup("<x@y>", Direction::Incoming)
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let text = err.to_string();
        for part in [
            "canceling statement due to statement timeout",
            "SQLSTATE 57014",
            "[store] statement_timeout",
        ] {
            assert!(text.contains(part), "`{part}` in: {text}");
        }
        lock.rollback().unwrap();
        assert_eq!(
            store
                .activity_by_dedup("<x@y>", Direction::Incoming)
                .unwrap(),
            None
        );
    }

    /// A server that is not there, and one that refuses the password: the cause in the
    /// message with its remedy; only the refusal is the configuration's mistake.
    #[test]
    fn connect_errors_say_why_and_only_a_refusal_is_the_configurations_mistake() {
        let Some(pg) = PgCluster::start() else { return };
        if !pg.require_private("a role with a password") {
            return;
        }
        let sock = pg.socket_dir().unwrap().display().to_string();
        let nowhere = format!("postgresql:///x?host={sock}/nowhere&port=1&user=u");
        let err = PgStore::open_with(&nowhere, &settings(&nowhere, 30)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("No such file or directory"), "{text}");
        assert!(text.contains("is the server running"), "{text}");
        assert!(!err.is_refused());
        let url = pg.create_login("ft_unit", "right-pw");
        let wrong = url.replace("right-pw", "wrong-pw");
        let err = PgStore::open_with(&wrong, &settings(&wrong, 30)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("password authentication failed for user \"ft_unit\"")
                && text.contains("SQLSTATE 28P01")
                && text.contains("check the user, password and database"),
            "{text}"
        );
        assert!(
            !text.contains("wrong-pw") && !text.contains("right-pw"),
            "{text}"
        );
        assert!(err.is_refused());
        assert!(PgStore::open_with(&url, &settings(&url, 30)).is_ok());
    }
}
