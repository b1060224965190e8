//! Machines as users drive them: run, list, stop, start, destroy, logs.

use crate::apps::authorized_app;
use crate::auth::Caller;
use crate::timefmt::rfc3339;
use crate::ApiState;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use coffer_core::wire::machines::{DesiredState, Machine, MachineState, RunMachine};
use coffer_core::{Action, AppName, SecretName};
use coffer_crypto::machine_token::{mint_logs_grant, LogsClaims};
use coffer_http::{ApiError, ApiResult};
use coffer_store::{now_micros, AppRecord, HostRecord, MachineConfig, MachineRecord, NewMachine};
use std::collections::HashMap;

/// A host that has not been heard from for this long gets no new machines.
pub(crate) const HOST_ALIVE_MICROS: i64 = 60 * 1_000_000;
const MAX_COMMAND_BYTES: usize = 64 * 1024;
const MAX_ENV_BYTES: usize = 64 * 1024;

pub fn to_wire(m: &MachineRecord, app: &AppName, hosts: &HashMap<String, String>) -> Machine {
    Machine {
        id: m.id.clone(),
        app: app.to_string(),
        name: m.name.clone(),
        state: m.state,
        desired: m.desired,
        secrets_version: m.secrets_version,
        release_version: m.release_version,
        host: hosts
            .get(&m.host_id)
            .cloned()
            .unwrap_or_else(|| m.host_id.clone()),
        command: m.config.command.clone(),
        restart: m.config.restart,
        check: m.config.check.clone(),
        exit_status: m.exit_status,
        message: m.message.clone(),
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(m.updated_at),
    }
}

async fn host_names(s: &ApiState) -> ApiResult<HashMap<String, String>> {
    Ok(s.store
        .hosts()
        .await?
        .into_iter()
        .map(|h| (h.id, h.name))
        .collect())
}

fn validate(body: &RunMachine) -> ApiResult<()> {
    if body.command.is_empty() || body.command[0].is_empty() {
        return Err(ApiError::invalid(
            "a command is needed: coffer machines run -- CMD ARG…",
        ));
    }
    let cmd_bytes: usize = body.command.iter().map(String::len).sum();
    if cmd_bytes > MAX_COMMAND_BYTES || body.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid(
            "the command must be under 64 KiB and contain no NUL byte",
        ));
    }
    let mut env_bytes = 0;
    for (k, v) in &body.env {
        SecretName::parse(k).map_err(|e| ApiError::invalid(format!("--env: {e}")))?;
        if v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "--env {k}: value contains a NUL byte"
            )));
        }
        env_bytes += k.len() + v.len();
    }
    if env_bytes > MAX_ENV_BYTES {
        return Err(ApiError::invalid("--env values must total under 64 KiB"));
    }
    if let Some(n) = &body.name {
        AppName::parse(n).map_err(|_| {
            ApiError::invalid("machine name must be 1 to 63 lowercase letters, digits and '-', starting with a letter")
        })?;
    }
    if let Some(check) = &body.check {
        // The path goes into the agent's request line verbatim: no spaces, no CR/LF.
        check.validate().map_err(ApiError::invalid)?;
    }
    Ok(())
}

/// The live host with the fewest machines that are not destroyed.
async fn place(s: &ApiState) -> ApiResult<HostRecord> {
    let now = now_micros();
    let hosts: Vec<HostRecord> = s
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| now - h.last_seen_at < HOST_ALIVE_MICROS)
        .collect();
    let mut best: Option<(usize, HostRecord)> = None;
    for h in hosts {
        let (_, machines) = s.store.host_assignments(&h.id).await?;
        let load = machines
            .iter()
            .filter(|m| m.desired != DesiredState::Destroyed)
            .count();
        if best.as_ref().is_none_or(|(l, _)| load < *l) {
            best = Some((load, h));
        }
    }
    best.map(|(_, h)| h).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_host",
            "no host is available to run the machine",
        )
        .with_hint("start a host agent (cofferd agent); cofferd dev runs one")
    })
}

pub async fn run(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    body: Result<Json<RunMachine>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Machine>)> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let Json(body) = body?;
    validate(&body)?;
    let host = place(&s).await?;
    let id = hex::encode(coffer_crypto::random_array::<8>());
    let name = body
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", app.name, &id[..6]));
    let m = s
        .store
        .create_machine(NewMachine {
            id,
            app_id: app.id.clone(),
            host_id: host.id.clone(),
            name,
            config: MachineConfig {
                command: body.command,
                env: body.env,
                restart: body.restart,
                check: body.check,
            },
            // A machine boots with what is deployed, never with what is only staged.
            secrets_version: app.deployed_version,
            release_version: app.release_version,
        })
        .await?;
    s.notify_hosts();
    tracing::info!(app = %app.name, machine = %m.id, host = %host.name, "machine created");
    let hosts = HashMap::from([(host.id.clone(), host.name.clone())]);
    Ok((StatusCode::CREATED, Json(to_wire(&m, &app.name, &hosts))))
}

pub async fn list(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Machine>>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    let hosts = host_names(&s).await?;
    let machines = s.store.app_machines(&app.id).await?;
    Ok(Json(
        machines
            .iter()
            .filter(|m| m.desired != DesiredState::Destroyed)
            .map(|m| to_wire(m, &app.name, &hosts))
            .collect(),
    ))
}

async fn machine_of(s: &ApiState, app: &AppRecord, id: &str) -> ApiResult<MachineRecord> {
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("machine"));
    }
    let m = s.store.machine(id).await?;
    // Another app's machine is "not found", whatever the caller's token.
    if m.app_id != app.id || m.desired == DesiredState::Destroyed {
        return Err(ApiError::not_found("machine"));
    }
    Ok(m)
}

pub async fn get(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    let m = machine_of(&s, &app, &id).await?;
    Ok(Json(to_wire(&m, &app.name, &host_name(&s, &m).await?)))
}

/// Changes the desired state of `m`, a machine of `app` that the caller may deploy to, and
/// wakes its host.
async fn set_desired(
    s: &ApiState,
    app: &AppRecord,
    m: &MachineRecord,
    desired: DesiredState,
) -> ApiResult<Json<Machine>> {
    let m = s.store.set_machine_desired(&m.id, desired).await?;
    s.notify_hosts();
    tracing::info!(app = %app.name, machine = %m.id, desired = desired.as_str(), "machine desired state changed");
    Ok(Json(to_wire(&m, &app.name, &host_name(s, &m).await?)))
}

/// The name of the machine's host, as [`to_wire`] takes it: one read, not every host's.
async fn host_name(s: &ApiState, m: &MachineRecord) -> ApiResult<HashMap<String, String>> {
    match s.store.host(&m.host_id).await {
        Ok(host) => Ok(HashMap::from([(host.id, host.name)])),
        // Shown by its id, as `to_wire` does for any host it is not given.
        Err(coffer_store::StoreError::NotFound(_)) => Ok(HashMap::new()),
        Err(e) => Err(e.into()),
    }
}

pub async fn stop(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let m = machine_of(&s, &app, &id).await?;
    set_desired(&s, &app, &m, DesiredState::Stopped).await
}

/// Boots a stopped or exited machine with the app's deployed secrets.
pub async fn start(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let m = machine_of(&s, &app, &id).await?;
    if m.secrets_version != app.deployed_version {
        s.store
            .set_machine_version(&id, app.deployed_version, app.release_version)
            .await?;
    }
    set_desired(&s, &app, &m, DesiredState::Running).await
}

/// Destroys the machine. When this answers, the destruction is committed to the store, which
/// is what the vault checks on every decrypt: the machine's tokens are already refused. The
/// host stops the workload as soon as it sees the change.
pub async fn destroy(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Machine>> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let m = machine_of(&s, &app, &id).await?;
    set_desired(&s, &app, &m, DesiredState::Destroyed).await
}

#[derive(serde::Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// Streams the machine's output from its host. The API holds no logs: it asks the agent, with
/// a one-minute grant signed by the control-plane key that the agent verifies.
///
/// Needs `deploy`, not `read`: a workload's output is whatever it prints, its secrets included
/// (a start-up banner, a crash dump of its environment), and a `read` token may see names and
/// digests only (PRODUCT.md §5.6).
pub async fn logs(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let m = machine_of(&s, &app, &id).await?;
    let host = s.store.host(&m.host_id).await?;
    let grant = mint_logs_grant(
        &s.signing_key,
        &LogsClaims {
            machine_id: m.id.clone(),
            host_id: host.id.clone(),
            expires_at: now_micros() / 1_000_000 + 60,
        },
    )
    .map_err(ApiError::internal)?;
    let url = format!(
        "{}/v1/machines/{}/logs?follow={}",
        host.address.trim_end_matches('/'),
        m.id,
        q.follow
    );
    let resp = s
        .agent_http
        .get(url)
        .bearer_auth(grant)
        .send()
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("host {} is unreachable", host.name), e)
                .with_hint("check that the host's agent is running")
        })?;
    if !resp.status().is_success() {
        return Err(ApiError::unavailable(
            format!("host {} could not serve the logs", host.name),
            format!("agent answered {}", resp.status()),
        ));
    }
    Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from_stream(resp.bytes_stream()))
        .map_err(ApiError::internal)
}

/// A machine that is neither running nor about to run.
pub fn is_settled(m: &MachineRecord) -> bool {
    matches!(
        m.state,
        MachineState::Stopped | MachineState::Exited | MachineState::Destroyed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::wire::machines::{HealthCheck, RestartPolicy};

    fn run(check: Option<HealthCheck>) -> RunMachine {
        RunMachine {
            name: None,
            command: vec!["./server".into()],
            env: Default::default(),
            restart: RestartPolicy::No,
            check,
        }
    }

    #[test]
    fn health_checks_are_validated() {
        let http = |port, path: &str| {
            Some(HealthCheck::Http {
                port,
                path: path.into(),
            })
        };
        assert!(validate(&run(None)).is_ok());
        assert!(validate(&run(http(8080, "/healthz"))).is_ok());
        assert!(validate(&run(Some(HealthCheck::Tcp { port: 5432 }))).is_ok());
        for (bad, why) in [
            (http(0, "/"), "port"),
            (Some(HealthCheck::Tcp { port: 0 }), "port"),
            (http(8080, "healthz"), "start with '/'"),
            (http(8080, "/a b"), "spaces"),
            (http(8080, "/a\r\nHost: evil"), "control"),
            (http(8080, &format!("/{}", "x".repeat(512))), "512"),
        ] {
            let e = validate(&run(bad.clone())).unwrap_err();
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
            assert!(e.message.contains(why), "{bad:?}: {}", e.message);
        }
    }
}
