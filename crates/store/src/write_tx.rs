//! The statements of a write transaction, written once for both engines.
//!
//! Every write of the store is a closure over [`WriteTx`], a small synchronous interface:
//! run a statement, run a query and look at its rows. Two implementations run it:
//! * SQLite: [`SqliteTx`], on SQLite's own API, on the store's writer thread, where the
//!   writes waiting at that moment share one transaction and one `fsync` (`group_commit`).
//!   A statement is a function call there, where sqlx would send each one to its
//!   connection's thread and wait for the answer (two thread hand-offs per statement,
//!   BENCHMARKS.md, "Where coffer's time goes").
//! * PostgreSQL: [`PooledTx`], on a transaction of sqlx's pool, driven from a blocking thread
//!   (`run_pooled`).
//!
//! Statements use `$n` placeholders; a value is bound by its number, wherever it appears.

use crate::{Engine, Result, StoreError, StoreRow};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool};
use tokio::runtime::Handle;

/// One value bound to a statement: the only types the schema uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    IntOpt(Option<i64>),
    TextOpt(Option<&'a str>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}
impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}
impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Bytes(v)
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::IntOpt(v)
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::TextOpt(v)
    }
}

/// `args![a, b]`: the values of `$1`, `$2`, as `&[Arg]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        &[$($crate::write_tx::Arg::from($value)),*][..]
    };
}
pub(crate) use args;

/// Whether a statement stays prepared on its connection for the next use. Multi-row INSERTs
/// of many rows are prepared for one use, so that they do not crowd the cache (one entry per
/// row count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prepare {
    Keep,
    Once,
}

/// The statements of one write transaction (see the module's comment).
pub(crate) trait WriteTx {
    /// Runs one statement; returns how many rows it changed.
    fn execute_with(&mut self, sql: &str, args: &[Arg<'_>], prepare: Prepare) -> Result<u64>;

    /// Runs one statement and hands each row it returns to `each`, in order.
    fn query_each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(&dyn StoreRow) -> Result<()>,
    ) -> Result<()>;
}

impl dyn WriteTx + '_ {
    pub(crate) fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> Result<u64> {
        self.execute_with(sql, args, Prepare::Keep)
    }

    /// Every row, mapped.
    pub(crate) fn fetch_all<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        mut map: impl FnMut(&dyn StoreRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, args, &mut |row| {
            out.push(map(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row, mapped, if there is one.
    pub(crate) fn fetch_optional<T>(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        mut map: impl FnMut(&dyn StoreRow) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut first = None;
        self.query_each(sql, args, &mut |row| {
            if first.is_none() {
                first = Some(map(row)?);
            }
            Ok(())
        })?;
        Ok(first)
    }
}

// ---------------------------------------------------------------------------------- SQLite

/// A write transaction on SQLite's own API. The caller began it and ends it.
pub(crate) struct SqliteTx<'c> {
    pub(crate) conn: &'c rusqlite::Connection,
}

impl rusqlite::ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Arg::Int(v) | Arg::IntOpt(Some(v)) => ValueRef::Integer(v),
            Arg::Text(v) | Arg::TextOpt(Some(v)) => ValueRef::Text(v.as_bytes()),
            Arg::Bytes(v) => ValueRef::Blob(v),
            Arg::IntOpt(None) | Arg::TextOpt(None) => ValueRef::Null,
        }))
    }
}

/// The statement as SQLite gets it: each `$n` written as `?n`. SQLite numbers `?n` by `n`, but
/// `$n` (a named parameter to it) by order of first appearance, and would need a lookup of
/// every parameter's name to bind by number (quadratic in a multi-row INSERT's parameters).
/// The store's SQL has no `$` outside placeholders.
pub(crate) fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Binds `?n` to `args[n - 1]`. A statement whose highest placeholder is not the number of
/// values given is refused: a value never goes missing or to the wrong place unnoticed.
pub(crate) fn bind(statement: &mut rusqlite::Statement<'_>, args: &[Arg<'_>]) -> Result<()> {
    let count = statement.parameter_count();
    if count != args.len() {
        return Err(rusqlite::Error::InvalidParameterCount(args.len(), count).into());
    }
    for (index, arg) in args.iter().enumerate() {
        statement.raw_bind_parameter(index + 1, arg)?;
    }
    Ok(())
}

impl SqliteTx<'_> {
    fn statement(&self, sql: &str, prepare: Prepare) -> Result<CachedOrNot<'_>> {
        let sql = numbered(sql);
        Ok(match prepare {
            Prepare::Keep => CachedOrNot::Cached(self.conn.prepare_cached(&sql)?),
            Prepare::Once => CachedOrNot::Once(self.conn.prepare(&sql)?),
        })
    }
}

enum CachedOrNot<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Once(rusqlite::Statement<'c>),
}

impl<'c> std::ops::DerefMut for CachedOrNot<'c> {
    fn deref_mut(&mut self) -> &mut rusqlite::Statement<'c> {
        match self {
            CachedOrNot::Cached(s) => s,
            CachedOrNot::Once(s) => s,
        }
    }
}
impl<'c> std::ops::Deref for CachedOrNot<'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &rusqlite::Statement<'c> {
        match self {
            CachedOrNot::Cached(s) => s,
            CachedOrNot::Once(s) => s,
        }
    }
}

impl WriteTx for SqliteTx<'_> {
    fn execute_with(&mut self, sql: &str, args: &[Arg<'_>], prepare: Prepare) -> Result<u64> {
        let mut statement = self.statement(sql, prepare)?;
        bind(&mut statement, args)?;
        Ok(statement.raw_execute()? as u64)
    }

    fn query_each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(&dyn StoreRow) -> Result<()>,
    ) -> Result<()> {
        let mut statement = self.statement(sql, Prepare::Keep)?;
        bind(&mut statement, args)?;
        let columns = crate::sqlite_reads::column_names(&statement);
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next()? {
            each(&crate::sqlite_reads::NamedRow::new(row, &columns))?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------- PostgreSQL

/// A write transaction on one of sqlx's connections, driven from a blocking thread (each
/// statement waits on the runtime with `Handle::block_on`).
pub(crate) struct PooledTx<'c> {
    conn: &'c mut AnyConnection,
    runtime: Handle,
}

pub(crate) fn sqlx_query<'q>(sql: &'q str, args: &[Arg<'q>]) -> Query<'q, Any, AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Bytes(v) => query.bind(v),
            Arg::IntOpt(v) => query.bind(v),
            Arg::TextOpt(v) => query.bind(v),
        };
    }
    query
}

impl WriteTx for PooledTx<'_> {
    fn execute_with(&mut self, sql: &str, args: &[Arg<'_>], prepare: Prepare) -> Result<u64> {
        let query = sqlx_query(sql, args).persistent(prepare == Prepare::Keep);
        let done = self.runtime.block_on(query.execute(&mut *self.conn))?;
        Ok(done.rows_affected())
    }

    fn query_each(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
        each: &mut dyn FnMut(&dyn StoreRow) -> Result<()>,
    ) -> Result<()> {
        let rows = self
            .runtime
            .block_on(sqlx_query(sql, args).fetch_all(&mut *self.conn))?;
        rows.iter().try_for_each(|row| each(row))
    }
}

/// Runs `op` in a transaction of its own on `pool` (PostgreSQL), on a blocking thread: commits
/// if it succeeds, rolls back if it fails. Once started it runs to the end, even if the caller
/// stops waiting.
pub(crate) async fn run_pooled<T: Send + 'static>(
    engine: Engine,
    pool: &AnyPool,
    op: impl FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
) -> Result<T> {
    let pool = pool.clone();
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut tx = runtime.block_on(async {
            match crate::engine::begin_write(engine) {
                Some(begin) => pool.begin_with(begin).await,
                None => pool.begin().await,
            }
        })?;
        let result = op(&mut PooledTx {
            conn: &mut tx,
            runtime: runtime.clone(),
        });
        match result {
            Ok(value) => {
                runtime.block_on(tx.commit())?;
                Ok(value)
            }
            Err(e) => {
                let _ = runtime.block_on(tx.rollback());
                Err(e)
            }
        }
    })
    .await
    .map_err(stopped)?
}

/// The error of a write whose task ended before it answered (it panicked, or the runtime is
/// shutting down): whether it committed is unknown here, the log says why.
pub(crate) fn stopped(e: tokio::task::JoinError) -> StoreError {
    tracing::error!(error = %e, "a write stopped before it committed");
    StoreError::NotCommitted("the write stopped before it committed (see the daemon's log)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a BIGINT, b TEXT, c BLOB)")
            .unwrap();
        conn
    }

    #[test]
    fn sqlite_binds_each_placeholder_by_its_number() {
        let conn = table();
        let tx: &mut dyn WriteTx = &mut SqliteTx { conn: &conn };
        // `$2` before `$1`, and `$1` twice: bound by number, not by position.
        let inserted = tx
            .execute(
                "INSERT INTO t (b, a, c) VALUES ($2, $1, $3), ($2, $1 + 1, $3)",
                args![7, "seven", &b"\x00\xff"[..]],
            )
            .unwrap();
        assert_eq!(inserted, 2);
        let rows = tx
            .fetch_all(
                "SELECT a, b, c FROM t WHERE b = $1 ORDER BY a",
                args!["seven"],
                |row| Ok((row.int("a")?, row.text("b")?, row.bytes("c")?)),
            )
            .unwrap();
        assert_eq!(
            rows,
            [
                (7, "seven".to_string(), vec![0, 255]),
                (8, "seven".to_string(), vec![0, 255])
            ]
        );
        // A statement that finds nothing changes nothing and returns no row.
        assert_eq!(
            tx.execute("UPDATE t SET a = $1 WHERE b = $2", args![1, "none"])
                .unwrap(),
            0
        );
        assert_eq!(
            tx.fetch_optional("SELECT a FROM t WHERE b = $1", args!["none"], |r| r
                .int("a"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn placeholders_are_numbered_for_sqlite() {
        assert_eq!(
            numbered("SELECT $1, $12 WHERE x = $1 AND y = '$' AND z = $a"),
            "SELECT ?1, ?12 WHERE x = ?1 AND y = '$' AND z = $a"
        );
    }

    #[test]
    fn sqlite_binds_absent_values_as_null() {
        let conn = table();
        let tx: &mut dyn WriteTx = &mut SqliteTx { conn: &conn };
        tx.execute(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            args![None::<i64>, None::<&str>],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            args![Some(3), Some("x")],
        )
        .unwrap();
        let rows = tx
            .fetch_all("SELECT a, b FROM t ORDER BY a", args![], |row| {
                Ok((row.int_opt("a")?, row.text_opt("b")?))
            })
            .unwrap();
        assert_eq!(rows, [(None, None), (Some(3), Some("x".to_string()))]);
    }

    #[test]
    fn sqlite_refuses_a_statement_whose_arguments_do_not_match() {
        let conn = table();
        let tx: &mut dyn WriteTx = &mut SqliteTx { conn: &conn };
        // A placeholder without a value is an error, never a NULL bound in its place.
        let missing = tx.execute("INSERT INTO t (a, b) VALUES ($1, $3)", args![1, "x"]);
        assert!(matches!(missing, Err(StoreError::Sqlite(_))), "{missing:?}");
        // Nor is a value without its placeholder silently dropped.
        let extra = tx.execute("INSERT INTO t (a) VALUES ($1)", args![1, "x"]);
        assert!(matches!(extra, Err(StoreError::Sqlite(_))), "{extra:?}");
        // Prepared once with one count, then used with too few: still refused.
        let once = tx.execute_with("INSERT INTO t (a) VALUES ($1)", args![], Prepare::Once);
        assert!(matches!(once, Err(StoreError::Sqlite(_))), "{once:?}");
        let count = tx
            .fetch_all("SELECT COUNT(*) AS n FROM t", args![], |r| r.int("n"))
            .unwrap();
        assert_eq!(count, [0], "nothing was written");
    }
}
