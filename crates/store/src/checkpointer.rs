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
//! checkpoint made the bulk load 15–20 % faster but the write p99 more than twice as long (its
//! `fsync` of the database file delays the commits' `fsync`s of the WAL meanwhile), and 20 ms
//! made no difference to the p99 (BENCHMARKS.md). The writer keeps SQLite's inline
//! checkpoint only as a backstop, at [`WRITER_BACKSTOP_PAGES`], for a checkpointer that falls
//! behind. Durability does not change: a commit is durable once its WAL frames are synced,
//! before any checkpoint, and a checkpoint syncs the WAL before it copies from it.

use crate::Result;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// WAL pages after which the writer checkpoints inline anyway (SQLite's default is 1,000):
/// 64 MiB of 4 KiB pages bounds the WAL if this thread cannot keep up.
pub(crate) const WRITER_BACKSTOP_PAGES: i64 = 16_000;

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
        // As on every connection of the store: the checkpoint syncs what it copied.
        conn.pragma_update(None, "synchronous", "FULL")?;
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
                    // Said once: from now on the writer's backstop checkpoints.
                    tracing::error!(
                        "the SQLite checkpointer has stopped; the writer checkpoints every {} \
                         pages from now on",
                        WRITER_BACKSTOP_PAGES
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
    // One checkpoint per wake-up: the commits made while it ran are covered by the next one.
    while woken.recv().is_ok() {
        checkpoint(&conn);
    }
    // The writer has closed: copy what is left.
    checkpoint(&conn);
}

/// One `PASSIVE` checkpoint: copies as many WAL frames as no reader still needs. Failing is not
/// fatal (the writer's backstop checkpoints), so it is logged, not raised.
fn checkpoint(conn: &Connection) {
    let ran = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match ran {
        Ok((wal_frames, copied)) => {
            tracing::trace!(wal_frames, copied, "checkpointed the WAL")
        }
        Err(e) => tracing::warn!(error = %e, "cannot checkpoint the WAL"),
    }
}
