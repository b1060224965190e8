//! The control plane. It holds each app's *public* key and digest key, never a private key:
//! it can seal a value, compute its digest, and store the ciphertext — it cannot read a value
//! back. No route returns a value.
//!
//! Routes (all under a bearer API token; see [`auth`]):
//!
//! | route | action | what |
//! |---|---|---|
//! | `POST /v1/apps` | admin | create an app (and, in the vault, its keys) |
//! | `GET /v1/apps` | read | the apps the token may see |
//! | `GET /v1/apps/{app}` | read | one app |
//! | `DELETE /v1/apps/{app}` | admin | destroy the app's keys, then the app |
//! | `GET /v1/apps/{app}/secrets` | read | names, digests, dates, status — never values |
//! | `POST /v1/apps/{app}/secrets` | deploy | one atomic change (set/unset), a new version |
//! | `POST /v1/apps/{app}/secrets/deploy` | deploy | deploy the staged version |
//! | `GET /v1/apps/{app}/secrets/history` | read | the versions |
//! | `POST /v1/tokens`, `GET /v1/tokens`, `DELETE /v1/tokens/{id}` | admin | API tokens |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none | liveness, readiness, metrics |

pub mod apps;
pub mod auth;
pub mod keys;
pub mod secrets;
pub mod timefmt;
pub mod tokens;

use axum::routing::{delete, get, post};
use axum::Router;
use coffer_http::{ApiError, ApiResult, Metrics};
use coffer_store::Store;
use std::sync::Arc;

pub use keys::{KeyCache, VaultClient};

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub keys: Arc<KeyCache>,
}

impl ApiState {
    pub fn new(store: Store, vault: VaultClient) -> Self {
        Self {
            store,
            keys: Arc::new(KeyCache::new(vault)),
        }
    }
}

pub fn router(state: ApiState, metrics: Metrics) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/apps", post(apps::create).get(apps::list))
        .route("/v1/apps/{app}", get(apps::get).delete(apps::destroy))
        .route(
            "/v1/apps/{app}/secrets",
            get(secrets::list).post(secrets::write),
        )
        .route("/v1/apps/{app}/secrets/deploy", post(secrets::deploy))
        .route("/v1/apps/{app}/secrets/history", get(secrets::history))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state);
    coffer_http::with_common_layers(routes, metrics)
}

async fn readyz(
    axum::extract::State(s): axum::extract::State<ApiState>,
) -> ApiResult<&'static str> {
    s.store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable("store unreachable", e))?;
    Ok("ready")
}
