//! App lifecycle.

use crate::auth::Caller;
use crate::timefmt::rfc3339;
use crate::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_core::wire::{App, CreateApp};
use coffer_core::{Action, AppName};
use coffer_http::{ApiError, ApiResult};
use coffer_store::AppRecord;

pub fn to_wire(a: &AppRecord) -> App {
    App {
        name: a.name.to_string(),
        created_at: rfc3339(a.created_at),
        secrets_version: a.secrets_version,
        deployed_version: a.deployed_version,
    }
}

pub fn parse_app(name: &str) -> ApiResult<AppName> {
    AppName::parse(name).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Resolves the app named in the path after checking the caller may act on it, so that an
/// out-of-scope caller learns nothing about whether the app exists.
pub async fn authorized_app(
    s: &ApiState,
    caller: &Caller,
    action: Action,
    name: &str,
) -> ApiResult<AppRecord> {
    let name = parse_app(name)?;
    caller.require(action, Some(&name))?;
    Ok(s.store.app_by_name(&name).await?)
}

pub async fn create(
    caller: Caller,
    State(s): State<ApiState>,
    body: Result<Json<CreateApp>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<App>)> {
    caller.require(Action::Admin, None)?;
    let Json(body) = body?;
    let name = parse_app(&body.name)?;
    let id = hex::encode(coffer_crypto::random_array::<16>());
    let app = s.store.create_app(&id, &name).await?;
    // Keys are made after the row exists, so a name conflict never mints keys. If the vault
    // is down the app is removed again: an app without keys would refuse every write.
    match s.keys.vault().create_keys(&id).await {
        Ok(keys) => s.keys.insert(&id, keys),
        Err(e) => {
            if let Err(cleanup) = s.store.delete_app(&id).await {
                tracing::error!(error = %cleanup, "could not remove app after vault failure");
            }
            return Err(e);
        }
    }
    tracing::info!(app = %name, "app created");
    Ok((StatusCode::CREATED, Json(to_wire(&app))))
}

pub async fn list(caller: Caller, State(s): State<ApiState>) -> ApiResult<Json<Vec<App>>> {
    let apps = s.store.list_apps().await?;
    Ok(Json(
        apps.iter()
            .filter(|a| caller.scope.allows(Action::Read, Some(&a.name)))
            .map(to_wire)
            .collect(),
    ))
}

pub async fn get(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<App>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    Ok(Json(to_wire(&app)))
}

pub async fn destroy(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    let app = authorized_app(&s, &caller, Action::Admin, &app).await?;
    // Keys first: once they are gone every ciphertext of the app is unreadable, even in
    // backups. If the vault is down nothing is deleted and the caller can retry.
    s.keys.vault().delete_keys(&app.id).await?;
    s.keys.evict(&app.id);
    s.store.delete_app(&app.id).await?;
    tracing::info!(app = %app.name, "app destroyed");
    Ok(StatusCode::NO_CONTENT)
}
