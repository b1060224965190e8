//! Who is calling. Every handler takes a [`Caller`] and states the action it needs with
//! [`Caller::require`], so the authorization of a route is visible in its first lines.

use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use coffer_core::{Action, AppName, Scope};
use coffer_crypto::token::{ct_eq, parse_token};
use coffer_http::ApiError;
use coffer_store::{now_micros, StoreError};

#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub scope: Scope,
    /// Shown in history as "who": the token's description, else its id.
    pub actor: String,
}

impl Caller {
    /// Refuses with 403 unless the token's scope covers `action` on `app`. An out-of-scope app
    /// gets the same answer whether it exists or not.
    pub fn require(&self, action: Action, app: Option<&AppName>) -> Result<(), ApiError> {
        if self.scope.allows(action, app) {
            return Ok(());
        }
        let what = match app {
            Some(a) => format!("{} on app {a}", action.as_str()),
            None => format!("{} across apps", action.as_str()),
        };
        Err(ApiError::forbidden(format!("this token may not {what}")).with_hint(
            "use a token whose scope covers this app and action (coffer tokens create --app APP --scope deploy)",
        ))
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let presented = coffer_http::bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let (id, hash) = parse_token(presented).ok_or_else(ApiError::unauthorized)?;
        let rec = match state.store.token(&id).await {
            Ok(r) => r,
            Err(StoreError::NotFound(_)) => return Err(ApiError::unauthorized()),
            Err(e) => return Err(e.into()),
        };
        if !ct_eq(&hash, &rec.secret_hash)
            || rec.revoked_at.is_some()
            || rec.expires_at <= now_micros()
        {
            return Err(ApiError::unauthorized());
        }
        let actor = if rec.description.is_empty() {
            format!("token {}", rec.id)
        } else {
            rec.description.clone()
        };
        Ok(Caller {
            token_id: rec.id,
            scope: Scope {
                app: rec.app_name,
                action: rec.action,
            },
            actor,
        })
    }
}

/// A host agent, authenticated by its host token. Handlers still check that the host in the
/// path is this one ([`HostCaller::require_host`]).
#[derive(Debug, Clone)]
pub struct HostCaller {
    pub host: coffer_store::HostRecord,
}

impl HostCaller {
    pub fn require_host(&self, host_id: &str) -> Result<(), ApiError> {
        if self.host.id == host_id {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "this host token belongs to another host",
            ))
        }
    }
}

impl FromRequestParts<ApiState> for HostCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let presented = coffer_http::bearer(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let (id, hash) = parse_token(presented).ok_or_else(ApiError::unauthorized)?;
        let host = match state.store.host(&id).await {
            Ok(h) => h,
            Err(StoreError::NotFound(_)) => return Err(ApiError::unauthorized()),
            Err(e) => return Err(e.into()),
        };
        if !ct_eq(&hash, &host.token_hash) {
            return Err(ApiError::unauthorized());
        }
        Ok(HostCaller { host })
    }
}
