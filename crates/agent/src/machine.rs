//! One task per machine on this host: it holds the machine's workload and local state, asks
//! [`decide`] what to do whenever something happens (a new assignment, the workload exits, a
//! backoff ends), does it, and reports the outcome to the control plane.
//!
//! While a workload with a health check runs, the worker also probes it (see [`crate::health`])
//! — from the same task and the same `select!` as everything else, so a probe outcome can
//! never be reported after the workload's exit or restart.
//!
//! Reports go through a small per-machine queue that keeps their order and retries while the
//! control plane is unreachable (a newer report replaces an undelivered older one: the
//! control plane needs the latest state, not the history).

use crate::api::ControlPlane;
use crate::boot::{self, BootError};
use crate::health::{self, HealthWatch, Transition};
use crate::logs::MachineLog;
use crate::reconcile::{
    backoff_delay, decide, should_restart, Backoff, Decision, LastExit, LocalState, Running,
    FIRST_BACKOFF, HEALTHY_RUN, MAX_BACKOFF,
};
use crate::supervisor::Workload;
use crate::Shared;
use coffer_core::wire::agent::{Assignment, StateReport};
use coffer_core::wire::machines::{DesiredState, MachineState};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// `exit.json`: how the last workload of the machine ended, so that a machine that exited
/// for good (restart policy `no`) stays exited across an agent restart.
pub const EXIT_FILE: &str = "exit.json";

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct ExitRecord {
    generation: i64,
    status: i32,
}

/// The host loop's handle on a machine's worker.
pub struct WorkerHandle {
    /// The assignment last handed to the worker.
    pub assignment: Assignment,
    tx: watch::Sender<Option<Assignment>>,
    join: JoinHandle<()>,
}

impl WorkerHandle {
    pub fn update(&mut self, a: Assignment) {
        self.assignment = a.clone();
        let _ = self.tx.send(Some(a));
    }

    /// The machine is no longer assigned here: the worker stops it and deletes its directory.
    pub fn retire(&self) {
        self.tx.send_if_modified(|cur| cur.take().is_some());
    }

    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    pub async fn join(self) {
        if let Err(e) = self.join.await {
            tracing::error!(machine_id = %self.assignment.machine_id, error = %e, "machine worker failed");
        }
    }
}

pub fn start_worker(
    shared: Arc<Shared>,
    a: Assignment,
    shutdown: watch::Receiver<bool>,
) -> WorkerHandle {
    let (tx, rx) = watch::channel(Some(a.clone()));
    let id = a.machine_id.clone();
    let dir = shared.machines_dir.join(&id);
    let reports = spawn_reporter(shared.control_plane.clone(), id.clone(), shutdown.clone());
    let worker = Worker {
        log: MachineLog::new(dir.clone()),
        id,
        dir,
        shared,
        rx,
        shutdown,
        local: LocalState::default(),
        current: None,
        health: None,
        reports,
    };
    WorkerHandle {
        assignment: a,
        tx,
        join: tokio::spawn(worker.run()),
    }
}

struct Current {
    workload: Workload,
    generation: i64,
}

enum Woke {
    Changed,
    Exited(std::io::Result<ExitStatus>),
    Timer,
    /// A health probe that was due finished, with this outcome.
    Probed(Result<(), String>),
    Shutdown,
}

struct Worker {
    id: String,
    dir: PathBuf,
    shared: Arc<Shared>,
    rx: watch::Receiver<Option<Assignment>>,
    shutdown: watch::Receiver<bool>,
    local: LocalState,
    current: Option<Current>,
    /// The health check of the current workload, if its assignment has one. Set when the
    /// workload starts, cleared whenever `current` is taken.
    health: Option<HealthWatch>,
    log: MachineLog,
    reports: mpsc::UnboundedSender<StateReport>,
}

impl Worker {
    async fn run(mut self) {
        self.load_last_exit();
        loop {
            if self.shutting_down() {
                self.stop_workload("the host agent is shutting down").await;
                return;
            }
            let desired = self.rx.borrow_and_update().clone();
            let decision = decide(desired.as_ref(), &self.local, Instant::now());
            tracing::trace!(machine_id = %self.id, ?decision, "decision");
            match (decision, desired) {
                (Decision::Wait { until }, desired) => match self.wait(until).await {
                    Woke::Exited(status) => self.on_exit(status, desired.as_ref()).await,
                    Woke::Shutdown => {
                        self.stop_workload("the host agent is shutting down").await;
                        return;
                    }
                    Woke::Probed(outcome) => self.on_probe(outcome),
                    Woke::Changed | Woke::Timer => {}
                },
                (Decision::Boot, Some(a)) => self.boot(a).await,
                (Decision::Stop, Some(a)) => {
                    self.stop_workload("stopping on request").await;
                    self.report_stopped(a.generation);
                }
                (Decision::ReportStopped, Some(a)) => self.report_stopped(a.generation),
                (Decision::Restart, Some(a)) => {
                    self.stop_workload(&format!(
                        "restarting for generation {} (secrets version {})",
                        a.generation, a.secrets_version
                    ))
                    .await;
                }
                (Decision::Destroy, Some(a)) => {
                    self.stop_workload("destroying the machine").await;
                    self.remove_dir().await;
                    tracing::info!(machine_id = %self.id, "machine destroyed");
                    self.report(MachineState::Destroyed, None, None, a.generation);
                    return;
                }
                (Decision::Forget, _) => {
                    self.stop_workload("the machine is no longer assigned to this host")
                        .await;
                    self.remove_dir().await;
                    tracing::info!(machine_id = %self.id, "machine no longer assigned here; removed");
                    return;
                }
                (d, None) => unreachable!("{d:?} without an assignment"),
            }
        }
    }

    fn shutting_down(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }

    async fn wait(&mut self, until: Option<Instant>) -> Woke {
        let Worker {
            rx,
            shutdown,
            current,
            health,
            ..
        } = self;
        // A probe cut short by another event is simply run again: it stays due.
        tokio::select! {
            _ = shutdown.changed() => Woke::Shutdown,
            changed = rx.changed() => match changed {
                Ok(()) => Woke::Changed,
                // The host loop is gone: the agent is stopping.
                Err(_) => Woke::Shutdown,
            },
            status = wait_current(current) => Woke::Exited(status),
            _ = sleep_until(until) => Woke::Timer,
            outcome = probe_when_due(health.as_ref()) => Woke::Probed(outcome),
        }
    }

    /// One probe of the current workload's health check has finished: report a change of
    /// verdict (`unhealthy` after consecutive failures, `started` once it passes again) and
    /// note it in the machine's log. The workload itself is left alone.
    fn on_probe(&mut self, outcome: Result<(), String>) {
        let (Some(h), Some(c)) = (self.health.as_mut(), self.current.as_ref()) else {
            return;
        };
        let generation = c.generation;
        match h.record(outcome, tokio::time::Instant::now()) {
            None => {}
            Some(Transition::Unhealthy(reason)) => {
                tracing::warn!(machine_id = %self.id, generation, %reason, "machine unhealthy");
                self.log.note(&format!(
                    "unhealthy: {reason} ({} failed checks in a row); the workload keeps running",
                    health::FAILURES_TO_UNHEALTHY
                ));
                self.report(MachineState::Unhealthy, None, Some(reason), generation);
            }
            Some(Transition::Healthy) => {
                tracing::info!(machine_id = %self.id, generation, "machine healthy again");
                self.log.note("healthy again: the health check passes");
                self.report(MachineState::Started, None, None, generation);
            }
        }
    }

    async fn boot(&mut self, a: Assignment) {
        let generation = a.generation;
        self.local.stopped_reported = None;
        self.log.note(&format!(
            "booting (generation {generation}, secrets version {})",
            a.secrets_version
        ));
        let shared = self.shared.clone();
        let dir = self.dir.clone();
        let log = self.log.clone();
        let assignment = a.clone();
        let fut = async move { boot::boot(&shared, &assignment, &dir, &log).await };
        tokio::pin!(fut);
        let starting_due = tokio::time::sleep(self.shared.starting_after);
        tokio::pin!(starting_due);
        let mut starting_reported = false;
        // The boot is abandoned if the machine is no longer wanted running at this
        // generation, or the agent stops.
        let result = loop {
            tokio::select! {
                r = &mut fut => break Some(r),
                _ = &mut starting_due, if !starting_reported => {
                    starting_reported = true;
                    self.report(MachineState::Starting, None, None, generation);
                }
                _ = self.shutdown.changed() => break None,
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    let still = matches!(
                        &*self.rx.borrow(),
                        Some(n) if n.desired == DesiredState::Running && n.generation == generation
                    );
                    if !still {
                        break None;
                    }
                }
            }
        };
        let now = Instant::now();
        match result {
            None => {
                self.log
                    .note("boot abandoned: the machine's desired state changed");
                tracing::info!(machine_id = %self.id, generation, "boot abandoned");
            }
            Some(Ok(booted)) => {
                let pid = booted.workload.pid;
                self.local.running = Some(Running { generation });
                self.local.last_exit = None;
                self.local.backoff = None;
                let _ = std::fs::remove_file(self.dir.join(EXIT_FILE));
                self.current = Some(Current {
                    workload: booted.workload,
                    generation,
                });
                self.health = a
                    .check
                    .clone()
                    .map(|check| HealthWatch::new(check, tokio::time::Instant::now()));
                self.shared.metrics.boots_started.inc();
                self.log.note(&format!(
                    "started (pid {pid}, secrets version {}, release {})",
                    booted.secrets_version, booted.release_version
                ));
                self.report(MachineState::Started, None, None, generation);
            }
            Some(Err(e)) if e.is_superseded() => {
                // A newer assignment (stopped, destroyed, moved) is on its way; nothing to
                // report, but do not spin if it is slow to come.
                self.local.failures += 1;
                self.local.backoff = Some(Backoff {
                    generation,
                    until: now + backoff_delay(self.local.failures),
                });
                tracing::info!(machine_id = %self.id, generation, error = %e, "boot refused by the control plane; waiting for a new assignment");
            }
            Some(Err(e)) => self.boot_failed(generation, &e, now),
        }
    }

    fn boot_failed(&mut self, generation: i64, e: &BootError, now: Instant) {
        self.shared.metrics.boots_failed.inc();
        self.local.failures += 1;
        let delay = backoff_delay(self.local.failures);
        self.local.backoff = Some(Backoff {
            generation,
            until: now + delay,
        });
        let message = format!("{e} (retrying in {}s)", delay.as_secs());
        tracing::warn!(machine_id = %self.id, generation, reason = %message, "machine failed to boot");
        self.log.note(&format!("boot failed: {message}"));
        self.report(MachineState::Failed, None, Some(message), generation);
    }

    async fn on_exit(&mut self, status: std::io::Result<ExitStatus>, desired: Option<&Assignment>) {
        self.health = None;
        let Some(Current {
            workload,
            generation,
        }) = self.current.take()
        else {
            return;
        };
        let exit = workload.finish(status).await;
        let now = Instant::now();
        self.local.running = None;
        self.local.last_exit = Some(LastExit {
            generation,
            status: exit.status,
        });
        let record = ExitRecord {
            generation,
            status: exit.status,
        };
        if let Err(e) = crate::identity::write_private(
            &self.dir.join(EXIT_FILE),
            &serde_json::to_vec(&record).expect("an exit record serializes"),
        ) {
            tracing::warn!(machine_id = %self.id, error = %e, "cannot write exit.json");
        }
        if exit.ran_for >= HEALTHY_RUN {
            self.local.failures = 0;
        } else {
            self.local.failures += 1;
        }
        let mut message = exit.describe();
        if let Some(a) = desired.filter(|a| {
            a.desired == DesiredState::Running
                && a.generation == generation
                && should_restart(a.restart, exit.status)
        }) {
            let delay = if self.local.failures == 0 {
                std::time::Duration::ZERO
            } else {
                backoff_delay(self.local.failures)
            };
            self.local.backoff = Some(Backoff {
                generation,
                until: now + delay,
            });
            message.push_str(&format!(
                "; restarting in {}s (restart policy {})",
                delay.as_secs(),
                a.restart.as_str()
            ));
        }
        tracing::info!(machine_id = %self.id, generation, status = exit.status, ran_ms = exit.ran_for.as_millis() as u64, "workload exited");
        self.log.note(&message);
        self.report(
            MachineState::Exited,
            Some(exit.status),
            Some(message),
            generation,
        );
    }

    /// Stops the workload if there is one (SIGTERM, timeout, SIGKILL to its group).
    async fn stop_workload(&mut self, reason: &str) {
        self.health = None;
        let Some(Current {
            workload,
            generation,
        }) = self.current.take()
        else {
            return;
        };
        let pid = workload.pid;
        self.log.note(&format!("{reason}: stopping pid {pid}"));
        let exit = workload.stop(self.shared.stop_timeout).await;
        self.local.running = None;
        tracing::info!(machine_id = %self.id, generation, pid, status = exit.status, reason, "workload stopped");
        self.log.note(&format!("stopped: {}", exit.describe()));
    }

    fn report_stopped(&mut self, generation: i64) {
        self.local.stopped_reported = Some(generation);
        self.report(MachineState::Stopped, None, None, generation);
    }

    async fn remove_dir(&mut self) {
        self.log.close();
        match tokio::fs::remove_dir_all(&self.dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(machine_id = %self.id, error = %e, "cannot delete the machine's directory")
            }
        }
    }

    fn report(
        &self,
        state: MachineState,
        exit_status: Option<i32>,
        message: Option<String>,
        generation: i64,
    ) {
        let _ = self.reports.send(StateReport {
            state,
            exit_status,
            message,
            generation,
        });
    }

    fn load_last_exit(&mut self) {
        if let Ok(bytes) = std::fs::read(self.dir.join(EXIT_FILE)) {
            if let Ok(r) = serde_json::from_slice::<ExitRecord>(&bytes) {
                self.local.last_exit = Some(LastExit {
                    generation: r.generation,
                    status: r.status,
                });
            }
        }
    }
}

async fn wait_current(current: &mut Option<Current>) -> std::io::Result<ExitStatus> {
    match current {
        Some(c) => c.workload.wait().await,
        None => std::future::pending().await,
    }
}

/// Waits until the health probe is due, then runs it; never returns without a check.
async fn probe_when_due(health: Option<&HealthWatch>) -> Result<(), String> {
    match health {
        Some(h) => {
            tokio::time::sleep_until(h.next).await;
            health::probe(&h.check, health::PROBE_TIMEOUT).await
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(until: Option<Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Delivers one machine's state reports in order, retrying while the control plane is
/// unreachable.
fn spawn_reporter(
    control_plane: Arc<ControlPlane>,
    machine_id: String,
    mut shutdown: watch::Receiver<bool>,
) -> mpsc::UnboundedSender<StateReport> {
    let (tx, mut rx) = mpsc::unbounded_channel::<StateReport>();
    tokio::spawn(async move {
        while let Some(mut report) = rx.recv().await {
            let mut delay = FIRST_BACKOFF;
            loop {
                match control_plane.report(&machine_id, &report).await {
                    Ok(()) => {
                        tracing::debug!(%machine_id, state = report.state.as_str(), generation = report.generation, "state reported");
                        break;
                    }
                    Err(e) if e.is_transient() => {
                        tracing::warn!(%machine_id, state = report.state.as_str(), error = %e, "cannot report machine state; retrying in {}s", delay.as_secs());
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.changed() => return,
                        }
                        delay = (delay * 2).min(MAX_BACKOFF);
                        while let Ok(newer) = rx.try_recv() {
                            report = newer;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%machine_id, state = report.state.as_str(), error = %e, "machine state report refused");
                        break;
                    }
                }
            }
        }
    });
    tx
}
