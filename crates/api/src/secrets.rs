//! Secrets: the encrypt-only write path, listing and history.

use crate::apps::{authorized_app, parse_app};
use crate::auth::Caller;
use crate::timefmt::rfc3339;
use crate::ApiState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse as _;
use axum::Json;
use base64::Engine as _;
use coffer_core::wire::{
    ChangeKind, DeployResult, NameChange, SecretInfo, SecretList, SecretPair, SecretStatus,
    VersionInfo, VersionOutcome, VersionRelease, WriteResult, WriteSecrets,
};
use coffer_core::{Action, ChangeSet, SecretName, SecretValue};
use coffer_crypto::{digest_hex, seal_values};
use coffer_http::{ApiError, ApiResult};
use coffer_store::{NewRelease, NewValue, NewVersion, StoreError};
use std::collections::HashMap;

/// How often a write is recomputed when another write to the same app won the race (with
/// [`WriteTurns`], only a write through another API process can win it).
const WRITE_ATTEMPTS: usize = 5;

/// How many locks the apps' writes are spread over: two apps share one with a chance of
/// 1/1024, and then only wait for each other's write, never fail.
const WRITE_TURN_STRIPES: usize = 1024;

/// Writes to one app's secrets take turns within this API process.
///
/// A write reads the app's current version, seals its values for the next one (the version is
/// part of each value's associated data) and stores them only if the app is still at the
/// version it read. Without turns, parallel writes to one app (CI jobs, a script) each read the
/// same version, one wins and the rest start over: with two dozen writers some lost five times
/// in a row and were refused with a conflict they never asked for. With turns they queue
/// instead; only writes through another replica can still race, which the retries cover.
/// Striped by app name with per-process random keys, so that nobody can choose app names to
/// share another app's turn; memory is fixed.
pub struct WriteTurns {
    hasher: std::collections::hash_map::RandomState,
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

impl Default for WriteTurns {
    fn default() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            stripes: (0..WRITE_TURN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }
}

impl WriteTurns {
    /// Waits for `app`'s turn (first come, first served: tokio's mutex is fair).
    pub async fn take(&self, app: &coffer_core::AppName) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let stripe = self.hasher.hash_one(app.as_str()) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

fn decode_pairs(pairs: Vec<SecretPair>) -> ApiResult<Vec<(String, SecretValue)>> {
    pairs
        .into_iter()
        .map(|mut p| {
            let value = match (p.value.take(), p.value_base64.take()) {
                (Some(v), None) => SecretValue::new(v.into_bytes()),
                (None, Some(b)) => SecretValue::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(zeroize::Zeroizing::new(b).as_bytes())
                        .map_err(|_| {
                            ApiError::invalid(format!(
                                "value_base64 of {} is not valid base64",
                                clip(&p.name)
                            ))
                        })?,
                ),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{} needs exactly one of value or value_base64",
                        clip(&p.name)
                    )))
                }
            };
            Ok((std::mem::take(&mut p.name), value))
        })
        .collect()
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

pub async fn write(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    body: Result<Json<WriteSecrets>, JsonRejection>,
) -> ApiResult<Json<WriteResult>> {
    let name = parse_app(&app)?;
    caller.require(Action::Deploy, Some(&name))?;
    let Json(mut body) = body?;
    let stage = body.stage;
    let unsets = std::mem::take(&mut body.unset);
    let sets = decode_pairs(std::mem::take(&mut body.set))?;
    let change = ChangeSet::new(sets, unsets).map_err(|e| ApiError::invalid(e.to_string()))?;
    // The write and the start of its release run in a task of their own: a client that hangs
    // up must not leave a committed release that nothing orchestrates.
    detached(write_and_release(s, caller, name, change, stage)).await
}

/// Runs `work` to its end even if the request that asked for it is dropped.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = ApiResult<T>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(work).await.map_err(ApiError::internal)?
}

async fn write_and_release(
    s: ApiState,
    caller: Caller,
    name: coffer_core::AppName,
    change: ChangeSet,
    stage: bool,
) -> ApiResult<Json<WriteResult>> {
    let turn = s.write_turns.take(&name).await;
    for attempt in 1..=WRITE_ATTEMPTS {
        // The app and its current secrets in one read; a write that lost a race reads them
        // again.
        let read = s.store.base_read(&name).await?;
        let (app, current) = (read.app().clone(), read.listing());
        let keys = s.keys.get(&app.id).await?;
        let base = app.secrets_version;
        let sizes: Vec<(SecretName, usize)> = current
            .iter()
            .map(|c| (c.name.clone(), c.value_len as usize))
            .collect();
        change
            .check_against(&sizes)
            .map_err(|e| ApiError::invalid(e.to_string()))?;

        // The version is part of each ciphertext's associated data, so values are sealed
        // for exactly the version they will be stored at, and resealed on a retry.
        let version = base + 1;
        let pairs: Vec<(&str, &SecretValue)> =
            change.sets().iter().map(|(n, v)| (n.as_str(), v)).collect();
        let sealed =
            seal_values(&keys.public_key, &app.id, version, &pairs).map_err(ApiError::internal)?;
        let new_values = change
            .sets()
            .iter()
            .zip(sealed)
            .map(|((name, value), ct)| NewValue {
                name: name.clone(),
                ciphertext: ct.0,
                digest: digest_hex(&keys.digest_key, value),
                value_len: value.len() as i64,
            })
            .collect();
        let new = NewVersion {
            app_id: app.id.clone(),
            base_version: base,
            // What the change was computed against.
            base: Some(read),
            version,
            actor: caller.actor.clone(),
            sets: new_values,
            unsets: change.unsets().to_vec(),
            deploy: !stage,
            // A deploying write starts its release in the same transaction, or is refused
            // whole if one is running.
            release: (!stage).then(|| NewRelease {
                description: change.describe(),
                actor: caller.actor.clone(),
                owner: s.release_owners.next(),
            }),
        };
        match s.store.write_version(new).await {
            Ok(outcome) => {
                // The next write of this app may read it now; the release below runs on.
                drop(turn);
                let version = outcome.version;
                tracing::info!(app = %app.name, version, staged = stage, "secrets version written");
                let release = outcome.release.as_ref().map(|r| r.version);
                if let Some(rel) = outcome.release {
                    // Never an error from here on: the write is committed and its release exists;
                    // what could not be done now, the release's background task retries.
                    crate::releases::start(&s, rel).await;
                }
                return Ok(Json(WriteResult {
                    version,
                    deployed: !stage,
                    description: change.describe(),
                    release,
                }));
            }
            // Retrying cannot help while another release runs: say so at once.
            Err(StoreError::Conflict(msg)) if msg.contains("release is already running") => {
                return Err(ApiError::conflict(msg));
            }
            Err(StoreError::Conflict(_)) if attempt < WRITE_ATTEMPTS => {}
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// `secrets list`: from [`ListCache`] when the app's versions are those of the kept answer,
/// else read and rendered, and kept.
pub async fn list(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<axum::response::Response> {
    let name = parse_app(&app)?;
    caller.require(Action::Read, Some(&name))?;
    let app = s.store.app_by_name(&name).await?;
    let key = (app.secrets_version, app.deployed_version);
    let body = match s.list_cache.get(&app.id, key) {
        Some(body) => body,
        None => {
            let rendered = render_list(&s, &name).await?;
            s.list_cache
                .keep(&rendered.0, rendered.1, rendered.2.clone());
            rendered.2
        }
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// The app's listing as `secrets list` answers it: (app id, its versions, the JSON).
async fn render_list(
    s: &ApiState,
    name: &coffer_core::AppName,
) -> ApiResult<(String, (i64, i64), bytes::Bytes)> {
    let (app, current) = s.store.app_with_listing(name).await?;
    let secrets = current
        .iter()
        .map(|c| SecretInfo {
            name: c.name.to_string(),
            digest: c.digest.clone(),
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
            status: if c.deployed {
                SecretStatus::Deployed
            } else {
                SecretStatus::Staged
            },
        })
        .collect();
    let list = SecretList {
        version: app.secrets_version,
        deployed_version: app.deployed_version,
        secrets,
    };
    let json = serde_json::to_vec(&list).map_err(ApiError::internal)?;
    Ok((
        app.id,
        (app.secrets_version, app.deployed_version),
        bytes::Bytes::from(json),
    ))
}

/// Rendered `secrets list` answers, by app id, with the (secrets, deployed) versions they
/// were rendered at. A version's listing never changes once written, so an answer is valid
/// for as long as the app is at those two versions — which each list reads from the store
/// (one row) before it answers from here: a write, a deploy or a rollback through any API
/// replica shows at once. App ids are never reused. Bounded: when the answers kept pass
/// [`LIST_CACHE_MAX_BYTES`] it starts over (as the key cache does).
#[derive(Default)]
pub struct ListCache {
    inner: std::sync::Mutex<ListCacheInner>,
}

#[derive(Default)]
struct ListCacheInner {
    answers: HashMap<String, ((i64, i64), bytes::Bytes)>,
    bytes: usize,
}

/// Rendered answers kept at most, in bytes (about 1 KiB per app of 10 secrets).
pub const LIST_CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;

impl ListCache {
    fn get(&self, app_id: &str, versions: (i64, i64)) -> Option<bytes::Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.answers.get(app_id) {
            Some((at, body)) if *at == versions => Some(body.clone()),
            _ => None,
        }
    }

    fn keep(&self, app_id: &str, versions: (i64, i64), body: bytes::Bytes) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.bytes + body.len() > LIST_CACHE_MAX_BYTES {
            inner.answers.clear();
            inner.bytes = 0;
        }
        inner.bytes += body.len();
        if let Some((_, old)) = inner.answers.insert(app_id.to_string(), (versions, body)) {
            inner.bytes -= old.len();
        }
    }
}

pub async fn deploy(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
) -> ApiResult<Json<DeployResult>> {
    let app = authorized_app(&s, &caller, Action::Deploy, &app).await?;
    if app.deployed_version == app.secrets_version {
        return Ok(Json(DeployResult {
            version: app.secrets_version,
            changed: false,
            release: None,
        }));
    }
    // As for writes: the deploy and the start of its release are not split by a hang-up.
    detached(async move {
        let release = s
            .store
            .deploy_staged(
                &app.id,
                &NewRelease {
                    description: format!("Deploy secrets version {}", app.secrets_version),
                    actor: caller.actor.clone(),
                    owner: s.release_owners.next(),
                },
            )
            .await?;
        tracing::info!(app = %app.name, version = release.secrets_version, release = release.version, "staged secrets deployed");
        let out = DeployResult {
            version: release.secrets_version,
            changed: true,
            release: Some(release.version),
        };
        // As for writes: committed, so never an error from here on.
        crate::releases::start(&s, release).await;
        Ok(Json(out))
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    name: Option<String>,
}

pub async fn history(
    caller: Caller,
    State(s): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Vec<VersionInfo>>> {
    let app = authorized_app(&s, &caller, Action::Read, &app).await?;
    if let Some(n) = &q.name {
        SecretName::parse(n).map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let versions = s.store.versions(&app.id).await?;
    // Each version's release: the newest one that rolled it out (releases come newest first).
    let mut releases: HashMap<i64, VersionRelease> = HashMap::new();
    for r in s.store.releases(&app.id).await? {
        releases
            .entry(r.secrets_version)
            .or_insert_with(|| VersionRelease {
                version: r.version,
                status: r.status.as_str().to_string(),
            });
    }
    let out = versions
        .into_iter()
        .filter(|v| {
            q.name
                .as_ref()
                .is_none_or(|n| v.changes.iter().any(|c| &c.name == n))
        })
        .map(|v| VersionInfo {
            version: v.version,
            changes: v
                .changes
                .into_iter()
                .map(|c| NameChange {
                    name: c.name,
                    kind: match c.kind {
                        coffer_store::ChangeKind::Set => ChangeKind::Set,
                        coffer_store::ChangeKind::Unset => ChangeKind::Unset,
                    },
                    digest: c.digest,
                })
                .collect(),
            actor: v.actor,
            created_at: rfc3339(v.created_at),
            outcome: match v.version.cmp(&app.deployed_version) {
                std::cmp::Ordering::Equal => VersionOutcome::Deployed,
                std::cmp::Ordering::Greater => VersionOutcome::Staged,
                std::cmp::Ordering::Less => VersionOutcome::Superseded,
            },
            release: releases.remove(&v.version),
        })
        .collect();
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_list_answers_only_at_its_versions() {
        let cache = ListCache::default();
        let body = bytes::Bytes::from_static(b"{\"version\":2}");
        assert!(cache.get("app", (2, 1)).is_none());
        cache.keep("app", (2, 1), body.clone());
        assert_eq!(cache.get("app", (2, 1)), Some(body));
        // A write (secrets version) or a deploy or rollback (deployed version) moves on.
        assert!(cache.get("app", (3, 1)).is_none());
        assert!(cache.get("app", (2, 2)).is_none());
        assert!(cache.get("other", (2, 1)).is_none());
        // The newer answer replaces the older one, and the count of bytes follows.
        cache.keep("app", (3, 1), bytes::Bytes::from_static(b"{\"version\":3}"));
        assert!(cache.get("app", (2, 1)).is_none());
        assert_eq!(cache.inner.lock().unwrap().bytes, 13);
    }

    #[test]
    fn the_kept_lists_are_bounded() {
        let cache = ListCache::default();
        let big = bytes::Bytes::from(vec![b' '; LIST_CACHE_MAX_BYTES / 4 + 1]);
        for i in 0..4 {
            cache.keep(&format!("app-{i}"), (1, 1), big.clone());
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.bytes <= LIST_CACHE_MAX_BYTES, "{}", inner.bytes);
        assert_eq!(inner.answers.len(), 1, "started over when full");
    }
}
