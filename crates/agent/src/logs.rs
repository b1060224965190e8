//! Machine output logs: the bounded, rotated file every workload writes into, and the agent's
//! HTTP server that hands it to the control plane (which proxies `coffer machines logs`).
//!
//! * `machines/<id>/output.log` receives the workload's stdout and stderr as they come, and
//!   the agent's own lines about the machine, prefixed `[coffer]` (boots, exits, failures).
//! * When a write would take `output.log` past [`MAX_LOG_BYTES`], it is renamed to
//!   `output.log.1` (replacing the previous one) and a new `output.log` is started: a machine
//!   never holds more than twice the limit on disk.
//! * The agent writes no secret value and no token to these files: its own lines name
//!   machines, versions, states and exit statuses. (What the workload prints is the
//!   workload's business.)
//!
//! Server: `GET /v1/machines/{id}/logs?follow=true|false` with `Authorization: Bearer <logs
//! grant>` — a short-lived grant signed by the control plane for this machine on this host —
//! answers `text/plain`: `output.log.1` then `output.log`; with `follow=true` new bytes keep
//! coming (the file is polled every 200 ms) until the client goes away, the machine is
//! destroyed or the agent shuts down. `GET /healthz` and `GET /readyz` answer `ok`.

use crate::api::ControlPlane;
use crate::reconcile::valid_machine_id;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use coffer_http::{ApiError, Metrics};
use serde::Deserialize;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

/// Rotation threshold of `output.log`.
pub const MAX_LOG_BYTES: u64 = 1024 * 1024;
pub const LOG_FILE: &str = "output.log";
pub const ROTATED_LOG_FILE: &str = "output.log.1";
/// How often a follower looks for new bytes.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// The output log of one machine. Cheap to clone (shared by the stdout and stderr pumps and
/// the machine's worker); the file is opened on the first write, so a log that is never
/// written creates nothing.
#[derive(Clone)]
pub struct MachineLog {
    inner: Arc<Mutex<LogInner>>,
}

struct LogInner {
    dir: PathBuf,
    max: u64,
    file: Option<File>,
    size: u64,
    /// Set before the machine's directory is deleted: later writes are dropped.
    closed: bool,
}

impl MachineLog {
    pub fn new(dir: PathBuf) -> Self {
        Self::with_limit(dir, MAX_LOG_BYTES)
    }

    pub fn with_limit(dir: PathBuf, max: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                dir,
                max,
                file: None,
                size: 0,
                closed: false,
            })),
        }
    }

    /// Appends workload output. Errors are logged (without the bytes) and otherwise ignored:
    /// a full disk must not kill the workload.
    pub fn write(&self, bytes: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = inner.write(bytes) {
            tracing::warn!(dir = %inner.dir.display(), error = %e, "cannot write a machine's output log");
        }
    }

    /// Appends one `[coffer] <time> <message>` line: the agent speaking about the machine.
    pub fn note(&self, message: &str) {
        let now = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        let stamp = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        self.write(format!("[coffer] {stamp} {message}\n").as_bytes());
    }

    /// Closes the file for good (the machine's directory is about to be deleted).
    pub fn close(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.closed = true;
        inner.file = None;
    }
}

impl LogInner {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.closed || bytes.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            // Created 0700 if missing, never tightened: with workload users the machine's
            // directory is pass-through (`users`), and the log is 0600 either way.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
            let f = open_append(&self.dir.join(LOG_FILE))?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size > 0 && self.size + bytes.len() as u64 > self.max {
            self.file = None;
            fs::rename(self.dir.join(LOG_FILE), self.dir.join(ROTATED_LOG_FILE))?;
            self.file = Some(open_append(&self.dir.join(LOG_FILE))?);
            self.size = 0;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// What the logs server needs.
#[derive(Clone)]
pub struct LogsState {
    pub machines_dir: PathBuf,
    /// For the host id and the control plane's public key (both change if the host
    /// re-registers).
    pub control_plane: Arc<ControlPlane>,
    /// Becomes `true` when the agent shuts down: followers end their streams.
    pub shutdown: watch::Receiver<bool>,
}

/// The agent's HTTP interface (see the [module documentation](self)).
pub fn router(state: LogsState, metrics: Metrics) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/v1/machines/{machine_id}/logs", get(logs))
        .with_state(state);
    coffer_http::with_common_layers(routes, metrics)
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(state): State<LogsState>,
    UrlPath(machine_id): UrlPath<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = coffer_http::bearer(&headers).ok_or_else(ApiError::unauthorized)?;
    let session = state.control_plane.session();
    let claims = coffer_crypto::machine_token::verify_logs_grant(
        &session.control_plane_key,
        token,
        SystemTime::now(),
    )
    .map_err(|_| ApiError::unauthorized())?;
    if claims.machine_id != machine_id || claims.host_id != session.host_id {
        return Err(ApiError::forbidden(
            "this logs grant is for another machine or host",
        ));
    }
    let Query(query) = query.map_err(|_| ApiError::bad_request("follow must be true or false"))?;
    if !valid_machine_id(&machine_id) {
        return Err(ApiError::not_found("machine"));
    }
    let dir = state.machines_dir.join(&machine_id);
    if !dir.is_dir() {
        return Err(ApiError::not_found("machine")
            .with_hint("the machine has no logs on this host (not booted yet, or destroyed)"));
    }
    let tail = Tail::open(dir, query.follow, state.shutdown.clone());
    let stream = futures_util::stream::unfold(tail, |mut t| async move {
        t.next_chunk().await.map(|chunk| (chunk, t))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Reads a machine's log files in order, then (when following) whatever is appended, across
/// rotations: it keeps the handle of the file it reads, so a rename does not lose the end
/// of the old file.
struct Tail {
    dir: PathBuf,
    follow: bool,
    shutdown: watch::Receiver<bool>,
    /// The rotated file, read first.
    old: Option<tokio::fs::File>,
    /// The current file and its inode.
    cur: Option<(tokio::fs::File, u64)>,
    started: bool,
    buf: Vec<u8>,
}

impl Tail {
    fn open(dir: PathBuf, follow: bool, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            dir,
            follow,
            shutdown,
            old: None,
            cur: None,
            started: false,
            buf: vec![0; 64 * 1024],
        }
    }

    async fn start(&mut self) {
        // The current file first, then the rotated one: if a rotation happens in between,
        // both handles name the same file, and the rotated one is skipped.
        self.cur = open_with_inode(&self.dir.join(LOG_FILE)).await;
        if let Some((f, ino)) = open_with_inode(&self.dir.join(ROTATED_LOG_FILE)).await {
            if self.cur.as_ref().map(|(_, i)| *i) != Some(ino) {
                self.old = Some(f);
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<std::io::Result<Bytes>> {
        if !self.started {
            self.started = true;
            self.start().await;
        }
        loop {
            if let Some(old) = self.old.as_mut() {
                match old.read(&mut self.buf).await {
                    Ok(0) => self.old = None,
                    Ok(n) => return Some(Ok(Bytes::copy_from_slice(&self.buf[..n]))),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            if let Some((cur, _)) = self.cur.as_mut() {
                match cur.read(&mut self.buf).await {
                    Ok(0) => {}
                    Ok(n) => return Some(Ok(Bytes::copy_from_slice(&self.buf[..n]))),
                    Err(e) => return Some(Err(e)),
                }
            }
            if !self.follow {
                return None;
            }
            // At the end of what we have. Was the file rotated (or created)?
            let path = self.dir.join(LOG_FILE);
            match tokio::fs::metadata(&path).await {
                Ok(meta) if self.cur.as_ref().map(|(_, i)| *i) != Some(meta.ino()) => {
                    if let Some(new) = open_with_inode(&path).await {
                        // Finish the old handle (it may have got bytes since the last
                        // read), then go on with the new file.
                        self.old = self.cur.take().map(|(f, _)| f);
                        self.cur = Some(new);
                        continue;
                    }
                }
                Ok(_) => {}
                Err(_) if !self.dir.is_dir() => return None, // destroyed
                Err(_) => {}
            }
            if *self.shutdown.borrow() {
                return None;
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.shutdown.changed() => return None,
            }
        }
    }
}

async fn open_with_inode(path: &Path) -> Option<(tokio::fs::File, u64)> {
    let f = tokio::fs::File::open(path).await.ok()?;
    let ino = f.metadata().await.ok()?.ino();
    Some((f, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(dir: &Path) -> u64 {
        [LOG_FILE, ROTATED_LOG_FILE]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum()
    }

    #[test]
    fn rotation_keeps_the_log_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("m1");
        let log = MachineLog::with_limit(mdir.clone(), 1000);
        // Nothing written, nothing created.
        assert!(!mdir.exists());
        for i in 0..500 {
            log.write(format!("line {i:05} ..........\n").as_bytes());
            assert!(fs::metadata(mdir.join(LOG_FILE)).unwrap().len() <= 1000);
            assert!(total(&mdir) <= 2000);
        }
        let cur = fs::read_to_string(mdir.join(LOG_FILE)).unwrap();
        let old = fs::read_to_string(mdir.join(ROTATED_LOG_FILE)).unwrap();
        // The newest line is in the current file; the rotated file holds the lines right
        // before, with nothing lost at the seam.
        assert!(cur.ends_with("line 00499 ..........\n"));
        let first_cur: u32 = cur[5..10].parse().unwrap();
        let last_old: u32 = old.lines().last().unwrap()[5..10].parse().unwrap();
        assert_eq!(last_old + 1, first_cur);
        // Only the two files.
        assert_eq!(fs::read_dir(&mdir).unwrap().count(), 2);
    }

    #[test]
    fn notes_are_prefixed_and_a_closed_log_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("m1");
        let log = MachineLog::new(mdir.clone());
        log.note("boot failed: vault unavailable: connection refused");
        let text = fs::read_to_string(mdir.join(LOG_FILE)).unwrap();
        assert!(text.starts_with("[coffer] 20"), "{text}");
        assert!(text.ends_with(" boot failed: vault unavailable: connection refused\n"));
        log.close();
        fs::remove_dir_all(&mdir).unwrap();
        log.write(b"late output");
        log.note("late note");
        assert!(!mdir.exists());
    }

    fn tail(dir: &Path, follow: bool) -> (Tail, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (Tail::open(dir.to_path_buf(), follow, rx), tx)
    }

    async fn drain(t: &mut Tail) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = t.next_chunk().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn reads_the_rotated_file_then_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let log = MachineLog::with_limit(dir.path().to_path_buf(), 100);
        let mut written = Vec::new();
        for i in 0..12 {
            let line = format!("{i:02} 345678901234567890\n");
            written.extend_from_slice(line.as_bytes());
            log.write(line.as_bytes());
        }
        let (mut t, _tx) = tail(dir.path(), false);
        let got = drain(&mut t).await;
        // Everything still on disk, in order: the tail of what was written.
        assert!(written.ends_with(&got));
        assert_eq!(got.len() as u64, total(dir.path()));
        assert!(got.starts_with(b"0"));
    }

    #[tokio::test]
    async fn follows_across_a_rotation_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let log = MachineLog::with_limit(dir.path().to_path_buf(), 64);
        log.write(b"first\n");
        let (mut t, tx) = tail(dir.path(), true);
        assert_eq!(&t.next_chunk().await.unwrap().unwrap()[..], b"first\n");
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    log.write(format!("more {i:02}\n").as_bytes());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let mut got = Vec::new();
        let want: Vec<u8> = (0..20)
            .flat_map(|i| format!("more {i:02}\n").into_bytes())
            .collect();
        while got.len() < want.len() {
            got.extend_from_slice(&t.next_chunk().await.unwrap().unwrap());
        }
        writer.await.unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want).unwrap()
        );
        tx.send(true).unwrap();
        assert!(t.next_chunk().await.is_none());
    }

    #[tokio::test]
    async fn a_follower_ends_when_the_machine_is_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let mdir = dir.path().join("m1");
        let log = MachineLog::new(mdir.clone());
        log.write(b"x\n");
        let (mut t, _tx) = tail(&mdir, true);
        assert_eq!(&t.next_chunk().await.unwrap().unwrap()[..], b"x\n");
        log.close();
        fs::remove_dir_all(&mdir).unwrap();
        let end = tokio::time::timeout(Duration::from_secs(5), t.next_chunk()).await;
        assert!(end.unwrap().is_none());
    }
}
