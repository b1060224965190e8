//! SQLite: the reads on every request's path (token check, app + listing, a boot's facts, an app's
//! keys and machines, a host agent's host record, a machine, a boot grant's ciphertexts) run on
//! SQLite's own API, on the calling thread.
//!
//! sqlx runs every SQLite connection on a thread of its own and sends it each statement as a
//! message: a read costs two thread hand-offs (a futex wake and a context switch each way), and
//! every value is copied once more into sqlx's `AnyRow`. Under the list benchmark that was half
//! of the daemon's CPU (BENCHMARKS.md, "Where coffer's time goes"); the read itself — a few
//! index lookups in pages already in memory — takes tens of microseconds. So these reads run
//! directly, on the tokio worker that asks, which is acceptable for reads that short:
//! * in WAL mode readers never wait for the writer. They can find the database busy only while
//!   it is being recovered after a crash, or when another process holds it in exclusive mode;
//!   then a read waits at most [`BUSY_WAIT_MS`] here and reports [`Busy`], and the store runs
//!   it on sqlx's pool instead, whose threads may wait longer without stopping a tokio worker;
//! * each is one statement over one app's or one machine's rows, through indexes.
//!
//! Longer reads (lists of all apps, histories, exports) stay on sqlx's pool.
//!
//! A connection is given back only after a read that ran to the end; one whose read failed is
//! closed, and a new one is opened when needed.

use crate::write_tx::{bind, numbered, Arg};
use crate::{Result, StoreError, StoreRow};
use rusqlite::{Connection, OpenFlags, Row};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Idle connections kept for reuse, at least: one read runs per tokio worker at a time, so one
/// per core is enough; more are opened when needed and closed after their read.
const IDLE_MIN: usize = 8;

/// How long a read waits here for a busy database before it is handed to the pool.
const BUSY_WAIT_MS: u64 = 20;

/// The database was busy before the read returned anything (see the module's comment).
#[derive(Debug)]
pub(crate) struct Busy;

/// Prepared statements kept per connection (the hot reads are a handful of statements).
const STATEMENT_CACHE: usize = 32;

pub(crate) struct SqliteReads {
    path: PathBuf,
    /// `None` once the store is closed.
    idle: Mutex<Option<Vec<Reader>>>,
    idle_max: usize,
}

/// A reading connection, with what it keeps of the statements it ran.
struct Reader {
    conn: Connection,
    /// By the caller's SQL text; at most [`STATEMENT_CACHE`] statements, like the prepared ones.
    prepared: HashMap<String, Prepared>,
}

/// What a reading connection keeps of one statement, so that a read neither rewrites its SQL
/// nor copies its column names (asked of SQLite once per statement and connection rather than
/// at every read: copying them took 2.7 % of a list).
struct Prepared {
    /// The SQL as SQLite gets it (`?n` placeholders, [`numbered`]).
    numbered: String,
    columns: Vec<String>,
}

impl SqliteReads {
    /// `path`: the database file, already created and in WAL mode (by the store's writer).
    pub(crate) fn new(path: PathBuf) -> SqliteReads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let idle_max = cores.max(IDLE_MIN);
        SqliteReads {
            path,
            idle: Mutex::new(Some(Vec::with_capacity(idle_max))),
            idle_max,
        }
    }

    /// Runs `sql` (`$n` parameters, bound to `args[n - 1]`) and maps every row with `map`.
    /// `Ok(Err(Busy))`: the database was busy, no row was mapped; run the read elsewhere.
    pub(crate) fn read<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut map: impl FnMut(&dyn StoreRow) -> Result<T>,
    ) -> Result<Result<Vec<T>, Busy>> {
        let mut reader = self.take()?;
        let mut mapped_any = false;
        let mut run = || -> Result<Vec<T>> {
            let Reader { conn, prepared } = &mut reader;
            if !prepared.contains_key(sql) {
                if prepared.len() >= STATEMENT_CACHE {
                    prepared.clear();
                }
                let numbered = numbered(sql);
                let columns = column_names(&*conn.prepare_cached(&numbered)?);
                prepared.insert(sql.to_string(), Prepared { numbered, columns });
            }
            let kept = prepared.get_mut(sql).expect("kept just above");
            let mut statement = conn.prepare_cached(&kept.numbered)?;
            if kept.columns.len() != statement.column_count() {
                // Re-prepared after a schema change (`SELECT *`): its names are asked again.
                kept.columns = column_names(&statement);
            }
            let columns = &kept.columns;
            bind(&mut statement, args)?;
            let mut rows = statement.raw_query();
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                mapped_any = true;
                out.push(map(&NamedRow::new(row, columns))?);
            }
            Ok(out)
        };
        let result = run();
        if result.is_ok() {
            self.give_back(reader);
        }
        match result {
            Err(StoreError::Sqlite(e)) if is_busy(&e) && !mapped_any => Ok(Err(Busy)),
            other => other.map(Ok),
        }
    }

    fn take(&self) -> Result<Reader> {
        let idle = {
            let mut idle = self.idle.lock().expect("sqlite readers lock");
            let Some(idle) = idle.as_mut() else {
                return Err(StoreError::NotCommitted("the store is closed".into()));
            };
            idle.pop()
        };
        match idle {
            Some(reader) => Ok(reader),
            None => self.open(),
        }
    }

    fn give_back(&self, reader: Reader) {
        let mut idle = self.idle.lock().expect("sqlite readers lock");
        if let Some(idle) = idle.as_mut() {
            if idle.len() < self.idle_max {
                idle.push(reader);
            }
        }
    }

    fn open(&self) -> Result<Reader> {
        // Never create: the store made the file (mode 0600) before any read.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        // A short wait (see the module's comment); `query_only`: these connections never write,
        // whatever SQL reaches them.
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_WAIT_MS))?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Reader {
            conn,
            prepared: HashMap::new(),
        })
    }

    /// Closes the idle connections; later reads fail ("the store is closed").
    pub(crate) fn close(&self) {
        self.idle.lock().expect("sqlite readers lock").take();
    }

    /// The most column-name sets an idle connection keeps.
    #[cfg(test)]
    fn kept_column_sets(&self) -> usize {
        let idle = self.idle.lock().unwrap();
        let idle = idle.as_ref().map_or(&[][..], |idle| &idle[..]);
        idle.iter().map(|r| r.prepared.len()).max().unwrap_or(0)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |idle| idle.len())
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// A statement's column names, looked up once per statement: rusqlite's lookup by name asks
/// SQLite for every column's name at each access (5 % of a list).
pub(crate) fn column_names(statement: &rusqlite::Statement<'_>) -> Vec<String> {
    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(String::from)
        .collect();
    debug_assert!(
        columns
            .iter()
            .all(|c| columns.iter().filter(|d| *d == c).count() == 1),
        "every column of a statement has its own name (alias joined columns): {columns:?}"
    );
    columns
}

/// A row with its statement's column names (from [`column_names`]).
pub(crate) struct NamedRow<'a> {
    row: &'a Row<'a>,
    columns: &'a [String],
}

impl<'a> NamedRow<'a> {
    pub(crate) fn new(row: &'a Row<'a>, columns: &'a [String]) -> NamedRow<'a> {
        NamedRow { row, columns }
    }

    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> Result<T> {
        let index = self
            .columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| rusqlite::Error::InvalidColumnName(column.to_string()))?;
        Ok(self.row.get(index)?)
    }
}

impl StoreRow for NamedRow<'_> {
    fn text(&self, column: &str) -> Result<String> {
        self.get(column)
    }
    fn text_opt(&self, column: &str) -> Result<Option<String>> {
        self.get(column)
    }
    fn int(&self, column: &str) -> Result<i64> {
        self.get(column)
    }
    fn int_opt(&self, column: &str) -> Result<Option<i64>> {
        self.get(column)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        self.get(column)
    }
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>> {
        self.get(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write_tx::args;
    use crate::{DatabaseUrl, OpenMode};

    fn rows<T>(r: Result<Result<Vec<T>, Busy>>) -> Vec<T> {
        r.expect("read").expect("not busy")
    }

    #[tokio::test]
    async fn only_a_finished_read_gives_its_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = crate::Store::open(&DatabaseUrl::sqlite(&path), OpenMode::CreateIfMissing)
            .await
            .unwrap();
        let reads = SqliteReads::new(path);
        let select =
            |reads: &SqliteReads| reads.read("SELECT $1 AS v", args!["x"], |r| r.text("v"));

        assert_eq!(rows(select(&reads)), ["x"]);
        assert_eq!(
            reads.idle_count(),
            1,
            "a finished read keeps its connection"
        );

        // A read whose mapping fails drops its connection.
        let failed = reads.read("SELECT $1 AS v", args!["x"], |r| r.int("no_such_column"));
        assert!(matches!(failed, Err(StoreError::Sqlite(_))), "{failed:?}");
        assert_eq!(reads.idle_count(), 0);

        // Bad SQL: a clear error, and the connection it took is not kept.
        assert_eq!(rows(select(&reads)), ["x"]);
        assert_eq!(reads.idle_count(), 1);
        let bad = reads.read("SELEC nonsense", args!["x"], |r| r.int("v"));
        assert!(matches!(bad, Err(StoreError::Sqlite(_))), "{bad:?}");
        assert_eq!(reads.idle_count(), 0);

        // Parameters by number, wherever they first appear; a missing value is refused.
        let numbered = reads.read(
            "SELECT $2 || $1 AS v, CAST($1 AS TEXT) AS w",
            args!["a", "b"],
            |r| Ok((r.text("v")?, r.text("w")?)),
        );
        assert_eq!(rows(numbered), [("ba".to_string(), "a".to_string())]);
        let short = reads.read("SELECT $2 || $1 AS v", args!["a"], |r| r.text("v"));
        assert!(matches!(short, Err(StoreError::Sqlite(_))), "{short:?}");

        // These connections never write.
        let write = reads.read(
            "INSERT INTO coffer_schema (version) VALUES (CAST($1 AS BIGINT)) RETURNING version",
            args!["99"],
            |r| r.int("version"),
        );
        match write {
            Err(StoreError::Sqlite(e)) => assert_eq!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ReadOnly),
                "{e}"
            ),
            other => panic!("a hot-read connection wrote: {other:?}"),
        }

        // Each statement's columns are its own, however many statements one connection ran.
        assert_eq!(rows(select(&reads)), ["x"]);
        for i in 0..STATEMENT_CACHE * 2 + 1 {
            let sql = format!("SELECT $1 || '{i}' AS c{i}, 7 AS n");
            let got = reads.read(&sql, args!["y"], |r| {
                Ok((r.text(&format!("c{i}"))?, r.int("n")?))
            });
            assert_eq!(rows(got), [(format!("y{i}"), 7)]);
            assert_eq!(rows(select(&reads)), ["x"]);
        }
        let kept = reads.kept_column_sets();
        assert!(
            (1..=STATEMENT_CACHE).contains(&kept),
            "{kept} column-name sets kept"
        );
        let other = reads.read("SELECT $1 AS w", args!["z"], |r| r.text("v"));
        assert!(
            other.is_err(),
            "the columns of another statement: {other:?}"
        );
        assert_eq!(rows(select(&reads)), ["x"]);

        reads.close();
        assert!(
            matches!(select(&reads), Err(StoreError::NotCommitted(_))),
            "a closed store refuses reads"
        );
        store.close().await;
    }
}
