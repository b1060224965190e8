//! Transit unseal: the vault's root key kept encrypted by a key of an external OpenBao or
//! HashiCorp Vault transit engine, as their own "auto-unseal" does.
//!
//! `cofferd vault operator init --transit-url … --transit-key …` makes a new store's root key,
//! has the transit engine encrypt it, and records the ciphertext (with the engine's address,
//! mount and key name, none of them secret) in the store. At every start the vault sends the
//! ciphertext back to be decrypted and opens with the key it gets; the key is never written
//! anywhere in the clear. Revoking coffer's token or disabling the key at the transit engine
//! keeps every vault from starting again.

use coffer_core::SecretBytes;
use coffer_crypto::RootKey;
use coffer_store::Store;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use zeroize::Zeroizing;

/// Where a store records its transit-sealed root key.
pub(crate) const TRANSIT_KEY: &str = "vault.transit";

/// The transit engine holding a store's root key, and the key's ciphertext there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitSeal {
    /// The engine's base URL (`http(s)://host:port`).
    pub url: String,
    /// The transit engine's mount path (`transit`).
    pub mount: String,
    /// The transit key's name.
    pub key: String,
    /// `vault:v1:…`: the root key, encrypted by the transit key.
    pub ciphertext: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    #[error("cannot reach the transit engine at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the transit engine at {url} refused ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the transit engine's answer is not what was asked for")]
    Malformed,
    #[error("mount and key names are letters, digits, '-', '_' and '/' inside the mount")]
    BadName,
    #[error(transparent)]
    Store(#[from] coffer_store::StoreError),
}

/// A client of one transit engine, with coffer's token for it.
pub struct Transit {
    http: reqwest::Client,
    url: String,
    token: Zeroizing<String>,
}

#[derive(Deserialize)]
struct Answer<T> {
    data: T,
}

#[derive(Deserialize)]
struct Encrypted {
    ciphertext: String,
}

#[derive(Deserialize)]
struct Decrypted {
    /// Wiped once decoded (see `open_root`).
    plaintext: String,
}

impl Transit {
    pub fn new(url: &str, token: Zeroizing<String>) -> Result<Self, TransitError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| TransitError::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, TransitError> {
        let resp = self
            .http
            .post(format!("{}/v1/{path}", self.url))
            .header("X-Vault-Token", self.token.as_str())
            .json(&body)
            .send()
            .await
            .map_err(|e| TransitError::Unreachable {
                url: self.url.clone(),
                reason: e.without_url().to_string(),
            })?;
        let status = resp.status();
        if !status.is_success() {
            // The engine's errors name what failed ("permission denied", "encryption key not
            // found"); they never hold the plaintext, which this side sent only to encrypt.
            let message = resp
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["errors"].as_array().cloned())
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Err(TransitError::Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                message: message
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect(),
            });
        }
        resp.json::<Answer<T>>()
            .await
            .map(|a| a.data)
            .map_err(|_| TransitError::Malformed)
    }

    /// Makes a new root key and has the engine encrypt it under `mount`/`key`.
    pub async fn seal_new_root(
        &self,
        mount: &str,
        key: &str,
    ) -> Result<(RootKey, TransitSeal), TransitError> {
        check_name(mount)?;
        check_name(key)?;
        let root = RootKey::generate();
        let plaintext = Zeroizing::new(b64(root.expose()));
        let body = serde_json::json!({ "plaintext": plaintext.as_str() });
        let out: Encrypted = self.call(&format!("{mount}/encrypt/{key}"), body).await?;
        Ok((
            root,
            TransitSeal {
                url: self.url.clone(),
                mount: mount.to_string(),
                key: key.to_string(),
                ciphertext: out.ciphertext,
            },
        ))
    }

    /// Has the engine decrypt the recorded root key.
    pub async fn open_root(&self, seal: &TransitSeal) -> Result<RootKey, TransitError> {
        check_name(&seal.mount)?;
        check_name(&seal.key)?;
        let body = serde_json::json!({ "ciphertext": seal.ciphertext });
        let out: Decrypted = self
            .call(&format!("{}/decrypt/{}", seal.mount, seal.key), body)
            .await?;
        let plaintext = Zeroizing::new(out.plaintext);
        use base64::Engine as _;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(plaintext.as_bytes())
                .map_err(|_| TransitError::Malformed)?,
        );
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| TransitError::Malformed)?;
        Ok(RootKey::from_secret_bytes(SecretBytes::new(key)))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Mount and key names go into the request's path.
fn check_name(name: &str) -> Result<(), TransitError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && !name.split('/').any(|p| p == "." || p == "..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b));
    ok.then_some(()).ok_or(TransitError::BadName)
}

/// The store's transit seal, if its root key is kept that way.
pub async fn recorded(store: &Store) -> Result<Option<TransitSeal>, TransitError> {
    match store.meta_get(TRANSIT_KEY).await? {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|_| TransitError::Malformed),
    }
}

/// `cofferd vault operator init --transit-…`: makes a new store's root key, has `transit`
/// encrypt it under `mount`/`key`, and records the ciphertext and the key's fingerprint.
/// Refused if the store has a root key already.
pub async fn init_transit(
    store: &Store,
    transit: &Transit,
    mount: &str,
    key: &str,
) -> Result<TransitSeal, crate::seal::InitError> {
    use crate::seal::{record_new_root, refuse_if_initialised, InitError};
    refuse_if_initialised(store).await?;
    let (root, seal) = transit
        .seal_new_root(mount, key)
        .await
        .map_err(InitError::Transit)?;
    let json = serde_json::to_string(&seal).expect("a seal serializes");
    record_new_root(store, &root, &[(TRANSIT_KEY, json)]).await?;
    Ok(seal)
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_cannot_leave_the_transit_path() {
        for ok in ["transit", "coffer-root", "team/transit", "k_1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/transit", "transit/", "a//b", "..", "a/../b", "a?b", "a b", "a#", "%2e",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
