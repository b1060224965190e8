//! coffer's host agent: one per host. It registers with the control plane, receives the
//! machines placed on its host, runs each as a supervised process whose environment holds
//! the app's secrets, and reports their states.
//!
//! ```text
//!  control plane ──assignments (long poll)──▶ agent ──boot──▶ control plane: machine token + ciphertexts
//!                ◀──state reports, heartbeat──       ──decrypt (token, one-time key, host signature)──▶ vault
//!                ──logs (grant)──▶ agent's server    ◀──values sealed to the one-time key──
//! ```
//!
//! # Codemap
//!
//! * [`identity`] — the host key, token and id in the state directory (0600 files, atomic).
//! * [`api`] — HTTP clients of the control plane and the vault; one-line errors.
//! * [`reconcile`] — pure decisions: which workers to start or retire ([`reconcile::plan_host`])
//!   and, per machine, the next step ([`reconcile::decide`]); restart policy and backoff.
//! * `machine` — one task per machine carrying out those decisions and reporting states.
//! * [`boot`] — one boot: grant, one-time key, decrypt, open, environment, spawn.
//! * [`environment`] — the workload's exact environment (pure).
//! * [`supervisor`] — process groups, stop (SIGTERM → timeout → SIGKILL), `process.json`.
//! * [`health`] — health checks of running workloads (HTTP `GET` or TCP connect on
//!   127.0.0.1) and the `unhealthy` / `started` verdicts.
//! * [`logs`] — each machine's bounded, rotated output log and the logs HTTP server.
//!
//! # State directory
//!
//! ```text
//! STATE_DIR/                 0700 (0711 with workload users)
//!   host.key host.token host.json        the host's identity (see `identity`)
//!   workload-users.json                  with workload users: each app's user id (see `users`)
//!   machines/                0700 (0711)
//!     <machine id>/          0700 (0711), deleted with the machine
//!       output.log output.log.1          workload output + `[coffer]` lines (see `logs`)
//!       process.json                     {pid, start_time, generation, secrets_version} while running
//!       exit.json                        {generation, status} of the last exit
//!       home/                0700        the workload's HOME and working directory (owned by
//!                                        the app's user with workload users)
//! ```
//!
//! Every file is 0600.
//!
//! Nothing here holds a secret value or a machine token: those live in memory for the
//! length of one boot. The host key and host token are the agent's own credentials.
//!
//! # Decisions
//!
//! * **An agent restart reboots its machines.** A workload's stdout/stderr are pipes to the
//!   agent, and only a parent can collect an exit status, so a new agent cannot adopt the
//!   previous agent's processes. At start it therefore kills every process group recorded in
//!   a `process.json` whose leader is still the recorded process (same pid *and* start time:
//!   SIGTERM, stop timeout, SIGKILL), then reconciles as usual: every machine desired running
//!   boots again, with a fresh machine token and its secrets. A restarted agent never leaves
//!   orphans and never runs a machine twice. A machine that had exited for good (restart
//!   policy) stays exited (`exit.json`).
//! * **A graceful agent shutdown stops the workloads and reports nothing.** Each workload
//!   gets SIGTERM, the stop timeout, then SIGKILL. Their states are not reported as `stopped`
//!   because the user did not stop them — they are still desired running, and the next
//!   agent start boots them again and reports `starting`/`started`.
//! * **Destroy** stops the workload, deletes the machine's directory (its logs included), and
//!   reports `destroyed`. A machine that disappears from the assignments altogether (its app
//!   was destroyed) is stopped and its directory deleted, with nothing to report.
//! * **Failures** (control plane or vault unreachable or refusing, a bundle that does not open,
//!   a command that cannot be executed) leave the machine not running: it is reported `failed`
//!   with a one-line reason that is also written to its log, and booted again after 1 s,
//!   2 s, 4 s … 30 s while it is desired running. Quick exits (< 10 s) restarted by policy
//!   back off the same way.
//! * **Health checks** (`machines run --check-http PORT/PATH` / `--check-tcp PORT`): while a
//!   workload runs, its worker probes it on 127.0.0.1 every second, the first probe a second
//!   after the start, one second per probe. Two consecutive failures are reported as
//!   `unhealthy` (with a one-line reason, also noted in the machine's log), the next passing
//!   probe as `started` again. The check never restarts or stops the workload — restart
//!   policies are about exits — but inside a release's crash window `unhealthy` fails the
//!   release. A workload that has not opened its port yet is failing like any other: one that
//!   needs more than about 2 s to listen is reported `unhealthy` until it does, which fails a
//!   release whose crash window is longer than that (there is no start-up grace period).
//! * **Re-registration**: if the control plane answers 401 to the host token, the agent
//!   registers again with the join token (if it has one), gets a new host id, and — since
//!   the new host has no machines yet — retires its old workloads.
//!
//! # Workload users
//!
//! Without `--workload-uids`, workloads run with the agent's user id: their environment holds
//! nothing of the agent's, but a hostile workload could read what that user can, the host's
//! key and token and the environment (`/proc/PID/environ`) of every other workload on the
//! host. That is fine where one team runs everything (`cofferd dev`, a host per app); where
//! apps on one host must not read each other, give the agent a range of user ids and run it as
//! root: each app's workloads then run under a user id of their own ([`users`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod boot;
pub mod environment;
pub mod health;
pub mod identity;
pub mod logs;
mod machine;
pub mod reconcile;
pub mod supervisor;
pub mod users;

use anyhow::{bail, Context as _};
use api::{CallError, ControlPlane, Session, Vault};
use coffer_core::secret::SecretToken;
use coffer_core::wire::agent::{Assignment, RegisterHost, RegisteredHost};
use coffer_crypto::machine_token::{ControlPlanePublicKey, HostKey};
use coffer_http::Metrics;
use identity::{Registration, StoredHost};
use machine::WorkerHandle;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often the agent tells the control plane it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How long a first registration keeps retrying an unreachable control plane.
pub const REGISTER_PATIENCE: Duration = Duration::from_secs(30);

/// How an agent runs.
#[derive(Debug)]
pub struct AgentConfig {
    pub api_url: String,
    pub vault_url: String,
    /// Created 0700 if missing.
    pub state_dir: PathBuf,
    /// The host's name, shown in `coffer machines list`.
    pub name: String,
    /// Admin API token used only to register (the first time, or again if the control plane
    /// forgot this host). `None`: the host must already be registered.
    pub join_token: Option<SecretToken>,
    /// How long a workload has to exit after SIGTERM before it gets SIGKILL.
    pub stop_timeout: Duration,
    /// A boot still under way after this long is reported `starting` ([`STARTING_AFTER`]).
    pub starting_after: Duration,
    /// Run each app's workloads under a user id of their own from this range ([`users`]);
    /// `None`: under the agent's.
    pub workload_uids: Option<users::UidRange>,
}

/// A boot still under way after this long is reported `starting`; a quicker one goes straight
/// to `started` (or its failure). Reporting `starting` at once was a request and a durable write
/// on the control plane, side by side with the boot grant, that made the grant 0.15–0.3 ms
/// slower for a state nobody could see (BENCHMARKS.md).
pub const STARTING_AFTER: Duration = Duration::from_millis(100);

/// What every machine worker shares.
pub(crate) struct Shared {
    pub control_plane: Arc<ControlPlane>,
    pub vault: Vault,
    pub host_key: HostKey,
    pub machines_dir: PathBuf,
    pub stop_timeout: Duration,
    pub starting_after: Duration,
    /// `Some` with `--workload-uids`.
    pub users: Option<users::WorkloadUsers>,
    pub metrics: AgentMetrics,
}

pub(crate) struct AgentMetrics {
    pub boot_seconds: Histogram,
    pub boots_started: Counter,
    pub boots_failed: Counter,
}

impl AgentMetrics {
    fn new(registry: &Metrics) -> Self {
        let m = Self {
            boot_seconds: Histogram::new(exponential_buckets(0.002, 2.0, 14)),
            boots_started: Counter::default(),
            boots_failed: Counter::default(),
        };
        registry.register(
            "boot_seconds",
            "Time from asking for a boot grant to the workload's exec",
            m.boot_seconds.clone(),
        );
        registry.register(
            "boots_started",
            "Workloads started",
            m.boots_started.clone(),
        );
        registry.register(
            "boots_failed",
            "Boots that failed (control plane, vault, bundle, exec)",
            m.boots_failed.clone(),
        );
        m
    }
}

/// Registers (again) with the join token. One at a time.
struct Registrar {
    state_dir: PathBuf,
    api_url: String,
    name: String,
    join_token: Option<SecretToken>,
    address: String,
    http: reqwest::Client,
    lock: tokio::sync::Mutex<()>,
}

impl Registrar {
    /// `POST /v1/hosts`; saves the registration. Retries an unreachable control plane for up
    /// to `patience`.
    async fn register(&self, host_key: &HostKey, patience: Duration) -> anyhow::Result<Session> {
        let Some(join) = &self.join_token else {
            bail!(
                "this host is not registered with the control plane at {} and no join token was \
                 given: pass an admin API token to register it",
                self.api_url
            );
        };
        let body = RegisterHost {
            name: self.name.clone(),
            address: self.address.clone(),
            public_key: host_key.public_key_hex(),
        };
        let deadline = Instant::now() + patience;
        let mut delay = reconcile::FIRST_BACKOFF;
        let registered = loop {
            match api::register(&self.http, &self.api_url, join, &body).await {
                Ok(r) => break r,
                Err(e) if e.is_transient() && Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, "cannot register yet; retrying in {}s", delay.as_secs());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(reconcile::MAX_BACKOFF);
                }
                Err(e) if e.is_unauthorized() || e.status() == Some(403) => {
                    bail!(
                        "the control plane at {} refused the join token ({e}): registering a host \
                         needs a valid admin API token",
                        self.api_url
                    )
                }
                Err(e) => bail!(
                    "cannot register this host with the control plane at {}: {e}",
                    self.api_url
                ),
            }
        };
        let RegisteredHost {
            host_id,
            host_token,
            control_plane_public_key,
        } = registered;
        let token = SecretToken::new(host_token);
        if !reconcile::valid_machine_id(&host_id) {
            bail!("the control plane answered an unusable host id");
        }
        let control_plane_key = ControlPlanePublicKey::from_hex(&control_plane_public_key)
            .context("the control plane answered an invalid public key")?;
        let reg = Registration {
            host: StoredHost {
                host_id: host_id.clone(),
                api_url: self.api_url.clone(),
                control_plane_public_key,
            },
            token,
        };
        identity::save_registration(&self.state_dir, &reg)?;
        tracing::info!(%host_id, name = %self.name, address = %self.address, "registered with the control plane");
        Ok(Session {
            host_id,
            token: reg.token,
            control_plane_key,
        })
    }

    /// After a 401 for the session of `failed_host_id`: registers again unless another task
    /// already did.
    async fn reregister(&self, shared: &Shared, failed_host_id: &str) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        if shared.control_plane.session().host_id != failed_host_id {
            return Ok(());
        }
        tracing::warn!(
            host_id = failed_host_id,
            "the control plane refused this host's token (unknown host or revoked token); \
             registering again"
        );
        let session = self.register(&shared.host_key, Duration::ZERO).await?;
        shared.control_plane.replace_session(session);
        Ok(())
    }
}

/// A registered agent, ready to [`run`](Agent::run).
pub struct Agent {
    listener: TcpListener,
    host_id: String,
    shared: Arc<Shared>,
    registrar: Arc<Registrar>,
    metrics: Metrics,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host_id", &self.host_id)
            .field("address", &self.registrar.address)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Prepares the state directory, stops workloads a previous agent left running, loads or
    /// creates the host identity — registering with `config.join_token` if needed — and
    /// returns once registered. `listener` is where [`run`](Agent::run) serves machine logs;
    /// its address (`http://IP:PORT`) is what the host registers as its address.
    pub async fn start(config: AgentConfig, listener: TcpListener) -> anyhow::Result<Agent> {
        let addr = listener
            .local_addr()
            .context("cannot read the logs listener's address")?;
        if addr.ip().is_unspecified() {
            tracing::warn!(
                %addr,
                "the logs listener is bound to an unspecified address; registering it as-is, \
                 which the control plane can only reach if it runs on this host"
            );
        }
        Self::start_advertising(config, listener, format!("http://{addr}")).await
    }

    /// Like [`start`](Agent::start), registering `address` (the URL where the control plane
    /// reaches this agent's logs server) instead of the listener's own address.
    pub async fn start_advertising(
        config: AgentConfig,
        listener: TcpListener,
        address: String,
    ) -> anyhow::Result<Agent> {
        let AgentConfig {
            api_url,
            vault_url,
            state_dir,
            name,
            join_token,
            stop_timeout,
            starting_after,
            workload_uids,
        } = config;
        identity::ensure_private_dir(&state_dir).with_context(|| {
            format!("cannot create the state directory {}", state_dir.display())
        })?;
        let machines_dir = state_dir.join("machines");
        identity::ensure_private_dir(&machines_dir)
            .with_context(|| format!("cannot create {}", machines_dir.display()))?;
        let users = match workload_uids {
            Some(range) => {
                users::prepare_state_dir(&state_dir, &machines_dir)?;
                tracing::info!(%range, "workloads run under a user id of their app's");
                Some(users::WorkloadUsers::open(&state_dir, range)?)
            }
            None => None,
        };
        let host_key = identity::load_or_create_key(&state_dir)?;

        let killed = kill_leftovers(&machines_dir, stop_timeout).await;
        if killed > 0 {
            tracing::info!(
                count = killed,
                "stopped workloads left by a previous agent; they boot again with their secrets"
            );
        }

        let http = api::http_client();
        let registrar = Arc::new(Registrar {
            state_dir: state_dir.clone(),
            api_url: api_url.clone(),
            name,
            join_token,
            address,
            http: http.clone(),
            lock: tokio::sync::Mutex::new(()),
        });

        let control_plane = match identity::load_registration(&state_dir, &api_url)? {
            Some(reg) => {
                let control_plane_key =
                    ControlPlanePublicKey::from_hex(&reg.host.control_plane_public_key)
                        .with_context(|| {
                            format!(
                        "{} holds an invalid control plane key; delete it to register again",
                        state_dir.join(identity::HOST_FILE).display()
                    )
                        })?;
                let cp = ControlPlane::new(
                    http.clone(),
                    &api_url,
                    Session {
                        host_id: reg.host.host_id.clone(),
                        token: reg.token,
                        control_plane_key,
                    },
                );
                match cp.heartbeat(&registrar.address).await {
                    Ok(()) => {
                        tracing::info!(host_id = %reg.host.host_id, "resuming as a registered host");
                        if reg.host.api_url.trim_end_matches('/') != api_url.trim_end_matches('/') {
                            let moved = Registration {
                                host: StoredHost {
                                    api_url: api_url.clone(),
                                    ..reg.host.clone()
                                },
                                token: SecretToken::new(cp.session().token.expose().to_string()),
                            };
                            identity::save_registration(&state_dir, &moved)?;
                        }
                    }
                    Err(e) if e.is_unauthorized() => {
                        tracing::warn!(
                            host_id = %reg.host.host_id,
                            "the control plane no longer knows this host; registering again"
                        );
                        cp.replace_session(registrar.register(&host_key, REGISTER_PATIENCE).await?);
                    }
                    Err(e) => tracing::warn!(
                        host_id = %reg.host.host_id,
                        error = %e,
                        "cannot reach the control plane yet; continuing as a registered host"
                    ),
                }
                cp
            }
            None => {
                let session = registrar.register(&host_key, REGISTER_PATIENCE).await?;
                ControlPlane::new(http.clone(), &api_url, session)
            }
        };

        let metrics = Metrics::new("coffer_agent");
        let host_id = control_plane.session().host_id.clone();
        let shared = Arc::new(Shared {
            control_plane: Arc::new(control_plane),
            vault: Vault::new(http, &vault_url),
            host_key,
            machines_dir,
            stop_timeout,
            starting_after,
            users,
            metrics: AgentMetrics::new(&metrics),
        });
        Ok(Agent {
            listener,
            host_id,
            shared,
            registrar,
            metrics,
        })
    }

    /// The id the control plane gave this host.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The address registered for this agent's logs server.
    pub fn address(&self) -> &str {
        &self.registrar.address
    }

    /// Runs until `shutdown` resolves: serves logs, heartbeats, long-polls the assignments
    /// and reconciles. On shutdown every workload is stopped (SIGTERM, stop timeout, SIGKILL)
    /// without a state report — see the crate documentation — and `run` returns once they
    /// are all gone.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Agent {
            listener,
            shared,
            registrar,
            metrics,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let trigger = tokio::spawn(async move {
            shutdown.await;
            tracing::info!("host agent shutting down: stopping workloads");
            let _ = stop_tx.send(true);
            // Keep the sender alive until `run` is done with the receivers.
            std::future::pending::<()>().await;
        });

        let router = logs::router(
            logs::LogsState {
                machines_dir: shared.machines_dir.clone(),
                control_plane: shared.control_plane.clone(),
                shutdown: stop_rx.clone(),
            },
            metrics,
        );
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(coffer_http::serve(listener, router, async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        }));
        let heartbeat = tokio::spawn(heartbeat_loop(
            shared.clone(),
            registrar.clone(),
            stop_rx.clone(),
        ));

        let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
        let mut after: i64 = -1;
        let mut failures: u32 = 0;
        let mut stop = stop_rx.clone();
        enum Step {
            Stop,
            Answer(Result<coffer_core::wire::agent::Assignments, CallError>),
        }
        loop {
            if *stop.borrow() {
                break;
            }
            let session = shared.control_plane.session();
            let step = tokio::select! {
                _ = stop.changed() => Step::Stop,
                r = shared.control_plane.assignments(after) => Step::Answer(r),
            };
            let result = match step {
                Step::Stop => break,
                Step::Answer(r) => r,
            };
            match result {
                Ok(list) => {
                    if failures > 0 {
                        tracing::info!("control plane reachable again");
                    }
                    failures = 0;
                    after = list.generation;
                    apply(&shared, &mut workers, &list.machines, &stop_rx);
                    continue;
                }
                Err(e) if e.is_unauthorized() => {
                    after = -1;
                    match registrar.reregister(&shared, &session.host_id).await {
                        Ok(()) => continue,
                        Err(err) => {
                            failures += 1;
                            tracing::error!(error = %format!("{err:#}"), "cannot register again; machines keep their current state");
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "cannot get assignments; machines keep their current state");
                }
            }
            let delay = reconcile::backoff_delay(failures);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => break,
            }
        }

        // Shutdown: every worker stops its workload (they watch the same signal).
        for (_, w) in std::mem::take(&mut workers) {
            w.join().await;
        }
        let _ = heartbeat.await;
        let served = server.await;
        trigger.abort();
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e).context("the logs server failed"),
            Err(e) => Err(e).context("the logs server task failed"),
        }
    }
}

/// Applies one assignments answer to the workers.
fn apply(
    shared: &Arc<Shared>,
    workers: &mut BTreeMap<String, WorkerHandle>,
    assignments: &[Assignment],
    stop: &watch::Receiver<bool>,
) {
    workers.retain(|_, w| !w.is_finished());
    let current: BTreeMap<String, Assignment> = workers
        .iter()
        .map(|(id, w)| (id.clone(), w.assignment.clone()))
        .collect();
    let dirs = machine_dirs(&shared.machines_dir);
    for action in reconcile::plan_host(assignments, &current, &dirs) {
        match action {
            reconcile::HostAction::Spawn(a) => {
                tracing::debug!(machine_id = %a.machine_id, generation = a.generation, desired = a.desired.as_str(), "new machine worker");
                let id = a.machine_id.clone();
                workers.insert(id, machine::start_worker(shared.clone(), a, stop.clone()));
            }
            reconcile::HostAction::Update(a) => {
                tracing::debug!(machine_id = %a.machine_id, generation = a.generation, desired = a.desired.as_str(), "machine assignment changed");
                if let Some(w) = workers.get_mut(&a.machine_id) {
                    w.update(a);
                }
            }
            reconcile::HostAction::Retire(id) => {
                if let Some(w) = workers.get(&id) {
                    w.retire();
                }
            }
            reconcile::HostAction::DeleteDir(id) => {
                tracing::info!(machine_id = %id, "deleting the directory of a machine no longer assigned here");
                if let Err(e) = std::fs::remove_dir_all(shared.machines_dir.join(&id)) {
                    tracing::warn!(machine_id = %id, error = %e, "cannot delete a machine directory");
                }
            }
            reconcile::HostAction::Ignore(id) => {
                tracing::warn!(machine_id = %api::one_line(&id), "ignoring an assignment with an unusable machine id");
            }
        }
    }
}

/// The machine directories on disk.
fn machine_dirs(machines_dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(machines_dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| reconcile::valid_machine_id(n))
        .collect()
}

/// Kills, concurrently, every workload a previous agent recorded and left running.
async fn kill_leftovers(machines_dir: &Path, stop_timeout: Duration) -> usize {
    let mut tasks = Vec::new();
    for id in machine_dirs(machines_dir) {
        let dir = machines_dir.join(&id);
        tasks.push(tokio::spawn(async move {
            supervisor::kill_leftover(&dir, stop_timeout).await
        }));
    }
    let mut killed = 0;
    for t in tasks {
        if matches!(t.await, Ok(true)) {
            killed += 1;
        }
    }
    killed
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    registrar: Arc<Registrar>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // `start` has just heartbeaten or registered
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let session = shared.control_plane.session();
        match shared.control_plane.heartbeat(&registrar.address).await {
            Ok(()) => {
                if failing {
                    tracing::info!("heartbeat delivered again");
                }
                failing = false;
            }
            Err(e) if e.is_unauthorized() => {
                if let Err(err) = registrar.reregister(&shared, &session.host_id).await {
                    tracing::error!(error = %format!("{err:#}"), "cannot register again");
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
                failing = true;
            }
        }
    }
}
