//! Release orchestration: roll a secrets version out to the app's running machines, one at a
//! time — the first is the canary — each restarted with the new environment and watched for
//! the app's crash window; if one crashes (or fails to boot) inside its window, put every
//! updated machine back on the previous secrets and fail the release loudly.
//!
//! Health checks: a machine with a check (`machines run --check-http`/`--check-tcp`) that its
//! host reports `unhealthy` at the watched generation inside the window fails the release
//! exactly like a crash. The host reports `unhealthy` after two consecutive failed probes (one
//! a second, the first a second after the start), so a failing check shows about 2 s after the
//! start. A workload that has not opened its port by then counts as failing too: with a check,
//! a workload must listen within about 2 s of starting, or every release whose crash window is
//! longer than that fails (there is no start-up grace period).
//!
//! Crash safety: every step is a committed store change, and the orchestrator keeps no state
//! of its own. The order of the rollback matters — machines are moved back *before* the
//! release is marked failed — so that a crash at any point leaves either a `running` release
//! (which a live API process takes over and rolls back, see below) or a settled one with every
//! machine on one secrets version. A release interrupted by a crash is failed and rolled back
//! rather than resumed: the crash window of the machine it was watching cannot be trusted any
//! more.
//!
//! Several API replicas: one owner per release, fenced. A release is created owned by the
//! process that wrote it, under a fencing token of its own (a random id of the process and a
//! counter, [`Owners`]), with a lease of [`coffer_store::RELEASE_LEASE`] that the owner's writes renew
//! (progress about every second while watching, [`RENEW_EVERY`] at least while it waits for a
//! boot). Every store change made for the release — moving a machine, progress, completing,
//! failing — carries the token and applies only while the release is `running` under it, in
//! the same transaction (`coffer_store`'s releases module says how). When a change is refused
//! ([`StoreError::Fenced`]), the orchestration stops touching the release: it was settled or
//! taken over by someone else. Taking over: every API process sweeps the store every
//! [`SWEEP_EVERY`] (and once at start, [`recover`]) and takes over each `running` release whose
//! lease has passed — its owner died or lost the store — under a fresh token, in one
//! statement, then rolls it back, fenced like any orchestration: of two replicas that sweep at
//! once one takes it, and an owner that comes back after its lease was taken finds its next
//! write refused. A live owner's release is never touched. So a release whose owner is
//! killed is settled by some live replica (or the restarted one) within about
//! `RELEASE_LEASE + SWEEP_EVERY` (20 s).

use crate::ApiState;
use coffer_core::wire::machines::{DesiredState, MachineState};
use coffer_store::{now_micros, MachineRecord, ReleaseLease, ReleaseRecord, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often an orchestration renews its lease while it writes nothing else (waiting for a
/// boot): well within [`coffer_store::RELEASE_LEASE`].
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How often each API process looks for releases whose owner stopped renewing them.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Fencing tokens for the releases this process orchestrates: a random id of the process and
/// a counter, so that every claim (a new release, a take-over) has a token of its own — two
/// tasks of one process never pass each other's fence either.
pub struct Owners {
    process: String,
    next: AtomicU64,
}

impl Owners {
    pub fn new() -> Self {
        Self {
            process: hex::encode(coffer_crypto::random_array::<8>()),
            next: AtomicU64::new(1),
        }
    }

    /// A token not given out before.
    pub fn next(&self) -> String {
        format!(
            "{}{}",
            self.prefix(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// What every token of this process starts with.
    pub fn prefix(&self) -> String {
        format!("{}-", self.process)
    }
}

impl Default for Owners {
    fn default() -> Self {
        Self::new()
    }
}

/// Why an orchestration stopped before the release was settled by it.
#[derive(Debug)]
enum Halt {
    /// The release is no longer running under this orchestration's token: settled or taken
    /// over elsewhere. Nothing more to do here.
    Fenced,
    /// The store failed; the release is still ours to settle.
    Store(StoreError),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced => Halt::Fenced,
            e => Halt::Store(e),
        }
    }
}

/// How long a restarted machine may take to report `started` before the release fails.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Re-read the store at least this often while waiting (reports from other replicas).
const TICK: Duration = Duration::from_millis(250);

/// How a machine takes part in a release, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Running, or about to (an `unhealthy` machine runs too): restarted with the new secrets
    /// and watched; a crash or a failed check inside the window fails the release.
    Running,
    /// Meant to run and down only for now: it exited and its restart policy restarts it, or
    /// its boot failed and its host retries it, or the user just started it and its host has
    /// not said so yet. Its next boot would read the machine's secrets version, so it is
    /// moved to the new one (and restarted at once: a new generation skips the backoff) and
    /// watched like the others, after them. But a crash of it does not fail the release.
    ///
    /// Why: such a machine was already failing on the previous secrets, so its crash is no
    /// evidence against the new ones, and rolling back would put it back on secrets it also
    /// crashed with. Counting it would fail every release of the app for as long as one
    /// machine is broken — including the release that would fix it, when what it lacks is a
    /// secret (the crash-looping machine waiting for its `DATABASE_URL`). Its failure is
    /// recorded in the release's progress and the log instead; if the release fails because
    /// of another machine, it goes back to the previous secrets with the others.
    Retrying,
}

/// The part `m` takes in a release. Stopped machines, and machines that exited for good
/// (restart policy `no`, or `on-failure` after a clean exit), take none: `machines start`
/// boots them with the deployed secrets.
fn part(m: &MachineRecord) -> Option<Part> {
    if m.desired != DesiredState::Running || m.destroyed_at.is_some() {
        return None;
    }
    match m.state {
        MachineState::Pending
        | MachineState::Starting
        | MachineState::Started
        | MachineState::Unhealthy => Some(Part::Running),
        // A report about an older generation: the host has not acted on the latest change
        // (a `machines start`) yet, and will boot it.
        MachineState::Exited | MachineState::Stopped | MachineState::Failed
            if m.state_generation < m.generation =>
        {
            Some(Part::Retrying)
        }
        // The agent retries a failed boot with a backoff, whatever the restart policy.
        MachineState::Failed => Some(Part::Retrying),
        MachineState::Exited => {
            let restarts = match m.exit_status {
                Some(status) => m.config.restart.restarts_after(status),
                None => m.config.restart != coffer_core::wire::machines::RestartPolicy::No,
            };
            restarts.then_some(Part::Retrying)
        }
        MachineState::Stopped | MachineState::Destroyed => None,
    }
}

/// The machines a release updates, in order: those running first (the canary is one of
/// them when there is any), then those retrying.
fn rollout(machines: Vec<MachineRecord>) -> Vec<(MachineRecord, Part)> {
    let mut out: Vec<(MachineRecord, Part)> = machines
        .into_iter()
        .filter_map(|m| part(&m).map(|p| (m, p)))
        .collect();
    // Stable: oldest first within each part.
    out.sort_by_key(|(_, p)| *p == Part::Retrying);
    out
}

/// Starts a release: completes it at once when no machine of the app takes part (so that the
/// next write is not refused), else orchestrates it in the background.
///
/// Infallible on purpose: the caller's write is committed, and its release exists, so the
/// write must be answered as done. Any failure here hands the release to the background
/// orchestration, which retries until the release is settled.
pub async fn start(s: &ApiState, release: ReleaseRecord) {
    // An app without machines: the store recorded the release complete with the write.
    if release.status != coffer_store::ReleaseStatus::Running {
        return;
    }
    let Some(lease) = release.lease() else {
        // Never so for a release this process just created running.
        tracing::error!(app_id = %release.app_id, version = release.version, "a running release without an owner; the sweep takes it over");
        return;
    };
    match complete_if_nothing_to_do(s, &release, &lease).await {
        Ok(true) => return,
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(app_id = %release.app_id, version = release.version, error = %e, "could not start the release; the background orchestration takes it over");
        }
    }
    spawn(s.clone(), release, lease, Task::Run);
}

/// `Ok(true)` when no machine takes part in the release and it is now settled (by this
/// orchestration, or by another that took it over).
async fn complete_if_nothing_to_do(
    s: &ApiState,
    release: &ReleaseRecord,
    lease: &ReleaseLease,
) -> Result<bool, StoreError> {
    let machines = s.store.app_machines(&release.app_id).await?;
    if machines.iter().any(|m| part(m).is_some()) {
        return Ok(false);
    }
    match s.store.complete_release(lease).await {
        Ok(_) | Err(StoreError::Fenced) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The first wait before the background orchestration retries after a store failure; it
/// doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a background orchestration does first.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    /// Roll the release out.
    Run,
    /// Roll it back (a release taken over from an owner that stopped), for this reason.
    RollBack(&'static str),
}

/// The reason of a release taken over from an owner that stopped renewing its lease.
const INTERRUPTED: &str =
    "interrupted: the control plane orchestrating the release stopped during it";

/// Orchestrates a release in the background under `lease`, until it is settled or this
/// orchestration is fenced out.
///
/// A store failure mid-release leaves it `running`; the task then rolls it back (machines to
/// the previous secrets, release failed), retrying with a backoff of [`RETRY_FIRST`] doubling
/// to [`RETRY_MAX`] until the release is no longer `running` under its lease (settled by this
/// task, taken over by a sweep once the lease passed, or gone with its app). The sweep also
/// covers a process that dies meanwhile. A release whose start failed before any machine was
/// touched is simply run here from the beginning.
pub fn spawn(s: ApiState, release: ReleaseRecord, lease: ReleaseLease, task: Task) {
    tokio::spawn(async move {
        let (app_id, version) = (release.app_id.clone(), release.version);
        let mut outcome = match task {
            Task::Run => run(&s, release, &lease).await,
            Task::RollBack(reason) => roll_back(&s, &release, &lease, reason).await,
        };
        let mut delay = RETRY_FIRST;
        loop {
            match outcome {
                Ok(()) => return,
                Err(Halt::Fenced) => {
                    tracing::warn!(app_id, version, "the release is no longer this orchestration's (settled or taken over elsewhere); leaving it");
                    return;
                }
                Err(Halt::Store(e)) => {
                    tracing::error!(app_id, version, error = %e, retry_in_secs = delay.as_secs(), "release orchestration failed; rolling the release back");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
            outcome = match s.store.release(&app_id, version).await {
                Ok(rel) if rel.status == coffer_store::ReleaseStatus::Running => {
                    roll_back(
                        &s,
                        &rel,
                        &lease,
                        "the control plane could not finish the release",
                    )
                    .await
                }
                // Settled, or gone with its app.
                Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
                Err(e) => Err(Halt::Store(e)),
            };
        }
    });
}

/// At a graceful shutdown: gives up the releases this process still orchestrates, so that the
/// next API process (or another replica's sweep) takes them over and rolls them back at once
/// rather than when their lease runs out.
pub async fn give_up(s: &ApiState) {
    match s.store.give_up_releases(&s.release_owners.prefix()).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            releases = n,
            "gave up the releases under way; the next API process rolls them back"
        ),
        Err(e) => tracing::error!(
            error = %e,
            "could not give up the releases under way; they are rolled back when their lease runs out"
        ),
    }
}

/// At start: takes over every release whose owner stopped renewing its lease (a previous
/// process of this one, or a dead replica) and rolls it back, before the API serves. A
/// release a live replica owns is left alone; one this store says nobody holds (from before
/// owners, or whose lease passed) is taken. Returns how many were taken.
pub async fn recover(s: &ApiState) -> Result<usize, StoreError> {
    let owner = s.release_owners.next();
    let taken = s
        .store
        .take_over_expired_releases(&owner, now_micros())
        .await?;
    let n = taken.len();
    for rel in taken {
        let lease = ReleaseLease {
            app_id: rel.app_id.clone(),
            version: rel.version,
            owner: owner.clone(),
        };
        tracing::warn!(app_id = %rel.app_id, version = rel.version, "release interrupted: its orchestration stopped; rolling it back");
        match roll_back(s, &rel, &lease, INTERRUPTED).await {
            Ok(()) | Err(Halt::Fenced) => {}
            Err(Halt::Store(e)) => return Err(e),
        }
    }
    Ok(n)
}

/// Every [`SWEEP_EVERY`], for as long as the process runs: takes over the releases whose
/// owner stopped renewing its lease, and rolls each back in the background (see [`spawn`]).
pub fn spawn_sweeper(s: ApiState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let owner = s.release_owners.next();
            match s
                .store
                .take_over_expired_releases(&owner, now_micros())
                .await
            {
                Ok(taken) => {
                    for rel in taken {
                        tracing::warn!(app_id = %rel.app_id, version = rel.version, "release interrupted: its orchestration stopped renewing its lease; taking it over to roll it back");
                        let lease = ReleaseLease {
                            app_id: rel.app_id.clone(),
                            version: rel.version,
                            owner: owner.clone(),
                        };
                        spawn(s.clone(), rel, lease, Task::RollBack(INTERRUPTED));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not look for releases to take over; trying again later");
                }
            }
        }
    });
}

/// Records a progress line (which renews the lease). `Halt::Fenced` once the release is no
/// longer ours; a store failure is only logged, the next write will tell.
async fn progress(s: &ApiState, lease: &ReleaseLease, line: &str) -> Result<(), Halt> {
    match s.store.set_release_progress(lease, line).await {
        Ok(()) => Ok(()),
        Err(StoreError::Fenced) => Err(Halt::Fenced),
        Err(e) => {
            tracing::warn!(error = %e, "could not record release progress");
            Ok(())
        }
    }
}

/// Renews the lease when [`RENEW_EVERY`] has passed since `last`.
async fn keep_lease(
    s: &ApiState,
    lease: &ReleaseLease,
    last: &mut tokio::time::Instant,
) -> Result<(), Halt> {
    if last.elapsed() < RENEW_EVERY {
        return Ok(());
    }
    match s.store.renew_release_lease(lease).await {
        Ok(()) => {
            *last = tokio::time::Instant::now();
            Ok(())
        }
        Err(StoreError::Fenced) => Err(Halt::Fenced),
        Err(e) => {
            tracing::warn!(error = %e, "could not renew the release's lease");
            Ok(())
        }
    }
}

async fn run(s: &ApiState, rel: ReleaseRecord, lease: &ReleaseLease) -> Result<(), Halt> {
    let app = s.store.app_by_id(&rel.app_id).await?;
    let window = Duration::from_millis(app.crash_window_ms.max(1000) as u64);
    let machines = rollout(s.store.app_machines(&rel.app_id).await?);
    tracing::info!(app = %app.name, release = rel.version, secrets_version = rel.secrets_version, machines = machines.len(), "release started");
    let total = machines.len();
    let mut updated: Vec<String> = Vec::with_capacity(total);
    for (i, (m, part)) in machines.iter().enumerate() {
        let label = if i == 0 {
            format!("{} (canary)", m.name)
        } else {
            format!("{} ({}/{total})", m.name, i + 1)
        };
        progress(s, lease, &format!("updating {label}")).await?;
        let m = match s
            .store
            .move_machine_for_release(lease, &m.id, rel.secrets_version, rel.version)
            .await
        {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        updated.push(m.id.clone());
        s.notify_hosts();
        if let Err(reason) = watch(s, lease, &m, &label, window).await? {
            if *part == Part::Retrying {
                // See [`Part::Retrying`]: it failed before the release too.
                tracing::warn!(app = %app.name, release = rel.version, machine = %m.id, reason, "a machine that was failing before the release still fails; not counted against the release");
                progress(
                    s,
                    lease,
                    &format!("{reason}; it was failing before the release, so it does not fail it"),
                )
                .await?;
                continue;
            }
            return roll_back(s, &rel, lease, &reason).await;
        }
    }
    s.store.complete_release(lease).await?;
    tracing::info!(app = %app.name, release = rel.version, "release complete");
    Ok(())
}

fn secs(micros: i64) -> f64 {
    micros as f64 / 1_000_000.0
}

fn failure_reason(m: &MachineRecord, label: &str, started_at: Option<i64>) -> String {
    let after = started_at
        .map(|t| format!(" {:.2}s after it started", secs(m.updated_at - t)))
        .unwrap_or_default();
    match m.state {
        MachineState::Unhealthy => format!(
            "machine {label} [{}] failed its health check ({}){after}",
            m.id,
            m.message.as_deref().unwrap_or("no reason given")
        ),
        MachineState::Exited => match m.exit_status {
            Some(code) => format!(
                "machine {label} [{}] exited with status {code}{after}",
                m.id
            ),
            None => format!("machine {label} [{}] exited{after}", m.id),
        },
        _ => format!(
            "machine {label} [{}] failed to boot: {}",
            m.id,
            m.message.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// Waits for the machine's boot at its new generation, then watches it for `window`.
/// `Ok(Err(reason))` when it crashed or could not boot.
async fn watch(
    s: &ApiState,
    lease: &ReleaseLease,
    updated: &MachineRecord,
    label: &str,
    window: Duration,
) -> Result<Result<(), String>, Halt> {
    let generation = updated.generation;
    // The move just renewed the lease.
    let mut renewed = tokio::time::Instant::now();
    let mut events = s.machine_events.subscribe();
    let boot_deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
    // The store time of the `started` report, and the local instant it corresponds to.
    let (started_micros, started) = loop {
        keep_lease(s, lease, &mut renewed).await?;
        let m = match s.store.machine(&updated.id).await {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => return Ok(Ok(())),
            Err(e) => return Err(e.into()),
        };
        if m.desired != DesiredState::Running || m.destroyed_at.is_some() {
            // Stopped or destroyed by a user meanwhile: not a crash of this release.
            return Ok(Ok(()));
        }
        if m.state_generation >= generation {
            match m.state {
                MachineState::Started => {
                    let age = Duration::from_micros((now_micros() - m.updated_at).max(0) as u64);
                    break (m.updated_at, tokio::time::Instant::now() - age);
                }
                // `unhealthy` comes after `started` (two failed probes); seen first, the
                // `started` report was missed between two reads — it still fails the release.
                MachineState::Exited | MachineState::Failed | MachineState::Unhealthy => {
                    return Ok(Err(failure_reason(&m, label, None)));
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= boot_deadline {
            return Ok(Err(format!(
                "machine {label} [{}] did not start within {}s",
                m.id,
                BOOT_TIMEOUT.as_secs()
            )));
        }
        let _ = tokio::time::timeout(TICK, events.changed()).await;
    };
    let end = started + window;
    let mut shown = u64::MAX;
    loop {
        keep_lease(s, lease, &mut renewed).await?;
        let m = match s.store.machine(&updated.id).await {
            Ok(m) => m,
            Err(StoreError::NotFound(_)) => return Ok(Ok(())),
            Err(e) => return Err(e.into()),
        };
        if m.desired != DesiredState::Running || m.destroyed_at.is_some() {
            return Ok(Ok(()));
        }
        if m.state_generation > generation
            || (m.state_generation == generation && m.state != MachineState::Started)
        {
            // Any exit, failure, failed health check or restart after it started fails the
            // release.
            let mut m = m;
            if m.state == MachineState::Started || m.state == MachineState::Starting {
                m.state = MachineState::Exited;
            }
            return Ok(Err(failure_reason(&m, label, Some(started_micros))));
        }
        let now = tokio::time::Instant::now();
        if now >= end {
            return Ok(Ok(()));
        }
        let left = (end - now).as_secs() + 1;
        if left != shown {
            shown = left;
            progress(
                s,
                lease,
                &format!("watching {label}: {left}s of {}s left", window.as_secs()),
            )
            .await?;
            renewed = tokio::time::Instant::now();
        }
        let _ = tokio::time::timeout((end - now).min(TICK), events.changed()).await;
    }
}

/// Puts every machine of the release back on the previous secrets, then fails the release
/// and restores the app's secrets (a new version). Machines the release never reached are
/// not touched. Every step is fenced by `lease`, so that one orchestration alone rolls a
/// release back; the first refused step stops it (`Halt::Fenced`).
async fn roll_back(
    s: &ApiState,
    rel: &ReleaseRecord,
    lease: &ReleaseLease,
    reason: &str,
) -> Result<(), Halt> {
    tracing::warn!(app_id = %rel.app_id, release = rel.version, reason, "release failed; rolling back");
    progress(s, lease, &format!("rolling back: {reason}")).await?;
    for m in s.store.app_machines(&rel.app_id).await? {
        if m.secrets_version == rel.secrets_version
            && m.release_version == rel.version
            && m.destroyed_at.is_none()
        {
            match s
                .store
                .move_machine_for_release(
                    lease,
                    &m.id,
                    rel.previous_secrets_version,
                    rel.previous_release_version,
                )
                .await
            {
                // Gone with its app meanwhile.
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    s.notify_hosts();
    let (_, rollback) = s.store.fail_release(lease, reason).await?;
    tracing::info!(app_id = %rel.app_id, release = rel.version, rollback_release = rollback.version, "release rolled back");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::MachineConfig;

    fn machine(state: MachineState, message: Option<&str>, updated_at: i64) -> MachineRecord {
        MachineRecord {
            id: "3f2a9c01".into(),
            app_id: "a".into(),
            host_id: "h".into(),
            name: "web-1".into(),
            config: MachineConfig {
                command: vec!["./server".into()],
                env: Default::default(),
                restart: Default::default(),
                check: None,
            },
            desired: DesiredState::Running,
            state,
            exit_status: None,
            message: message.map(str::to_string),
            secrets_version: 2,
            release_version: 2,
            generation: 5,
            state_generation: 5,
            created_at: 0,
            updated_at,
            destroyed_at: None,
        }
    }

    #[test]
    fn failure_reasons() {
        let unhealthy = machine(
            MachineState::Unhealthy,
            Some("http check GET :8080/healthz: status 500"),
            12_340_000,
        );
        assert_eq!(
            failure_reason(&unhealthy, "web-1 (canary)", Some(10_000_000)),
            "machine web-1 (canary) [3f2a9c01] failed its health check \
             (http check GET :8080/healthz: status 500) 2.34s after it started"
        );
        assert_eq!(
            failure_reason(&unhealthy, "web-1 (canary)", None),
            "machine web-1 (canary) [3f2a9c01] failed its health check \
             (http check GET :8080/healthz: status 500)"
        );
        let mut exited = machine(MachineState::Exited, None, 11_000_000);
        exited.exit_status = Some(1);
        assert_eq!(
            failure_reason(&exited, "web-1 (2/2)", Some(10_000_000)),
            "machine web-1 (2/2) [3f2a9c01] exited with status 1 1.00s after it started"
        );
        let failed = machine(MachineState::Failed, Some("vault unavailable"), 0);
        assert_eq!(
            failure_reason(&failed, "web-1 (canary)", None),
            "machine web-1 (canary) [3f2a9c01] failed to boot: vault unavailable"
        );
    }

    #[test]
    fn which_machines_a_release_updates() {
        use coffer_core::wire::machines::RestartPolicy;
        for (state, part_of) in [
            (MachineState::Pending, Some(Part::Running)),
            (MachineState::Starting, Some(Part::Running)),
            (MachineState::Started, Some(Part::Running)),
            (MachineState::Unhealthy, Some(Part::Running)),
            (MachineState::Stopped, None),
            // A failed boot is retried by the host whatever the restart policy.
            (MachineState::Failed, Some(Part::Retrying)),
        ] {
            assert_eq!(part(&machine(state, None, 0)), part_of, "{state:?}");
        }
        // Exited: it depends on whether the restart policy brings it back.
        for (policy, status, part_of) in [
            (RestartPolicy::No, Some(1), None),
            (RestartPolicy::OnFailure, Some(0), None),
            (RestartPolicy::OnFailure, Some(1), Some(Part::Retrying)),
            (RestartPolicy::OnFailure, Some(137), Some(Part::Retrying)),
            (RestartPolicy::Always, Some(0), Some(Part::Retrying)),
            (RestartPolicy::Always, None, Some(Part::Retrying)),
        ] {
            let mut m = machine(MachineState::Exited, None, 0);
            m.config.restart = policy;
            m.exit_status = status;
            assert_eq!(part(&m), part_of, "{policy:?} {status:?}");
        }
        // Started again by the user, not yet booted by its host.
        let mut m = machine(MachineState::Exited, None, 0);
        m.state_generation = m.generation - 1;
        assert_eq!(part(&m), Some(Part::Retrying));
        // Not meant to run.
        let mut m = machine(MachineState::Failed, None, 0);
        m.desired = DesiredState::Stopped;
        assert_eq!(part(&m), None);
        let mut m = machine(MachineState::Started, None, 0);
        m.destroyed_at = Some(1);
        assert_eq!(part(&m), None);
    }

    #[test]
    fn the_canary_is_a_running_machine() {
        let mut crashing = machine(MachineState::Failed, None, 0);
        crashing.id = "crashing".into();
        let mut running = machine(MachineState::Started, None, 0);
        running.id = "running".into();
        let stopped = machine(MachineState::Stopped, None, 0);
        let order: Vec<(String, Part)> = rollout(vec![crashing, stopped, running])
            .into_iter()
            .map(|(m, p)| (m.id, p))
            .collect();
        assert_eq!(
            order,
            [
                ("running".to_string(), Part::Running),
                ("crashing".to_string(), Part::Retrying)
            ]
        );
    }
}
