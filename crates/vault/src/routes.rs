//! The vault's HTTP interface.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /v1/apps/{app_id}/keys` | API (service token) | create the app's keys (idempotent); returns public + digest key |
//! | `GET /v1/apps/{app_id}/keys` | API (service token) | the same, for an existing app |
//! | `DELETE /v1/apps/{app_id}/keys` | API (service token) | destroy the app's keys |
//! | `POST /v1/decrypt` | a host (machine token + host signature) | values of one boot, sealed to the host's one-time key (see [`crate::decrypt`]) |
//! | `GET /v1/sys/seal-status` | anyone | `{sealed, threshold, progress}` |
//! | `POST /v1/sys/unseal` | anyone (a share is its own credential) | one holder's share `{share}`; unseals once enough make the store's key (see [`crate::seal`]) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | anyone | liveness, readiness (unsealed, store reachable), metrics |
//!
//! While the vault is sealed every other route answers 503 `sealed`.

use crate::seal::{Custody, SealStatus, UnsealRefusal};
use crate::wire::SealingKeysBody;
use crate::{Vault, VaultError};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use coffer_crypto::machine_token::ControlPlanePublicKey;
use coffer_crypto::SealingKeys;
use coffer_http::{ApiError, ApiResult, Metrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2_compat::service_token_hash;
use std::sync::Arc;

#[derive(Clone)]
pub struct VaultState {
    /// The vault once unsealed (see [`crate::seal`]).
    custody: Custody,
    /// SHA-256 of the service token shared with the API.
    pub service_token_hash: Arc<[u8; 32]>,
    /// Verifies machine tokens; without it the vault decrypts nothing.
    pub control_plane_key: Option<ControlPlanePublicKey>,
    decrypts: Family<OutcomeLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl VaultState {
    pub fn new(
        custody: Custody,
        service_token: &str,
        control_plane_key: Option<ControlPlanePublicKey>,
    ) -> Self {
        Self {
            custody,
            service_token_hash: Arc::new(service_token_hash(service_token)),
            control_plane_key,
            decrypts: Family::default(),
        }
    }

    /// The vault, or 503 while it is sealed.
    pub(crate) fn vault(&self) -> ApiResult<&Vault> {
        self.custody.vault().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sealed",
                "the vault is sealed",
            )
            .with_hint(
                "unseal it: `cofferd vault operator unseal --vault-url URL` by each share holder",
            )
        })
    }

    pub(crate) fn count_decrypt(&self, outcome: &'static str) {
        self.decrypts.get_or_create(&OutcomeLabel { outcome }).inc();
    }
}

pub fn router(state: VaultState, metrics: Metrics) -> Router {
    metrics.register(
        "decrypts",
        "Decrypt requests by outcome",
        state.decrypts.clone(),
    );
    let routes = Router::new()
        .route("/v1/decrypt", post(crate::decrypt::decrypt))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/sys/seal-status", get(seal_status))
        .route("/v1/sys/unseal", post(unseal))
        .route(
            "/v1/apps/{app_id}/keys",
            post(create_keys).get(get_keys).delete(delete_keys),
        )
        .with_state(state);
    coffer_http::with_common_layers(routes, metrics)
}

/// Proof that the caller holds the service token (the API).
struct Service;

impl FromRequestParts<VaultState> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &VaultState) -> Result<Self, ApiError> {
        let presented = coffer_http::bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        if coffer_crypto::token::ct_eq(
            &service_token_hash(presented),
            state.service_token_hash.as_ref(),
        ) {
            Ok(Service)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

async fn readyz(State(s): State<VaultState>) -> ApiResult<&'static str> {
    s.vault()?
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::unavailable("store unreachable", e))?;
    Ok("ready")
}

fn check_app_id(app_id: &str) -> ApiResult<()> {
    if app_id.len() == 32 && app_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::bad_request("malformed app id"))
    }
}

fn body(keys: SealingKeys) -> Json<SealingKeysBody> {
    Json(SealingKeysBody {
        public_key: keys.public_key_hex(),
        digest_key: keys.digest_key_hex(),
    })
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::NoKey => ApiError::not_found("app key"),
            VaultError::Integrity => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "integrity", e.to_string())
            }
            VaultError::Malformed(m) => ApiError::bad_request(m),
            VaultError::Store(s) => s.into(),
            other @ VaultError::WrongRootKey { .. } => ApiError::internal(other),
        }
    }
}

async fn create_keys(
    _: Service,
    State(s): State<VaultState>,
    Path(app_id): Path<String>,
) -> ApiResult<Json<SealingKeysBody>> {
    check_app_id(&app_id)?;
    Ok(body(s.vault()?.ensure_app_keys(&app_id).await?))
}

async fn get_keys(
    _: Service,
    State(s): State<VaultState>,
    Path(app_id): Path<String>,
) -> ApiResult<Json<SealingKeysBody>> {
    check_app_id(&app_id)?;
    Ok(body(s.vault()?.sealing_keys(&app_id).await?))
}

async fn delete_keys(
    _: Service,
    State(s): State<VaultState>,
    Path(app_id): Path<String>,
) -> ApiResult<StatusCode> {
    check_app_id(&app_id)?;
    s.vault()?.destroy_app_keys(&app_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn seal_status(State(s): State<VaultState>) -> Json<SealStatus> {
    Json(s.custody.status().await)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsealBody {
    share: String,
}

/// Open to anyone, as Vault's is: a share is its own credential. Nothing of a share is ever
/// logged or echoed.
async fn unseal(
    State(s): State<VaultState>,
    body: Result<Json<UnsealBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<SealStatus>> {
    let Json(body) = body?;
    let share = zeroize::Zeroizing::new(body.share);
    match s.custody.unseal(&share).await {
        Ok(status) => Ok(Json(status)),
        Err(UnsealRefusal::Vault(e)) => Err(e.into()),
        Err(UnsealRefusal::NotShamir) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_shamir",
            UnsealRefusal::NotShamir.to_string(),
        )),
        Err(refusal) => Err(ApiError::bad_request(refusal.to_string())),
    }
}

mod sha2_compat {
    /// The service token is compared by hash so that the comparison is constant-time and the
    /// process keeps no copy of the token itself.
    pub fn service_token_hash(token: &str) -> [u8; 32] {
        coffer_crypto::token::sha256(token.as_bytes())
    }
}
