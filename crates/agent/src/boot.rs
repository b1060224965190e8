//! One boot of one machine: boot grant → one-time key → vault decrypt → open the bundle →
//! build the environment → spawn. Every step must succeed: a machine never starts with part
//! of its secrets, or none.
//!
//! Secret material in flight: the machine token is wiped from the grant and the request once
//! the vault has answered; the one-time private key is dropped (and wiped) after the bundle
//! is opened; the opened values move into the [`WorkloadEnv`](crate::environment::WorkloadEnv),
//! which the spawn consumes and wipes.

use crate::api::CallError;
use crate::environment::{self, EnvError, Platform};
use crate::logs::MachineLog;
use crate::supervisor::{self, SpawnError, Workload};
use crate::Shared;
use coffer_core::wire::agent::{Assignment, BootGrant, DecryptRequest};
use coffer_core::SecretValue;
use coffer_crypto::machine_token::{decrypt_request_message, unb64};
use coffer_crypto::PrivateKey;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroize as _;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no boot grant: {0}")]
    Grant(CallError),
    #[error("{0}")]
    Vault(CallError),
    #[error("the secrets bundle does not open: {0}")]
    Bundle(String),
    #[error("{0}")]
    Env(#[from] EnvError),
    #[error("{0}")]
    Spawn(#[from] SpawnError),
    #[error("cannot prepare the machine's directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    User(#[from] crate::users::UsersError),
}

impl BootError {
    /// The control plane says this boot should not happen (the machine was stopped, destroyed
    /// or moved meanwhile): not a failure to report, a newer assignment is on its way.
    pub fn is_superseded(&self) -> bool {
        matches!(self, BootError::Grant(e) if matches!(e.status(), Some(404 | 409)))
    }
}

/// Asks the vault for the grant's values, sealed to a one-time key made for this boot, and
/// opens them. The one-time private key lives only inside this function.
async fn decrypt(
    shared: &Shared,
    machine_id: &str,
    grant: &mut BootGrant,
) -> Result<Vec<(String, SecretValue)>, BootError> {
    let (one_time_key, one_time_public) = PrivateKey::generate();
    let public_hex = hex::encode(one_time_public.to_bytes());
    let issued_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let presented: Vec<(&str, i64, &str)> = grant
        .ciphertexts
        .iter()
        .map(|c| (c.name.as_str(), c.version, c.ciphertext.as_str()))
        .collect();
    let message = decrypt_request_message(
        &grant.machine_token,
        machine_id,
        &public_hex,
        issued_at,
        &presented,
    );
    let mut request = DecryptRequest {
        machine_token: grant.machine_token.clone(),
        machine_id: machine_id.to_string(),
        one_time_public_key: public_hex,
        ciphertexts: std::mem::take(&mut grant.ciphertexts),
        issued_at,
        host_signature: shared.host_key.sign_hex(&message),
    };
    let answer = shared.vault.decrypt(&request).await;
    request.machine_token.zeroize();
    let answer = answer.map_err(BootError::Vault)?;

    let bundle = unb64(&answer.bundle)
        .ok_or_else(|| BootError::Bundle("the vault's answer is not base64".into()))?;
    // The context the vault sealed for: (app id, machine id, secrets version in decimal).
    let version = grant.secrets_version.to_string();
    coffer_crypto::bundle::open_bundle(
        &one_time_key,
        &[
            grant.app_id.as_bytes(),
            machine_id.as_bytes(),
            version.as_bytes(),
        ],
        &bundle,
    )
    .map_err(|e| BootError::Bundle(e.to_string()))
}

/// A started workload and what it was started with.
pub struct Booted {
    pub workload: Workload,
    pub secrets_version: i64,
    pub release_version: i64,
}

pub(crate) async fn boot(
    shared: &Shared,
    a: &Assignment,
    machine_dir: &Path,
    log: &MachineLog,
) -> Result<Booted, BootError> {
    let started = Instant::now();
    // The app's user first: a host out of user ids asks nobody for secrets.
    let user = match &shared.users {
        Some(users) => Some(users.uid_of(&a.app_id)?),
        None => None,
    };
    let mut grant = shared
        .control_plane
        .boot(&a.machine_id)
        .await
        .map_err(BootError::Grant)?;

    let secrets = decrypt(shared, &a.machine_id, &mut grant).await;
    grant.machine_token.zeroize();
    let secrets = secrets?;

    let home = machine_dir.join("home");
    crate::identity::ensure_private_dir(&home)?;
    if let Some(uid) = user {
        crate::users::hand_over_home(machine_dir, &home, uid)?;
    }
    let env = environment::build(
        secrets,
        &a.env,
        &Platform {
            app_name: &grant.app_name,
            machine_id: &a.machine_id,
            release_version: grant.release_version,
        },
        &home,
    )?;
    let count = env.len();
    let workload = supervisor::spawn(
        &a.command,
        env,
        user,
        &home,
        machine_dir,
        log,
        a.generation,
        grant.secrets_version,
    )?;
    shared
        .metrics
        .boot_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        machine_id = %a.machine_id,
        generation = a.generation,
        secrets_version = grant.secrets_version,
        release_version = grant.release_version,
        variables = count,
        pid = workload.pid,
        boot_ms = started.elapsed().as_millis() as u64,
        "machine booted"
    );
    Ok(Booted {
        workload,
        secrets_version: grant.secrets_version,
        release_version: grant.release_version,
    })
}
