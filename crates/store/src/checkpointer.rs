//! WAL checkpoints for SQLite, off the writer's thread.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a checkpoint copies them back into
//! the database file (and `fsync`s it) so that the WAL can start over. SQLite runs that
//! checkpoint inline, in the commit that takes the WAL past 1,000 pages: the writer thread
//! (`group_commit`) then stops committing while it copies and syncs, and every write queued
//! behind it waits. Measured on the benchmark machine with checkpoints switched off as the
//! upper bound: write p99 14 ms instead of 21–25 ms (BENCHMARKS.md).
//!
//! So a thread of its own, with its own connection, runs the checkpoints: the writer wakes it
//! after each commit and it runs a `PASSIVE` checkpoint, which never blocks the writer or the
//! readers; commits made while one runs are copied by the next. Small checkpoints right behind
//! the writer gave the best tail latency: letting commits gather for 200 ms before each
//! checkpoint made the bulk load 12–23 % faster but the write p99 more than twice as long (its
//! `fsync` of the database file delays the commits' `fsync`s of the WAL meanwhile), and 20 ms
//! made no difference to the p99 (BENCHMARKS.md).
//!
//! The writer keeps SQLite's own checkpoint at [`WRITER_AUTOCHECKPOINT_PAGES`] all the same,
//! because the WAL starts over only at a write transaction that finds every frame of it copied,
//! and under steady writes a checkpoint on another thread almost never leaves it so: the next
//! commit lands while it runs (measured: the WAL grew to 64 MB). The writer's checkpoint, after
//! its commit and before its next transaction, copies only what this thread has not copied yet
//! (the last commits' pages), so the WAL starts over about every 1,000 pages as before, for a
//! small part of the cost. It is also what checkpoints should this thread stop.
//!
//! Durability does not change: a commit is durable once its WAL frames are synced, before any
//! checkpoint; a checkpoint syncs the WAL before it copies from it and the database file before
//! the copied frames may be overwritten.

use crate::Result;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long opening the checkpointer's connection may wait for a lock (as the writer does).
const OPEN_BUSY_WAIT: Duration = Duration::from_secs(5);

/// WAL pages after which the writer checkpoints inline too, so that the WAL starts over (see
/// the module's comment). SQLite's default, set explicitly because the design relies on it.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: i64 = 1_000;

/// The writer's handle on the checkpointer thread.
pub(crate) struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to the SQLite file at `path` (created already, in WAL mode) and
    /// starts the thread.
    pub(crate) fn start(path: &Path) -> Result<Checkpointer> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        // Opening may have to wait like the writer's (another process recovering the file).
        conn.busy_timeout(OPEN_BUSY_WAIT)?;
        // As on every connection of the store: the checkpoint syncs what it copied.
        conn.pragma_update(None, "synchronous", "FULL")?;
        // A PASSIVE checkpoint never waits for a lock anyway; nothing else on this connection
        // should either.
        conn.busy_timeout(Duration::ZERO)?;
        // One pending wake-up is enough: it stands for every commit since the last checkpoint.
        let (wake, woken) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("coffer-sqlite-checkpointer".into())
            .spawn(move || run(conn, woken))
            .map_err(|e| {
                crate::StoreError::NotCommitted(format!("cannot start the checkpointer: {e}"))
            })?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }

    /// Tells the thread that a commit added to the WAL. Never blocks.
    pub(crate) fn committed(&mut self) {
        if let Some(wake) = &self.wake {
            match wake.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {
                    // Said once: from now on the writer's own checkpoints do it all.
                    tracing::error!(
                        "the SQLite checkpointer has stopped; the writer checkpoints every {} \
                         pages from now on",
                        WRITER_AUTOCHECKPOINT_PAGES
                    );
                    self.wake = None;
                }
            }
        }
    }
}

impl Drop for Checkpointer {
    /// Runs the last checkpoint and waits for the thread to close its connection.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: Connection, woken: mpsc::Receiver<()>) {
    let mut failing = false;
    // One checkpoint per wake-up: the commits made while it ran are covered by the next one.
    while woken.recv().is_ok() {
        checkpoint(&conn, &mut failing);
    }
    // The writer has closed: copy what is left.
    checkpoint(&conn, &mut failing);
}

/// One `PASSIVE` checkpoint: copies as many WAL frames as no reader still needs. Failing is not
/// fatal (the writer's own checkpoints go on), so it is logged, once per run of failures (a
/// full disk would otherwise log at every commit), not raised.
fn checkpoint(conn: &Connection, failing: &mut bool) {
    let ran = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match ran {
        Ok((busy, wal_frames, copied)) => {
            if std::mem::take(failing) {
                tracing::info!("WAL checkpoints work again");
            }
            tracing::trace!(busy, wal_frames, copied, "checkpointed the WAL")
        }
        Err(e) => {
            if !std::mem::replace(failing, true) {
                tracing::warn!(error = %e, "cannot checkpoint the WAL (said once until it works again)");
            }
        }
    }
}
