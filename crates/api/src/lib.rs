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
//! | `PATCH /v1/apps/{app}` | deploy | settings: the crash window |
//! | `GET /v1/apps/{app}/releases[/{version}]` | read | releases: status, reason, progress |
//! | `GET /v1/apps/{app}/secrets` | read | names, digests, dates, status — never values |
//! | `POST /v1/apps/{app}/secrets` | deploy | one atomic change (set/unset), a new version |
//! | `POST /v1/apps/{app}/secrets/deploy` | deploy | deploy the staged version |
//! | `GET /v1/apps/{app}/secrets/history` | read | the versions |
//! | `POST /v1/tokens`, `GET /v1/tokens`, `DELETE /v1/tokens/{id}` | admin | API tokens |
//! | `POST /v1/apps/{app}/machines` | deploy | create and boot a machine on a host |
//! | `GET /v1/apps/{app}/machines[/{id}]` | read | machines (not destroyed ones) |
//! | `POST /v1/apps/{app}/machines/{id}/stop`, `…/start` | deploy | desired state |
//! | `DELETE /v1/apps/{app}/machines/{id}` | deploy | destroy: ends the host's access |
//! | `GET /v1/apps/{app}/machines/{id}/logs?follow=` | read | the workload's output, from its host |
//! | `POST /v1/hosts` | admin | a host agent registers |
//! | `POST /v1/hosts/{id}/heartbeat`, `GET …/assignments`, `POST …/machines/{mid}/state`, `POST …/machines/{mid}/boot` | host token | the agent protocol (see [`hosts`]) |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics` | none | liveness, readiness, metrics |

pub mod apps;
pub mod auth;
pub mod hosts;
pub mod keys;
pub mod machines;
pub mod releases;
pub mod secrets;
pub mod timefmt;
pub mod tokens;

use axum::routing::{delete, get, post};
use axum::Router;
use coffer_crypto::machine_token::ControlPlaneKey;
use coffer_http::{ApiError, ApiResult, Metrics};
use coffer_store::Store;
use std::sync::Arc;

pub use keys::{KeyCache, VaultClient};

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub keys: Arc<KeyCache>,
    /// API token records read recently (see [`auth::TOKEN_CACHE_TTL`]).
    pub tokens: Arc<auth::TokenCache>,
    /// Signs machine tokens and log grants; the vault and agents hold its public key.
    pub signing_key: Arc<ControlPlaneKey>,
    /// Bumped when a host's assignments change, to wake long-polling agents at once.
    pub host_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped when a host reports a machine state, to wake watchers (releases).
    pub machine_events: Arc<tokio::sync::watch::Sender<u64>>,
    /// For proxying logs from agents.
    pub agent_http: reqwest::Client,
    /// Writes to one app's secrets take turns in this process (see [`secrets::WriteTurns`]).
    pub write_turns: Arc<secrets::WriteTurns>,
    /// Rendered `secrets list` answers (see [`secrets::ListCache`]).
    pub list_cache: Arc<secrets::ListCache>,
    /// The fencing tokens of the releases this process orchestrates (see [`releases`]).
    pub release_owners: Arc<releases::Owners>,
}

impl ApiState {
    pub fn new(store: Store, vault: VaultClient, signing_key: ControlPlaneKey) -> Self {
        Self {
            store,
            keys: Arc::new(KeyCache::new(vault)),
            tokens: Arc::default(),
            signing_key: Arc::new(signing_key),
            host_changes: Arc::new(tokio::sync::watch::channel(0).0),
            machine_events: Arc::new(tokio::sync::watch::channel(0).0),
            // Never follows a redirect: the agent's address is set by the host, and the logs
            // proxy must not be turned into a fetch of another URL.
            agent_http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client builds"),
            write_turns: Arc::default(),
            list_cache: Arc::default(),
            release_owners: Arc::new(releases::Owners::new()),
        }
    }

    pub fn notify_hosts(&self) {
        self.host_changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub fn notify_machine_event(&self) {
        self.machine_events.send_modify(|g| *g = g.wrapping_add(1));
    }
}

pub fn router(state: ApiState, metrics: Metrics) -> Router {
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/apps", post(apps::create).get(apps::list))
        .route(
            "/v1/apps/{app}",
            get(apps::get).delete(apps::destroy).patch(apps::update),
        )
        .route("/v1/apps/{app}/releases", get(apps::releases))
        .route("/v1/apps/{app}/releases/{version}", get(apps::release))
        .route(
            "/v1/apps/{app}/secrets",
            get(secrets::list).post(secrets::write),
        )
        .route("/v1/apps/{app}/secrets/deploy", post(secrets::deploy))
        .route("/v1/apps/{app}/secrets/history", get(secrets::history))
        .route("/v1/tokens", post(tokens::create).get(tokens::list))
        .route("/v1/tokens/{id}", delete(tokens::revoke))
        .route(
            "/v1/apps/{app}/machines",
            post(machines::run).get(machines::list),
        )
        .route(
            "/v1/apps/{app}/machines/{id}",
            get(machines::get).delete(machines::destroy),
        )
        .route("/v1/apps/{app}/machines/{id}/stop", post(machines::stop))
        .route("/v1/apps/{app}/machines/{id}/start", post(machines::start))
        .route("/v1/apps/{app}/machines/{id}/logs", get(machines::logs))
        .route("/v1/hosts", post(hosts::register))
        .route("/v1/hosts/{id}/heartbeat", post(hosts::heartbeat))
        .route("/v1/hosts/{id}/assignments", get(hosts::assignments))
        .route(
            "/v1/hosts/{id}/machines/{mid}/state",
            post(hosts::report_state),
        )
        .route("/v1/hosts/{id}/machines/{mid}/boot", post(hosts::boot))
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
