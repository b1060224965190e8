//! The control plane's side of host agents: registration, heartbeats, assignments (long-poll),
//! state reports, and boot grants — the machine token and ciphertexts for one boot.

use crate::auth::{Caller, HostCaller};
use crate::timefmt::rfc3339;
use crate::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_core::wire::agent::{
    Assignment, Assignments, BootGrant, Heartbeat, PresentedCiphertext, RegisterHost,
    RegisteredHost, StateReport,
};
use coffer_core::wire::machines::{DesiredState, MachineState};
use coffer_core::Action;
use coffer_crypto::machine_token::{b64, mint_machine_token, MachineClaims};
use coffer_http::{ApiError, ApiResult};
use coffer_store::{now_micros, MachineRecord, StoreError};
use std::time::Duration;

/// Machine tokens live minutes: long enough for one boot, short enough that a leaked one is
/// soon worthless even before its machine is destroyed.
pub const MACHINE_TOKEN_TTL_SECS: i64 = 300;
/// How long an assignments request waits for a change before answering anyway.
const LONG_POLL: Duration = Duration::from_secs(15);
/// An assignments answer records the host as seen only if it was last seen this long ago.
/// Agents heartbeat every 10 s; a host that only long-polls (one answer at least every 15 s)
/// is still recorded within 20 + 15 s, inside the 60 s after which placement skips it
/// (`machines::HOST_ALIVE_MICROS`).
const TOUCH_AFTER_MICROS: i64 = 20 * 1_000_000;
const _: () = assert!(
    TOUCH_AFTER_MICROS + (LONG_POLL.as_micros() as i64) < crate::machines::HOST_ALIVE_MICROS
);
/// Re-read the store this often while long-polling, so that changes made by another API
/// replica are seen without a shared notification channel.
const POLL_STORE_EVERY: Duration = Duration::from_millis(1000);

/// A host's address is the origin of its agent (scheme, host, port) and nothing more. The API
/// builds the URLs it calls from it (the logs proxy), so a path, query, fragment or credentials
/// in it, which the host itself sets, could point those calls elsewhere.
fn valid_address(a: &str) -> bool {
    if a.len() > 256 || a.chars().any(char::is_whitespace) {
        return false;
    }
    let Ok(url) = reqwest::Url::parse(a) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none()
}

pub async fn register(
    caller: Caller,
    State(s): State<ApiState>,
    body: Result<Json<RegisterHost>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RegisteredHost>)> {
    // A join token (or a global admin's).
    caller.require(Action::Join, None)?;
    let Json(body) = body?;
    if body.name.is_empty()
        || body.name.len() > 63
        || !body
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ApiError::invalid(
            "host name must be 1 to 63 letters, digits, '-' or '.'",
        ));
    }
    if !valid_address(&body.address) {
        return Err(ApiError::invalid(
            "host address must be the agent's http:// or https:// origin (scheme, host and port only)",
        ));
    }
    if body.public_key.len() != 64 || !body.public_key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(
            "host public key must be 64 hex characters (Ed25519)",
        ));
    }
    let minted = coffer_crypto::token::mint_token();
    let host = s
        .store
        .register_host(
            &minted.id,
            &body.name,
            &body.address,
            &body.public_key.to_ascii_lowercase(),
            &minted.secret_hash,
        )
        .await?;
    tracing::info!(host_id = %host.id, name = %host.name, "host registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisteredHost {
            host_id: host.id,
            host_token: minted.token.expose().to_string(),
            control_plane_public_key: s.signing_key.public_key_hex(),
        }),
    ))
}

pub async fn heartbeat(
    host: HostCaller,
    State(s): State<ApiState>,
    Path(host_id): Path<String>,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> ApiResult<StatusCode> {
    host.require_host(&host_id)?;
    let Json(body) = body?;
    if !valid_address(&body.address) {
        return Err(ApiError::invalid(
            "host address must be the agent's http:// or https:// origin (scheme, host and port only)",
        ));
    }
    s.store.touch_host(&host_id, &body.address).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
pub struct AfterQuery {
    after: Option<i64>,
}

pub fn assignment(m: &MachineRecord, app_name: &str) -> Assignment {
    Assignment {
        machine_id: m.id.clone(),
        app_id: m.app_id.clone(),
        app_name: app_name.to_string(),
        name: m.name.clone(),
        command: m.config.command.clone(),
        env: m.config.env.clone(),
        restart: m.config.restart,
        check: m.config.check.clone(),
        desired: m.desired,
        secrets_version: m.secrets_version,
        release_version: m.release_version,
        generation: m.generation,
    }
}

pub async fn assignments(
    host: HostCaller,
    State(s): State<ApiState>,
    Path(host_id): Path<String>,
    Query(q): Query<AfterQuery>,
) -> ApiResult<Json<Assignments>> {
    host.require_host(&host_id)?;
    let after = q.after.unwrap_or(-1);
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    let mut changes = s.host_changes.subscribe();
    let (generation, machines) = loop {
        let (generation, machines) = s.store.host_assignments(&host_id).await?;
        let now = tokio::time::Instant::now();
        if generation > after || now >= deadline {
            break (generation, machines);
        }
        let wait = (deadline - now).min(POLL_STORE_EVERY);
        let _ = tokio::time::timeout(wait, changes.changed()).await;
    };
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(machines.len());
    for m in &machines {
        if !names.contains_key(&m.app_id) {
            let name = match s.store.app_by_id(&m.app_id).await {
                Ok(a) => a.name.to_string(),
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            names.insert(m.app_id.clone(), name);
        }
        out.push(assignment(m, &names[&m.app_id]));
    }
    // Seen, so alive: long-polls double as heartbeats for placement, but only where the host's
    // heartbeats have not recorded it lately. Each touch is a durable write, and this answer is
    // on the path of every machine start: waking the host to boot waited for that commit.
    if now_micros() - host.host.last_seen_at >= TOUCH_AFTER_MICROS {
        let _ = s.store.touch_host(&host_id, &host.host.address).await;
    }
    Ok(Json(Assignments {
        generation,
        machines: out,
    }))
}

pub async fn report_state(
    host: HostCaller,
    State(s): State<ApiState>,
    Path((host_id, machine_id)): Path<(String, String)>,
    body: Result<Json<StateReport>, JsonRejection>,
) -> ApiResult<StatusCode> {
    host.require_host(&host_id)?;
    let Json(body) = body?;
    let message = body.message.as_deref().map(|m| clip(m, 500));
    let m = s
        .store
        .report_machine_state(
            &machine_id,
            &host_id,
            body.state,
            body.exit_status,
            message.as_deref(),
            body.generation,
        )
        .await?;
    tracing::debug!(machine = %m.id, state = body.state.as_str(), exit_status = ?body.exit_status, "machine state reported");
    s.notify_machine_event();
    Ok(StatusCode::NO_CONTENT)
}

fn clip(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

/// The grant for one boot: a fresh machine token scoped to (app, machine, host, host key) and
/// the ciphertexts of the machine's secrets version. The values themselves only the vault can
/// open, and only for this token.
pub async fn boot(
    host: HostCaller,
    State(s): State<ApiState>,
    Path((host_id, machine_id)): Path<(String, String)>,
) -> ApiResult<Json<BootGrant>> {
    host.require_host(&host_id)?;
    let m = s.store.machine(&machine_id).await?;
    if m.host_id != host_id {
        return Err(ApiError::not_found("machine"));
    }
    if m.desired != DesiredState::Running || m.destroyed_at.is_some() {
        return Err(ApiError::conflict(format!(
            "machine {} is not meant to run",
            m.id
        )));
    }
    let app = s.store.app_by_id(&m.app_id).await?;
    let snapshot = s.store.snapshot(&m.app_id, m.secrets_version).await?;
    let expires_at = now_micros() / 1_000_000 + MACHINE_TOKEN_TTL_SECS;
    let token = mint_machine_token(
        &s.signing_key,
        &MachineClaims {
            app_id: m.app_id.clone(),
            machine_id: m.id.clone(),
            host_id: host_id.clone(),
            host_key: host.host.public_key.clone(),
            expires_at,
        },
    )
    .map_err(ApiError::internal)?;
    tracing::info!(machine = %m.id, app = %app.name, secrets_version = m.secrets_version, "machine token issued");
    Ok(Json(BootGrant {
        machine_token: token,
        app_id: m.app_id.clone(),
        app_name: app.name.to_string(),
        secrets_version: m.secrets_version,
        release_version: m.release_version,
        ciphertexts: snapshot
            .iter()
            .map(|c| PresentedCiphertext {
                name: c.name.to_string(),
                version: c.value_version,
                ciphertext: b64(&c.ciphertext),
            })
            .collect(),
        expires_at: rfc3339(expires_at * 1_000_000),
    }))
}

/// Whether a machine in this state has stopped for good or for now (not running, not trying).
pub fn is_down(state: MachineState) -> bool {
    matches!(
        state,
        MachineState::Stopped | MachineState::Exited | MachineState::Destroyed
    )
}

#[cfg(test)]
mod tests {
    use super::valid_address;

    #[test]
    fn a_host_address_is_an_origin_only() {
        for ok in [
            "http://127.0.0.1:4003",
            "http://127.0.0.1:4003/",
            "https://host-1.internal:8443",
            "http://[::1]:4003",
        ] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:4003",
            "ftp://host:21",
            "file:///etc/passwd",
            "http://",
            "http://169.254.169.254/latest/meta-data/?x=",
            "http://host:4003/prefix",
            "http://host:4003?x=1",
            "http://host:4003#frag",
            "http://user:pw@host:4003",
            "http://user@host:4003",
            "http://host :4003",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
        assert!(!valid_address(&format!(
            "http://{}.example",
            "a".repeat(250)
        )));
    }
}
