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
        crash_window_secs: (a.crash_window_ms / 1000) as u64,
        release_version: a.release_version,
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

/// A new app's id: 32 hex digits, the creation time in milliseconds (48 bits, big-endian) and
/// then 80 random bits, like a UUIDv7. Ids that grow with time put a new app's rows at the end
/// of every index keyed by app id (its row, versions, values, releases), where the app's
/// creation and first writes share the pages the apps created just before dirtied, instead of
/// dirtying a page at a random place in each index: the bulk load of 10,000 apps took about a
/// tenth less time (BENCHMARKS.md, *What was changed*). Ids only name apps inside coffer and
/// bind ciphertexts to their app; they were never secret, and the creation time is shown anyway.
fn new_app_id(now: std::time::SystemTime) -> String {
    let millis = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    id[6..].copy_from_slice(&coffer_crypto::random_array::<10>());
    hex::encode(id)
}

pub async fn create(
    caller: Caller,
    State(s): State<ApiState>,
    body: Result<Json<CreateApp>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<App>)> {
    caller.require(Action::Admin, None)?;
    let Json(body) = body?;
    let name = parse_app(&body.name)?;
    let id = new_app_id(std::time::SystemTime::now());
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
    // Any token that reads (an app's token sees its own app below); not a join token.
    caller.require(Action::Read, None)?;
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
    // The app's write turn, held to the end: a write of this process either finishes before
    // (with the keys as they were) or starts after and finds no app. Between the keys' delete
    // and the app's, a write would find no keys and make new ones for the dying app, which
    // would then outlive it and keep its last ciphertexts readable. (A write through another
    // API replica can still race; see ARCHITECTURE.md.)
    let _turn = s.write_turns.take(&app.name).await;
    // Keys first: once they are gone every ciphertext of the app is unreadable, even in
    // backups. If the vault is down nothing is deleted and the caller can retry.
    s.keys.vault().delete_keys(&app.id).await?;
    s.keys.evict(&app.id);
    s.store.delete_app(&app.id).await?;
    // The store bumped the generation of the hosts that ran the app's machines: wake their
    // long-polls, so that the workloads stop now.
    s.notify_hosts();
    s.tokens.clear();
    tracing::info!(app = %app.name, "app destroyed");
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/apps/{app}`: settings (today the crash window).
pub async fn update(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    body: Result<Json<coffer_core::wire::UpdateApp>, JsonRejection>,
) -> ApiResult<Json<App>> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    let Json(body) = body?;
    if let Some(secs) = body.crash_window_secs {
        if !(1..=3600).contains(&secs) {
            return Err(ApiError::invalid(
                "the crash window must be between 1s and 1h",
            ));
        }
        s.store
            .set_crash_window(&app.id, (secs * 1000) as i64)
            .await?;
    }
    Ok(Json(to_wire(&s.store.app_by_id(&app.id).await?)))
}

pub fn release_to_wire(r: &coffer_store::ReleaseRecord) -> coffer_core::wire::Release {
    coffer_core::wire::Release {
        version: r.version,
        secrets_version: r.secrets_version,
        status: r.status.as_str().to_string(),
        description: r.description.clone(),
        actor: r.actor.clone(),
        reason: r.reason.clone(),
        progress: r.progress.clone(),
        created_at: rfc3339(r.created_at),
        updated_at: rfc3339(r.updated_at),
    }
}

pub async fn releases(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<coffer_core::wire::Release>>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    Ok(Json(
        s.store
            .releases(&app.id)
            .await?
            .iter()
            .map(release_to_wire)
            .collect(),
    ))
}

pub async fn release(
    caller: Caller,
    State(s): State<ApiState>,
    Path((app, version)): Path<(String, i64)>,
) -> ApiResult<Json<coffer_core::wire::Release>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    Ok(Json(release_to_wire(
        &s.store.release(&app.id, version).await?,
    )))
}

#[cfg(test)]
mod tests {
    use super::new_app_id;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn app_ids_grow_with_time_and_differ_within_a_millisecond() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        let id = new_app_id(t);
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(&id[..12], format!("{:012x}", 1_795_000_000_123u64));
        let mut ids: Vec<String> = (0..64)
            .map(|i| new_app_id(t + Duration::from_millis(i)))
            .collect();
        let in_order = ids.clone();
        ids.sort();
        assert_eq!(ids, in_order, "ids sort by creation time");
        assert_ne!(new_app_id(t), new_app_id(t), "80 random bits each");
    }
}
