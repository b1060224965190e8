//! Group commit for SQLite's one writer.
//!
//! SQLite has one writer, and with `synchronous=FULL` every commit is an `fsync`. Writes that
//! arrive while another is committing would each wait for the writer and then pay their own
//! transaction and `fsync`. Instead, the frequent writes (secrets versions, creating an app and
//! its keys, completing a release) go to one task that takes every write waiting at that
//! moment, runs them one after the other in a single transaction and commits them with a
//! single `fsync`; each caller gets its answer only after that commit, so an acknowledged
//! write is as durable as before.
//!
//! A write that fails must change nothing. A refusal (a stale base version, an unset of a
//! missing name, a release already running, a name taken) is found before the write changes
//! anything (each write says so with [`BodyError::Refused`]), so it is answered and the batch
//! goes on. A write that fails after it
//! began changing things (a database error) rolls its batch back; it gets its error and the
//! batch runs again without it: the writes before it are redone, those after it run as if it
//! had never been sent. The common path pays nothing for this, not even a savepoint per write.
//!
//! PostgreSQL does not need this: it runs writes on many connections at once and already
//! combines the WAL flushes of concurrent commits.

use crate::store::BodyError;
use crate::{engine, Engine, Result, StoreError};
use sqlx::{AnyConnection, AnyPool};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};

/// Most writes per transaction: bounds the work redone when a write of the batch fails, and
/// how long the writes of one batch hold the writer.
const MAX_BATCH: usize = 64;

/// What a write returns, type-erased on its way through the queue.
pub(crate) type Outcome = Box<dyn Any + Send>;

/// One write: the statements it runs inside the group's transaction. It may run more than
/// once (when a later write of its batch fails and the batch is redone), hence `FnMut`.
pub(crate) type WriteOp = Box<
    dyn for<'c> FnMut(
            &'c mut AnyConnection,
        )
            -> Pin<Box<dyn Future<Output = Result<Outcome, BodyError>> + Send + 'c>>
        + Send,
>;

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// The queue in front of the writer task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Starts the writer task on the current tokio runtime. It ends when every clone of the
    /// returned queue is dropped.
    pub(crate) fn start(engine: Engine, write: AnyPool) -> GroupCommit {
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(writer(engine, write, jobs));
        GroupCommit { queue }
    }

    /// Queues one write and waits until it is committed (or refused).
    pub(crate) async fn run(&self, op: WriteOp) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { op, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::NotCommitted("the store's writer has stopped (is the daemon shutting down?)".into())
}

async fn writer(engine: Engine, write: AnyPool, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Each group in a task of its own: should a write's code panic, that group's callers
        // get an error (their replies are dropped, the transaction rolls back as it is
        // dropped) and the writer goes on with the next group.
        let group = tokio::spawn(run_batch(engine, write.clone(), std::mem::take(&mut batch)));
        if let Err(e) = group.await {
            tracing::error!(error = %e, "a group of writes failed; its writes were not committed");
        }
    }
}

/// Commits as many of `batch` as can be, in one transaction; answers every job.
async fn run_batch(engine: Engine, write: AnyPool, mut batch: Vec<Job>) {
    while !batch.is_empty() {
        // A caller that gave up (its request was dropped) needs no write.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        match attempt(engine, &write, &mut batch).await {
            Attempt::Committed(outcomes) => {
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
                return;
            }
            Attempt::JobFailed(i, e) => {
                let job = batch.remove(i);
                let _ = job.reply.send(Err(e));
            }
            Attempt::BatchFailed(e) => {
                // Nothing of the batch was written (BEGIN or COMMIT failed): each write gets
                // the same answer it would have had alone.
                let msg = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::NotCommitted(msg.clone())));
                }
                return;
            }
        }
    }
}

enum Attempt {
    /// Committed; each write's outcome (a refused write is in the batch, unwritten).
    Committed(Vec<Result<Outcome>>),
    /// The write at this index failed; the transaction was rolled back.
    JobFailed(usize, StoreError),
    BatchFailed(StoreError),
}

async fn attempt(engine: Engine, write: &AnyPool, batch: &mut [Job]) -> Attempt {
    let begun = match engine::begin_write(engine) {
        Some(begin) => write.begin_with(begin).await,
        None => write.begin().await,
    };
    let mut tx = match begun {
        Ok(tx) => tx,
        Err(e) => return Attempt::BatchFailed(e.into()),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for (i, job) in batch.iter_mut().enumerate() {
        match (job.op)(&mut tx).await {
            Ok(outcome) => outcomes.push(Ok(outcome)),
            // A database error is never a clean refusal, whatever the op said.
            Err(BodyError::Refused(e)) if !e.is_backend() => outcomes.push(Err(e)),
            Err(BodyError::Refused(e) | BodyError::Failed(e)) => {
                let _ = tx.rollback().await;
                return Attempt::JobFailed(i, e);
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Attempt::Committed(outcomes),
        Err(e) => Attempt::BatchFailed(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use crate::{testing, OpenMode, Store, StoreError};

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
            .write_tx(Box::new(|_| Box::pin(async { panic!("a bug in a write") })))
            .await;
        assert!(matches!(panicked, Err(StoreError::NotCommitted(_))));
        // The writer still commits the next writes.
        let name = coffer_core::AppName::parse("after-the-panic").unwrap();
        store.create_app("id-1", &name).await.unwrap();
        assert_eq!(store.app_by_name(&name).await.unwrap().id, "id-1");
        store.close().await;
    }
}
