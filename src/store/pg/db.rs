//! A connection and the statements prepared on it. Running a statement from its text costs two
//! round trips (prepare, then execute); the engine runs the same few dozen statements again and
//! again, so each connection keeps them prepared, by their text, and every later run costs one.
//! A named prepared statement belongs to the session, not to a transaction: it outlives the
//! rollback of the transaction that prepared it.

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Statement};
use std::collections::HashMap;

/// Parameters of one statement.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// More distinct statements than the engine has: the cache is cleared when it reaches this
/// (dropping a statement closes it on the server), so it cannot grow without bound.
const MAX_STATEMENTS: usize = 256;

/// A pooled connection: the client and its prepared statements.
pub(super) struct Conn {
    pub client: Client,
    pub stmts: Statements,
}

/// Statements prepared on one connection, by their SQL text.
#[derive(Default)]
pub(super) struct Statements(HashMap<String, Statement>);

/// A client or a transaction of a [`Conn`], with its prepared statements: the same calls as
/// [`GenericClient`], each statement prepared once per connection.
pub(super) struct Db<'a, C> {
    c: &'a mut C,
    stmts: &'a mut Statements,
}

impl<'a, C: GenericClient> Db<'a, C> {
    pub(super) fn new(c: &'a mut C, stmts: &'a mut Statements) -> Db<'a, C> {
        Db { c, stmts }
    }

    /// The statement of `sql`, prepared on this connection once.
    fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.0.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        if self.stmts.0.len() >= MAX_STATEMENTS {
            self.stmts.0.clear();
        }
        self.stmts.0.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    pub(super) fn execute(&mut self, sql: &str, p: Params<'_>) -> Result<u64, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.execute(&s, p)
    }

    pub(super) fn query(&mut self, sql: &str, p: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query(&s, p)
    }

    pub(super) fn query_opt(
        &mut self,
        sql: &str,
        p: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query_opt(&s, p)
    }

    pub(super) fn query_one(&mut self, sql: &str, p: Params<'_>) -> Result<Row, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query_one(&s, p)
    }

    /// Several statements of a script, without parameters (not prepared).
    pub(super) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.c.batch_execute(sql)
    }

    /// The client or transaction itself, and the statements, for what needs more (a nested
    /// transaction).
    pub(super) fn parts(&mut self) -> (&mut C, &mut Statements) {
        (self.c, self.stmts)
    }
}
