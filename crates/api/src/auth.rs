//! Who is calling. Every handler takes a [`Caller`] and states the action it needs with
//! [`Caller::require`], so the authorization of a route is visible in its first lines.

use crate::ApiState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use coffer_core::{Action, AppName, Scope};
use coffer_crypto::token::{ct_eq, parse_token};
use coffer_http::ApiError;
use coffer_store::{now_micros, StoreError, TokenRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        let rec = match state.tokens.get(&id) {
            Some(r) => r,
            None => match state.tokens.read_through(state.store.token(&id)).await {
                Ok(r) => r,
                Err(StoreError::NotFound(_)) => return Err(ApiError::unauthorized()),
                Err(e) => return Err(e.into()),
            },
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
            token_id: rec.id.clone(),
            scope: Scope {
                app: rec.app_name.clone(),
                action: rec.action,
            },
            actor,
        })
    }
}

/// How long an API token's record, once read, is reused without reading the store again: the
/// token check is on every request, and its read was a large share of a cheap one. Revoking a
/// token or destroying an app through this process takes effect at once (the entries are
/// dropped); through another API replica sharing the database, within this time.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);

/// Entries at most; when full the cache starts over. Only records of existing tokens are kept,
/// so a caller sending made-up tokens cannot fill it.
const TOKEN_CACHE_MAX: usize = 4096;

/// Recently read API token records by token id. Each request still checks the presented
/// secret against the record's hash, the revocation and the expiry.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, (Instant, Arc<TokenRecord>)>,
    /// Bumped by every forget/clear: a record read from the store before one of them may be
    /// stale, and is then not cached (a revocation racing a first use must not be undone).
    generation: u64,
}

impl TokenCache {
    /// Reads a record with `read` and caches it, unless a revocation or an app's destruction
    /// happened while it was being read.
    async fn read_through(
        &self,
        read: impl std::future::Future<Output = Result<TokenRecord, StoreError>>,
    ) -> Result<Arc<TokenRecord>, StoreError> {
        let before = self.entries.lock().expect("token cache lock").generation;
        // The entry's age counts from before the read, so a slow read does not stretch the TTL.
        let read_at = Instant::now();
        let rec = Arc::new(read.await?);
        let mut entries = self.entries.lock().expect("token cache lock");
        if entries.generation == before {
            if entries.by_id.len() >= TOKEN_CACHE_MAX {
                entries.by_id.clear();
            }
            entries.by_id.insert(rec.id.clone(), (read_at, rec.clone()));
        }
        Ok(rec)
    }

    fn get(&self, id: &str) -> Option<Arc<TokenRecord>> {
        let entries = self.entries.lock().expect("token cache lock");
        let (read_at, rec) = entries.by_id.get(id)?;
        (read_at.elapsed() < TOKEN_CACHE_TTL).then(|| rec.clone())
    }

    /// After a revocation.
    pub fn forget(&self, id: &str) {
        let mut entries = self.entries.lock().expect("token cache lock");
        entries.by_id.remove(id);
        entries.generation += 1;
    }

    /// After an app is destroyed (its tokens go with it).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().expect("token cache lock");
        entries.by_id.clear();
        entries.generation += 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: vec![7; 32],
            app_id: None,
            app_name: None,
            action: Action::Read,
            description: String::new(),
            created_at: 0,
            expires_at: i64::MAX,
            revoked_at: None,
        }
    }

    fn read(
        rec: TokenRecord,
    ) -> impl std::future::Future<Output = Result<TokenRecord, StoreError>> {
        std::future::ready(Ok(rec))
    }

    #[tokio::test]
    async fn token_cache_keeps_forgets_and_stays_bounded() {
        let cache = TokenCache::default();
        assert!(cache.get("a").is_none());
        cache.read_through(read(record("a"))).await.unwrap();
        cache.read_through(read(record("b"))).await.unwrap();
        assert_eq!(cache.get("a").unwrap().id, "a");
        cache.forget("a");
        assert!(cache.get("a").is_none(), "a revoked token is read again");
        assert!(cache.get("b").is_some());
        cache.clear();
        assert!(cache.get("b").is_none());

        for i in 0..TOKEN_CACHE_MAX + 10 {
            cache
                .read_through(read(record(&format!("t{i}"))))
                .await
                .unwrap();
        }
        assert!(cache.entries.lock().unwrap().by_id.len() <= TOKEN_CACHE_MAX);

        // A store miss is not cached.
        let missing = cache
            .read_through(std::future::ready(Err(StoreError::NotFound("token"))))
            .await;
        assert!(missing.is_err());
        assert!(cache.get("nope").is_none());
    }

    #[tokio::test]
    async fn a_revocation_during_a_read_is_not_undone() {
        let cache = TokenCache::default();
        // The record is read (unrevoked) while the token is revoked: the stale record is used
        // for this one request's check but not kept.
        let racing = async {
            cache.forget("a");
            Ok(record("a"))
        };
        cache.read_through(racing).await.unwrap();
        assert!(cache.get("a").is_none());
        cache.read_through(read(record("a"))).await.unwrap();
        assert!(cache.get("a").is_some());
    }

    #[tokio::test]
    async fn token_cache_entries_expire() {
        let cache = TokenCache::default();
        cache.read_through(read(record("a"))).await.unwrap();
        let old = Instant::now().checked_sub(TOKEN_CACHE_TTL).unwrap();
        cache.entries.lock().unwrap().by_id.get_mut("a").unwrap().0 = old;
        assert!(
            cache.get("a").is_none(),
            "an entry older than the TTL is read again"
        );
    }
}
