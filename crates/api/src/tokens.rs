//! API tokens: scoped to (app, action), expiring, revocable. Only a global admin token manages
//! them.

use crate::auth::Caller;
use crate::timefmt::rfc3339;
use crate::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use coffer_core::wire::{CreateToken, CreatedToken, TokenInfo};
use coffer_core::Action;
use coffer_crypto::token::mint_token;
use coffer_http::{ApiError, ApiResult};
use coffer_store::{now_micros, NewToken, TokenRecord};

pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;
pub const MAX_TTL_SECS: u64 = 366 * 24 * 3600;

pub fn to_wire(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        app: t.app_name.as_ref().map(|a| a.to_string()),
        scope: t.action,
        description: t.description.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: rfc3339(t.expires_at),
        revoked: t.revoked_at.is_some(),
    }
}

pub async fn create(
    caller: Caller,
    State(s): State<ApiState>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    caller.require(Action::Admin, None)?;
    let Json(body) = body?;
    let ttl = body.expires_in_secs.unwrap_or(DEFAULT_TTL_SECS);
    if !(60..=MAX_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid(
            "expiry must be between 1 minute and 366 days",
        ));
    }
    // A token without --app reaches every app (read-only auditors, an organisation's deploy
    // bot); with --app it reaches that app only and dies with it.
    if body.scope == Action::Join && body.app.is_some() {
        return Err(ApiError::invalid(
            "a join token registers hosts, which belong to no app: create it without --app",
        ));
    }
    let app_id = match &body.app {
        Some(name) => Some(
            crate::apps::authorized_app(&s, &caller, Action::Admin, name)
                .await?
                .id,
        ),
        None => None,
    };
    let description = body.description.unwrap_or_default();
    if description.len() > 200 || description.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "description must be at most 200 printable characters",
        ));
    }
    let minted = mint_token();
    let rec = s
        .store
        .insert_token(NewToken {
            id: minted.id.clone(),
            secret_hash: minted.secret_hash.to_vec(),
            app_id,
            action: body.scope,
            description,
            expires_at: now_micros() + (ttl as i64) * 1_000_000,
        })
        .await?;
    tracing::info!(token_id = %rec.id, scope = rec.action.as_str(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: minted.token.expose().to_string(),
            info: to_wire(&rec),
        }),
    ))
}

pub async fn list(caller: Caller, State(s): State<ApiState>) -> ApiResult<Json<Vec<TokenInfo>>> {
    caller.require(Action::Admin, None)?;
    Ok(Json(
        s.store.list_tokens().await?.iter().map(to_wire).collect(),
    ))
}

pub async fn revoke(
    caller: Caller,
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require(Action::Admin, None)?;
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::not_found("token"));
    }
    s.store.revoke_token(&id).await?;
    s.tokens.forget(&id);
    tracing::info!(token_id = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}
