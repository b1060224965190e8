//! PostgreSQL: connections for the reads on every request's path (token check, app + listing,
//! a boot's facts), kept by the store itself rather than in a sqlx pool. (On SQLite those reads
//! run on SQLite's own API instead, see `sqlite_reads`.)
//!
//! sqlx's pool pings every connection when it goes back to the pool, to find connections left
//! in a bad state by a query that was cancelled half-way: one more network round trip per
//! read, a large share of a cheap one (BENCHMARKS.md, "Where coffer's time goes"). Here a
//! connection goes back only when its read ran to the end; a read that was cancelled or failed
//! drops its connection instead, and a new one is opened when needed. So no ping is needed.

use crate::{engine, Engine, Result, StoreError};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long a read waits for a connection (a free one, or a new one to be opened), as the
/// pools do.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection idle longer than this is closed rather than reused (a server or a NAT may have
/// dropped it meanwhile), as the pools' `idle_timeout` does.
const MAX_IDLE: Duration = Duration::from_secs(600);

pub(crate) struct Readers {
    engine: Engine,
    options: AnyConnectOptions,
    /// Connections ready for a read, with when each was last given back.
    idle: Mutex<Vec<(Instant, AnyConnection)>>,
    permits: Semaphore,
}

/// One connection, lent for one read. Call [`Reader::done`] after the read succeeded.
pub(crate) struct Reader<'a> {
    conn: Option<AnyConnection>,
    readers: &'a Readers,
    finished: bool,
    _permit: SemaphorePermit<'a>,
}

impl Readers {
    pub(crate) fn new(engine: Engine, options: AnyConnectOptions, max: usize) -> Readers {
        Readers {
            engine,
            options,
            idle: Mutex::new(Vec::with_capacity(max)),
            permits: Semaphore::new(max),
        }
    }

    pub(crate) async fn get(&self) -> Result<Reader<'_>> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn acquire(&self) -> Result<Reader<'_>> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::NotCommitted("the store is closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().expect("readers lock");
            // The newest are at the end; drop the ones idle for too long.
            idle.retain(|(since, _)| since.elapsed() < MAX_IDLE);
            idle.pop()
        };
        let conn = match idle {
            Some((_, conn)) => conn,
            None => {
                let mut conn = self.options.connect().await?;
                engine::set_up_connection(self.engine, &mut conn).await?;
                conn
            }
        };
        Ok(Reader {
            conn: Some(conn),
            readers: self,
            finished: false,
            _permit: permit,
        })
    }

    /// Closes the idle connections; later reads fail ("the store is closed").
    pub(crate) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.idle.lock().expect("readers lock"));
        for (_, conn) in idle {
            let _ = conn.close().await;
        }
    }
}

impl Reader<'_> {
    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        self.conn
            .as_mut()
            .expect("a reader's connection is there until it is dropped")
    }

    /// The read ran to the end: the connection can serve the next one.
    pub(crate) fn done(mut self) {
        self.finished = true;
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.finished && !self.readers.permits.is_closed() {
                let mut idle = self.readers.idle.lock().expect("readers lock");
                idle.push((Instant::now(), conn));
            }
            // Otherwise the connection is dropped, which closes it.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatabaseUrl, OpenMode};
    use std::str::FromStr;

    #[tokio::test]
    async fn only_a_finished_read_gives_its_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::sqlite(dir.path().join("r.db"));
        let store = crate::Store::open(&url, OpenMode::CreateIfMissing)
            .await
            .unwrap();
        let options = AnyConnectOptions::from_str(&format!(
            "sqlite://{}?mode=rw",
            dir.path().join("r.db").display()
        ))
        .unwrap();
        let readers = Readers::new(Engine::Sqlite, options, 2);
        let idle = |r: &Readers| r.idle.lock().unwrap().len();

        let mut r = readers.get().await.unwrap();
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(one, 1);
        r.done();
        assert_eq!(idle(&readers), 1, "a finished read keeps its connection");

        // A read abandoned half-way (cancelled, or failed) drops its connection.
        let r = readers.get().await.unwrap();
        assert_eq!(idle(&readers), 0);
        drop(r);
        assert_eq!(idle(&readers), 0);

        // Connections are set up like the pool's.
        let mut r = readers.get().await.unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(r.conn())
            .await
            .unwrap();
        assert_eq!(fk, 1);
        r.done();

        readers.close().await;
        assert_eq!(idle(&readers), 0);
        assert!(readers.get().await.is_err(), "a closed store refuses reads");
        store.close().await;
    }
}
