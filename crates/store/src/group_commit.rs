//! Group commit for SQLite's one writer.
//!
//! SQLite has one writer, and with `synchronous=FULL` every commit is an `fsync`. Writes that
//! arrive while another is committing would each wait for the writer and then pay their own
//! transaction and `fsync`. Instead, the writes (secrets versions, apps and their keys,
//! releases) go to one thread, which owns the store's SQLite write connection. It takes every
//! write waiting at that moment, runs them one after the other in a single transaction on
//! SQLite's own API (see `write_tx`) and commits them with a single `fsync`; each caller gets
//! its answer only after that commit, so an acknowledged write is as durable as before.
//!
//! A write that fails must change nothing. A refusal (a stale base version, an unset of a
//! missing name, a release already running, a name taken) is found before the write changes
//! anything (each write says so with [`BodyError::Refused`]), so it is answered and the batch
//! goes on. A write that fails after it
//! began changing things (a database error) rolls its batch back; it gets its error and the
//! batch runs again without it: the writes before it are redone, those after it run as if it
//! had never been sent. The common path pays nothing for this, not even a savepoint per write.
//! A write whose code panics fails the same way, alone.
//!
//! PostgreSQL does not need this: it runs writes on many connections at once and already
//! combines the WAL flushes of concurrent commits.

use crate::checkpointer::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use crate::store::BodyError;
use crate::write_tx::{SqliteTx, WriteTx};
use crate::{Result, StoreError};
use rusqlite::{Connection, OpenFlags};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

/// Most writes per transaction: bounds the work redone when a write of the batch fails, and
/// how long the writes of one batch hold the writer.
const MAX_BATCH: usize = 64;

/// How long the writer waits for another process that holds SQLite's write lock.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Prepared statements kept on the writer's connection: the store's writes are a few dozen
/// statements (multi-row INSERTs of up to `PREPARED_ROWS_MAX` rows among them).
const STATEMENT_CACHE: usize = 128;

/// What a write returns, type-erased on its way through the queue.
pub(crate) type Outcome = Box<dyn Any + Send>;

/// One write: the statements it runs inside the group's transaction. It may run more than
/// once (when a later write of its batch fails and the batch is redone), hence `FnMut`.
pub(crate) type WriteOp = Box<dyn FnMut(&mut dyn WriteTx) -> Result<Outcome, BodyError> + Send>;

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome>>,
}

enum Message {
    Write(Job),
    /// Stop after the writes queued before this one; answer once the connection is closed.
    Close(oneshot::Sender<()>),
}

/// The queue in front of the writer thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Message>,
}

impl GroupCommit {
    /// Opens the writer's connection to the SQLite file at `path` (created already, in WAL
    /// mode) and starts the writer thread: from then on the store's only writer in this
    /// process. The thread ends at [`GroupCommit::close`] or when every clone of the returned
    /// queue is dropped.
    pub(crate) fn start(path: &Path) -> Result<GroupCommit> {
        let conn = open_writer(path)?;
        let checkpointer = Checkpointer::start(path)?;
        let (queue, messages) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("coffer-sqlite-writer".into())
            .spawn(move || writer(conn, checkpointer, messages))
            .map_err(|e| StoreError::NotCommitted(format!("cannot start the writer: {e}")))?;
        Ok(GroupCommit { queue })
    }

    /// Queues one write and waits until it is committed (or refused).
    pub(crate) async fn run(&self, op: WriteOp) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Message::Write(Job { op, reply }))
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Lets the writes already queued finish, then closes the writer's connection. Later
    /// writes fail.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Message::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

fn stopped() -> StoreError {
    StoreError::NotCommitted("the store's writer has stopped (is the daemon shutting down?)".into())
}

fn open_writer(path: &Path) -> Result<Connection> {
    // Never create: the store made the file (mode 0600) and set it to WAL before.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_WAIT)?;
    // As on every connection of the store (engine::SQLITE_PRAGMAS): an acknowledged commit
    // survives a power cut; foreign keys are enforced.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // Most checkpointing runs on a thread of its own; the writer's own checkpoint copies what
    // is left so that the WAL can start over (see `checkpointer`).
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

fn writer(
    conn: Connection,
    mut checkpointer: Checkpointer,
    mut messages: mpsc::UnboundedReceiver<Message>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while closing.is_none() {
        match messages.blocking_recv() {
            Some(Message::Write(job)) => batch.push(job),
            Some(Message::Close(done)) => closing = Some(done),
            None => break,
        }
        // Every write waiting at this moment joins the group.
        while closing.is_none() && batch.len() < MAX_BATCH {
            match messages.try_recv() {
                Ok(Message::Write(job)) => batch.push(job),
                Ok(Message::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() && run_batch(&conn, std::mem::take(&mut batch)) {
            checkpointer.committed();
        }
    }
    // The last checkpoint first, then the connections close.
    drop(checkpointer);
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Commits as many of `batch` as can be, in one transaction; answers every job. Returns
/// whether a write was committed.
fn run_batch(conn: &Connection, mut batch: Vec<Job>) -> bool {
    while !batch.is_empty() {
        // A caller that gave up (its request was dropped) needs no write.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return false;
        }
        match attempt(conn, &mut batch) {
            Attempt::Committed(outcomes) => {
                // A batch whose every write was refused wrote nothing to checkpoint.
                let wrote = outcomes.iter().any(|o| o.is_ok());
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
                return wrote;
            }
            Attempt::JobFailed(i, e) => {
                let job = batch.remove(i);
                let _ = job.reply.send(Err(e));
            }
            Attempt::BatchFailed(e) => {
                // Nothing of the batch was written (BEGIN or COMMIT failed): every write of it,
                // even one that was refused, is answered that it was not committed.
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::NotCommitted(msg.clone())));
                }
                return false;
            }
        }
    }
    false
}

enum Attempt {
    /// Committed; each write's outcome (a refused write is in the batch, unwritten).
    Committed(Vec<Result<Outcome>>),
    /// The write at this index failed; the transaction was rolled back.
    JobFailed(usize, StoreError),
    BatchFailed(StoreError),
}

fn attempt(conn: &Connection, batch: &mut [Job]) -> Attempt {
    let run = |sql: &str| -> Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    let roll_back = || {
        if !conn.is_autocommit() {
            if let Err(e) = run("ROLLBACK") {
                tracing::error!(error = %e, "cannot roll back a group of writes");
            }
        }
    };
    // IMMEDIATE: take the write lock at once, so that another process writing to the same
    // file makes this wait (busy timeout) at BEGIN rather than fail half-way.
    if let Err(e) = run("BEGIN IMMEDIATE") {
        roll_back();
        return Attempt::BatchFailed(e);
    }
    let mut tx = SqliteTx { conn };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (i, job) in batch.iter_mut().enumerate() {
        // A write whose code panics fails alone, like a write the database refused half-way.
        let ran = catch_unwind(AssertUnwindSafe(|| (job.op)(&mut tx))).unwrap_or_else(|_| {
            tracing::error!("a write panicked; it was not committed");
            Err(BodyError::Failed(StoreError::NotCommitted(
                "the write failed (see the daemon's log)".into(),
            )))
        });
        match ran {
            Ok(outcome) => outcomes.push(Ok(outcome)),
            // A database error is never a clean refusal, whatever the op said.
            Err(BodyError::Refused(e)) if !e.is_backend() => outcomes.push(Err(e)),
            Err(BodyError::Refused(e) | BodyError::Failed(e)) => {
                roll_back();
                return Attempt::JobFailed(i, e);
            }
        }
    }
    match run("COMMIT") {
        Ok(()) => Attempt::Committed(outcomes),
        Err(e) => {
            roll_back();
            Attempt::BatchFailed(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{testing, AppName, OpenMode, Store, StoreError};
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &testing::sqlite_url_in(dir.path()),
            OpenMode::CreateIfMissing,
        )
        .await
        .unwrap();
        let panicked: Result<(), StoreError> = store
            .write_tx(|_| -> Result<(), _> { panic!("a bug in a write") })
            .await;
        assert!(matches!(panicked, Err(StoreError::NotCommitted(_))));
        // The writer still commits the next writes.
        let name = AppName::parse("after-the-panic").unwrap();
        store.create_app("id-1", &name).await.unwrap();
        assert_eq!(store.app_by_name(&name).await.unwrap().id, "id-1");
        store.close().await;
    }

    #[tokio::test]
    async fn the_writer_connection_is_set_up_like_every_other() {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::sqlite_url_in(dir.path());
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        let conn = super::open_writer(url.sqlite_path().unwrap()).unwrap();
        let pragma = |name: &str| -> i64 {
            conn.pragma_query_value(None, name, |row| row.get(0))
                .unwrap()
        };
        assert_eq!(pragma("synchronous"), 2, "synchronous = FULL");
        assert_eq!(pragma("foreign_keys"), 1);
        assert_eq!(pragma("busy_timeout"), 5000);
        assert_eq!(
            pragma("wal_autocheckpoint"),
            crate::checkpointer::WRITER_AUTOCHECKPOINT_PAGES,
            "the writer checkpoints what is left every 1,000 pages"
        );
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        drop(conn);
        // And it never creates a database where there was none.
        assert!(super::open_writer(&dir.path().join("absent.db")).is_err());
        assert!(!dir.path().join("absent.db").exists());
        store.close().await;
    }

    /// The writer's own checkpoint waits for 1,000 WAL pages; one small write reaches the
    /// database file only through the checkpointer thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_checkpointer_copies_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::sqlite_url_in(dir.path());
        let db = url.sqlite_path().unwrap().to_path_buf();
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        store
            .create_app("id-ckpt", &AppName::parse("checkpointed").unwrap())
            .await
            .unwrap();
        // The database file alone (no -wal beside it) holds what was checkpointed.
        let in_main_file = || -> bool {
            let copy = tempfile::tempdir().unwrap();
            let path = copy.path().join("main.db");
            // Copied by another process: closing a descriptor of the file in this process
            // would drop every POSIX lock the store's connections hold on it. A copy made
            // while the checkpointer writes may be torn; it then reads as not there yet.
            let copied = std::process::Command::new("cp")
                .arg(&db)
                .arg(&path)
                .status()
                .unwrap();
            assert!(copied.success());
            let Ok(conn) = rusqlite::Connection::open(&path) else {
                return false;
            };
            conn.query_row(
                "SELECT count(*) FROM apps WHERE id = 'id-ckpt'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .is_ok_and(|n| n == 1)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !in_main_file() {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never reached the database file"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_waits_for_another_process_that_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::sqlite_url_in(dir.path());
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        // Another process's writer, in the middle of a transaction.
        let other = rusqlite::Connection::open(url.sqlite_path().unwrap()).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let name = AppName::parse("waited").unwrap();
        let write = tokio::spawn({
            let (store, name) = (store.clone(), name.clone());
            async move { store.create_app("id-waited", &name).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!write.is_finished(), "the write waits for the lock");
        other.execute_batch("COMMIT").unwrap();
        write
            .await
            .unwrap()
            .expect("committed once the lock was free");
        assert_eq!(store.app_by_name(&name).await.unwrap().id, "id-waited");
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closing_commits_what_it_acknowledged_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let url = testing::sqlite_url_in(dir.path());
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        let writes: Vec<_> = (0..40)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let name = AppName::parse(&format!("app-{i}")).unwrap();
                    (
                        name.clone(),
                        store.create_app(&format!("id-{i}"), &name).await,
                    )
                })
            })
            .collect();
        tokio::task::yield_now().await;
        store.close().await;
        let mut acknowledged = Vec::new();
        for write in writes {
            match write.await.unwrap() {
                (name, Ok(_)) => acknowledged.push(name),
                (_, Err(StoreError::NotCommitted(_))) => {}
                (_, Err(e)) => panic!("unexpected error: {e:?}"),
            }
        }
        let after = store
            .create_app("id-late", &AppName::parse("late").unwrap())
            .await;
        assert!(
            matches!(after, Err(StoreError::NotCommitted(_))),
            "{after:?}"
        );

        // Every acknowledged write is in the file, read by a store opened afresh.
        let reopened = Store::open(&url, OpenMode::MustExist).await.unwrap();
        let stored = reopened.list_apps().await.unwrap();
        for name in &acknowledged {
            assert!(stored.iter().any(|a| &a.name == name), "{name} was lost");
        }
        assert_eq!(stored.len(), acknowledged.len());
        reopened.close().await;
    }
}
