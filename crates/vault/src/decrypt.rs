//! `POST /v1/decrypt`: the only way a value leaves the vault, and only sealed to the one-time
//! key of the host that runs a live machine of the app.
//!
//! Checks, in order, each refusal final and nothing decrypted before all pass:
//! 1. the machine token's signature (control-plane public key), kind and expiry;
//! 2. that the request names the token's machine and is fresh (±60 s);
//! 3. the host's signature over the whole request, with the host key named in the token —
//!    a token copied to another host is useless there;
//! 4. the store: the machine exists, belongs to the token's app and host, is not destroyed,
//!    and the host still has that key (a destroyed machine's token is refused from the moment
//!    the destroy is committed, across restarts of every daemon);
//! 5. every presented ciphertext is a member of the machine's secrets version;
//! 6. each ciphertext opens with the app's key in the context it is presented for.

use crate::routes::VaultState;
use crate::Presented;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use coffer_core::wire::agent::{DecryptRequest, DecryptResponse};
use coffer_crypto::machine_token::{
    b64, decrypt_request_message, unb64, verify_host_signature, verify_machine_token, TokenError,
};
use coffer_crypto::PublicKey;
use coffer_http::{ApiError, ApiResult};
use coffer_store::StoreError;
use std::time::SystemTime;

const MAX_SKEW_SECS: i64 = 60;

fn refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

pub async fn decrypt(
    State(s): State<VaultState>,
    body: Result<Json<DecryptRequest>, JsonRejection>,
) -> ApiResult<Json<DecryptResponse>> {
    let Json(req) = body?;
    let result = decrypt_checked(&s, &req).await;
    s.count_decrypt(match &result {
        Ok(_) => "ok",
        Err(e) if e.status == StatusCode::UNAUTHORIZED => "bad_token",
        Err(e) if e.status == StatusCode::FORBIDDEN => "refused",
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => "integrity",
        Err(_) => "error",
    });
    result
}

async fn decrypt_checked(s: &VaultState, req: &DecryptRequest) -> ApiResult<Json<DecryptResponse>> {
    let vault = s.vault()?;
    let key = s.control_plane_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this vault does not accept machine tokens",
        )
        .with_hint("start the vault with --control-plane-public-key")
    })?;
    let now = SystemTime::now();
    let claims = verify_machine_token(key, &req.machine_token, now).map_err(|e| {
        let msg = match e {
            TokenError::Expired => "the machine token has expired",
            _ => "the machine token is invalid",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
    })?;
    if claims.machine_id != req.machine_id {
        return Err(refused("the machine token is for another machine"));
    }
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (req.issued_at - now_secs).abs() > MAX_SKEW_SECS {
        return Err(refused(
            "the request is stale or from the future; check the host's clock",
        ));
    }
    let listed: Vec<(&str, i64, &str)> = req
        .ciphertexts
        .iter()
        .map(|c| (c.name.as_str(), c.version, c.ciphertext.as_str()))
        .collect();
    let message = decrypt_request_message(
        &req.machine_token,
        &req.machine_id,
        &req.one_time_public_key,
        req.issued_at,
        &listed,
    );
    verify_host_signature(&claims.host_key, &message, &req.host_signature)
        .map_err(|_| refused("the request is not signed by the token's host"))?;

    // The machine, its host's current key and its version's members, in one read.
    let facts = match vault.store().boot_facts(&claims.machine_id).await {
        Ok(f) => f,
        Err(StoreError::NotFound(_)) => return Err(refused("the machine does not exist")),
        Err(e) => return Err(e.into()),
    };
    let machine = &facts.machine;
    if machine.destroyed_at.is_some() {
        return Err(refused("the machine is destroyed"));
    }
    if machine.app_id != claims.app_id || machine.host_id != claims.host_id {
        return Err(refused("the machine token does not match the machine"));
    }
    let Some(app_public_key) = &facts.app_public_key else {
        vault.forget_app_keys(&machine.app_id);
        return Err(refused("the app's keys have been destroyed"));
    };
    if facts.host_public_key != claims.host_key {
        return Err(refused(
            "the host's key has changed since the token was issued",
        ));
    }

    let mut presented = Vec::with_capacity(req.ciphertexts.len());
    for c in &req.ciphertexts {
        if facts.members.get(&c.name) != Some(&c.version) {
            return Err(refused(
                "a ciphertext is not part of the machine's secrets version",
            ));
        }
        let ciphertext = unb64(&c.ciphertext)
            .ok_or_else(|| ApiError::bad_request("a ciphertext is not valid base64"))?;
        presented.push(Presented {
            name: c.name.clone(),
            version: c.version,
            ciphertext,
        });
    }
    let pk_bytes = hex::decode(&req.one_time_public_key)
        .map_err(|_| ApiError::bad_request("one_time_public_key must be hex"))?;
    let recipient = PublicKey::from_bytes(&pk_bytes)
        .map_err(|_| ApiError::bad_request("one_time_public_key is not an X25519 key"))?;
    let version = machine.secrets_version.to_string();
    let context: [&[u8]; 3] = [
        machine.app_id.as_bytes(),
        machine.id.as_bytes(),
        version.as_bytes(),
    ];
    let bundle = vault
        .decrypt_to_recipient(
            &machine.app_id,
            app_public_key,
            &presented,
            &recipient,
            &context,
        )
        .await?;
    tracing::info!(machine = %machine.id, secrets_version = machine.secrets_version, values = presented.len(), "decrypted for a machine boot");
    Ok(Json(DecryptResponse {
        bundle: b64(&bundle),
    }))
}
