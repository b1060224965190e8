//! The API's side of key custody: it asks the vault for an app's sealing keys (public key +
//! digest key) over the service channel and caches them. A cache entry can never decrypt.

use coffer_core::wire::vault::SealingKeysBody;
use coffer_crypto::SealingKeys;
use coffer_http::ApiError;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

#[derive(Clone)]
pub struct VaultClient {
    http: reqwest::Client,
    base: String,
    service_token: Arc<coffer_core::secret::SecretToken>,
}

impl VaultClient {
    pub fn new(
        base_url: &str,
        service_token: coffer_core::secret::SecretToken,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            service_token: Arc::new(service_token),
        })
    }

    fn url(&self, app_id: &str) -> String {
        format!("{}/v1/apps/{app_id}/keys", self.base)
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<reqwest::Response>, ApiError> {
        let resp = req
            .bearer_auth(self.service_token.expose())
            .send()
            .await
            .map_err(|e| vault_unreachable(&e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(vault_unreachable(&format!(
                "vault answered {}",
                resp.status()
            )));
        }
        Ok(Some(resp))
    }

    async fn keys_from(resp: reqwest::Response) -> Result<SealingKeys, ApiError> {
        let body: SealingKeysBody = resp.json().await.map_err(|e| vault_unreachable(&e))?;
        SealingKeys::from_hex(&body.public_key, &body.digest_key).map_err(ApiError::internal)
    }

    pub async fn create_keys(&self, app_id: &str) -> Result<SealingKeys, ApiError> {
        let resp = self.call(self.http.post(self.url(app_id))).await?;
        Self::keys_from(resp.ok_or_else(|| vault_unreachable(&"vault has no key route"))?).await
    }

    pub async fn get_keys(&self, app_id: &str) -> Result<Option<SealingKeys>, ApiError> {
        match self.call(self.http.get(self.url(app_id))).await? {
            Some(resp) => Self::keys_from(resp).await.map(Some),
            None => Ok(None),
        }
    }

    pub async fn delete_keys(&self, app_id: &str) -> Result<(), ApiError> {
        self.call(self.http.delete(self.url(app_id)))
            .await
            .map(|_| ())
    }
}

fn vault_unreachable(detail: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable("the vault is unavailable; nothing was changed", detail)
        .with_hint("check that the vault is running and unsealed, then retry")
}

/// Sealing keys kept at most (about 200 bytes each with the map's own memory, so ~20 MiB):
/// enough for every app of a large installation, while a store of millions of apps does not
/// grow the API's memory with each app ever written to. A miss costs one call to the vault.
const KEY_CACHE_MAX: usize = 100_000;

/// Sealing keys by app id. Keys never change for an app id (ids are never reused), so entries
/// need no expiry; destroying an app evicts its entry. Bounded: when full it starts over, as
/// the vault's key caches do.
pub struct KeyCache {
    vault: VaultClient,
    map: RwLock<HashMap<String, Arc<SealingKeys>>>,
    max: usize,
}

impl KeyCache {
    pub fn new(vault: VaultClient) -> Self {
        Self::with_capacity(vault, KEY_CACHE_MAX)
    }

    fn with_capacity(vault: VaultClient, max: usize) -> Self {
        Self {
            vault,
            map: RwLock::new(HashMap::new()),
            max,
        }
    }

    pub fn vault(&self) -> &VaultClient {
        &self.vault
    }

    pub async fn get(&self, app_id: &str) -> Result<Arc<SealingKeys>, ApiError> {
        if let Some(k) = self.map.read().expect("key cache lock").get(app_id) {
            return Ok(k.clone());
        }
        // An app whose key creation was interrupted gets its keys now (creation is idempotent).
        let keys = match self.vault.get_keys(app_id).await? {
            Some(k) => k,
            None => self.vault.create_keys(app_id).await?,
        };
        let keys = Arc::new(keys);
        self.keep(app_id, keys.clone());
        Ok(keys)
    }

    pub fn insert(&self, app_id: &str, keys: SealingKeys) {
        self.keep(app_id, Arc::new(keys));
    }

    fn keep(&self, app_id: &str, keys: Arc<SealingKeys>) {
        let mut map = self.map.write().expect("key cache lock");
        if map.len() >= self.max && !map.contains_key(app_id) {
            map.clear();
        }
        map.insert(app_id.to_string(), keys);
    }

    pub fn evict(&self, app_id: &str) {
        self.map.write().expect("key cache lock").remove(app_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_core::secret::SecretToken;
    use coffer_crypto::PrivateKey;

    fn keys() -> SealingKeys {
        let (_, pk) = PrivateKey::generate();
        SealingKeys::from_hex(&hex::encode(pk.to_bytes()), &"ab".repeat(32)).unwrap()
    }

    /// A client of a vault that is not there: any call to it fails.
    fn absent_vault() -> VaultClient {
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        VaultClient::new("http://127.0.0.1:9", SecretToken::new("t".repeat(32))).unwrap()
    }

    fn len(cache: &KeyCache) -> usize {
        cache.map.read().unwrap().len()
    }

    #[tokio::test]
    async fn the_cache_serves_kept_keys_without_the_vault_and_stays_within_its_bound() {
        let cache = KeyCache::with_capacity(absent_vault(), 3);
        for id in ["a", "b", "c"] {
            cache.insert(id, keys());
        }
        assert_eq!(len(&cache), 3);
        // Kept keys are served from memory: the vault would answer with an error.
        cache.get("b").await.unwrap();
        // Replacing a kept entry does not start over.
        cache.insert("b", keys());
        assert_eq!(len(&cache), 3);
        // A fourth app: the cache starts over instead of growing.
        cache.insert("d", keys());
        assert_eq!(len(&cache), 1);
        cache.get("d").await.unwrap();
        let missed = cache.get("a").await;
        assert!(missed.is_err(), "a dropped entry is asked of the vault");
        for i in 0..10 {
            cache.insert(&format!("app-{i}"), keys());
            assert!(len(&cache) <= 3);
        }
    }
}
