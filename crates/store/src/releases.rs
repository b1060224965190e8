//! Releases: each deploying change rolls a secrets version out to the app's machines, watched
//! for crashes, and is rolled back by itself if a machine crashes. The store keeps the record
//! and enforces one running release per app (a unique partial index), so the rule holds across
//! API replicas.

use crate::group_commit::Outcome;
use crate::store::BodyError;
use crate::{ChangeKind, ChangeRecord, Micros, Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    Running,
    Complete,
    /// A machine crashed, failed to boot or failed its health check in its crash window (or the
    /// control plane restarted mid-release); the updated machines were put
    /// back on the previous secrets.
    Failed,
    /// The release that records the automatic rollback after a failed one.
    RolledBack,
}

impl ReleaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Running => "running",
            ReleaseStatus::Complete => "complete",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => ReleaseStatus::Running,
            "complete" => ReleaseStatus::Complete,
            "failed" => ReleaseStatus::Failed,
            "rolled_back" => ReleaseStatus::RolledBack,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub description: String,
    pub actor: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    pub app_id: String,
    pub version: i64,
    pub secrets_version: i64,
    pub previous_secrets_version: i64,
    pub previous_release_version: i64,
    pub description: String,
    pub actor: String,
    pub status: ReleaseStatus,
    pub reason: Option<String>,
    pub progress: String,
    pub created_at: Micros,
    pub updated_at: Micros,
}

const RELEASE_COLUMNS: &str = "app_id, version, secrets_version, previous_secrets_version, \
     previous_release_version, description, actor, status, reason, progress, created_at, updated_at";

/// What the app's machines run now: (deployed secrets version, release version).
pub(crate) async fn deployed_in(tx: &mut AnyConnection, app_id: &str) -> Result<(i64, i64)> {
    let row = sqlx::query("SELECT deployed_version, release_version FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound("app"))?;
    Ok((
        row.try_get("deployed_version")?,
        row.try_get("release_version")?,
    ))
}

/// Inserts the next release of the app, `running`. `Conflict` if one is running already.
pub(crate) async fn insert_release_in(
    tx: &mut AnyConnection,
    app_id: &str,
    secrets_version: i64,
    (previous_secrets_version, previous_release_version): (i64, i64),
    r: &NewRelease,
    now: Micros,
) -> Result<ReleaseRecord> {
    insert_in(
        tx,
        app_id,
        secrets_version,
        (previous_secrets_version, previous_release_version),
        r,
        ReleaseStatus::Running,
        now,
    )
    .await
}

async fn insert_in(
    tx: &mut AnyConnection,
    app_id: &str,
    secrets_version: i64,
    (previous_secrets_version, previous_release_version): (i64, i64),
    r: &NewRelease,
    status: ReleaseStatus,
    now: Micros,
) -> Result<ReleaseRecord> {
    let version: i64 = sqlx::query_scalar(
        "UPDATE apps SET release_version = release_version + 1 WHERE id = $1 RETURNING release_version",
    )
    .bind(app_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(StoreError::NotFound("app"))?;
    let sql = format!(
        "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, '', $9, $10) \
         RETURNING {RELEASE_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(app_id)
        .bind(version)
        .bind(secrets_version)
        .bind(previous_secrets_version)
        .bind(previous_release_version)
        .bind(&r.description)
        .bind(&r.actor)
        .bind(status.as_str())
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match crate::store::kind(&e) {
            Some(sqlx::error::ErrorKind::UniqueViolation) => StoreError::Conflict(
                "a release is already running for this app; wait for it to finish (coffer releases list), or use --stage".into(),
            ),
            _ => e.into(),
        })?;
    release_from_row(&row)
}

impl Store {
    /// Deploys what was staged: the app's newest secrets version becomes deployed and a release
    /// starts for it. `Conflict` if nothing is staged or a release is running.
    pub async fn deploy_staged(&self, app_id: &str, r: &NewRelease) -> Result<ReleaseRecord> {
        let mut tx = self.begin_write().await?;
        let result = async {
            let before = deployed_in(&mut tx, app_id).await?;
            let current: i64 = sqlx::query_scalar("SELECT secrets_version FROM apps WHERE id = $1")
                .bind(app_id)
                .fetch_one(&mut *tx)
                .await?;
            if current == before.0 {
                return Err(StoreError::Conflict(format!(
                    "nothing is staged: secrets version {current} is already deployed"
                )));
            }
            sqlx::query("UPDATE apps SET deployed_version = $1 WHERE id = $2")
                .bind(current)
                .bind(app_id)
                .execute(&mut *tx)
                .await?;
            insert_release_in(&mut tx, app_id, current, before, r, crate::now_micros()).await
        }
        .await;
        match result {
            Ok(rec) => {
                tx.commit().await?;
                Ok(rec)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }

    pub async fn release(&self, app_id: &str, version: i64) -> Result<ReleaseRecord> {
        let sql =
            format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 AND version = $2");
        let row = sqlx::query(&sql)
            .bind(app_id)
            .bind(version)
            .fetch_optional(&self.read)
            .await?;
        release_from_row(&row.ok_or(StoreError::NotFound("release"))?)
    }

    /// The app's releases, newest first.
    pub async fn releases(&self, app_id: &str) -> Result<Vec<ReleaseRecord>> {
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE app_id = $1 ORDER BY version DESC"
        );
        let rows = sqlx::query(&sql).bind(app_id).fetch_all(&self.read).await?;
        rows.iter().map(release_from_row).collect()
    }

    /// Every release still `running`, of every app (for recovery after a restart).
    pub async fn running_releases(&self) -> Result<Vec<ReleaseRecord>> {
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE status = 'running' ORDER BY created_at"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(release_from_row).collect()
    }

    /// A human line about where a running release is ("watching web-1 (canary): 12s left").
    pub async fn set_release_progress(
        &self,
        app_id: &str,
        version: i64,
        progress: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE releases SET progress = $1, updated_at = $2 WHERE app_id = $3 AND version = $4 AND status = 'running'",
        )
        .bind(progress)
        .bind(crate::now_micros())
        .bind(app_id)
        .bind(version)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Marks a running release complete. `Conflict` if it is not running (someone else
    /// finished it).
    pub async fn complete_release(&self, app_id: &str, version: i64) -> Result<ReleaseRecord> {
        let app_id = std::sync::Arc::new(app_id.to_string());
        self.write_tx(Box::new(move |tx| {
            let app_id = app_id.clone();
            Box::pin(async move {
                let sql = format!(
                    "UPDATE releases SET status = 'complete', progress = '', updated_at = $1 \
                     WHERE app_id = $2 AND version = $3 AND status = 'running' \
                     RETURNING {RELEASE_COLUMNS}"
                );
                let row = sqlx::query(&sql)
                    .bind(crate::now_micros())
                    .bind(app_id.as_str())
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| BodyError::Failed(e.into()))?;
                let row = row.ok_or_else(|| {
                    BodyError::Refused(StoreError::Conflict("the release is not running".into()))
                })?;
                Ok(Box::new(release_from_row(&row).map_err(BodyError::Failed)?) as Outcome)
            })
        }))
        .await
    }

    /// Fails a running release and returns the app's secrets to what ran before it, in one
    /// transaction: a new secrets version with the previous set (so history shows it), deployed,
    /// recorded by a `rolled_back` release. The machines are the caller's to move back.
    /// Returns (the failed release, the rollback release).
    pub async fn fail_release(
        &self,
        app_id: &str,
        version: i64,
        reason: &str,
    ) -> Result<(ReleaseRecord, ReleaseRecord)> {
        let mut tx = self.begin_write().await?;
        let result = fail_in(&mut tx, app_id, version, reason).await;
        match result {
            Ok(v) => {
                tx.commit().await?;
                Ok(v)
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

async fn members_in(
    tx: &mut AnyConnection,
    app_id: &str,
    version: i64,
) -> Result<BTreeMap<String, (i64, String)>> {
    let rows = sqlx::query(
        "SELECT m.name, m.value_version, v.digest FROM secret_members m \
         JOIN secret_values v ON v.app_id = m.app_id AND v.name = m.name AND v.version = m.value_version \
         WHERE m.app_id = $1 AND m.version = $2",
    )
    .bind(app_id)
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("name")?,
                (r.try_get("value_version")?, r.try_get("digest")?),
            ))
        })
        .collect()
}

async fn fail_in(
    tx: &mut AnyConnection,
    app_id: &str,
    version: i64,
    reason: &str,
) -> Result<(ReleaseRecord, ReleaseRecord)> {
    let now = crate::now_micros();
    let sql = format!(
        "UPDATE releases SET status = 'failed', reason = $1, progress = '', updated_at = $2 \
         WHERE app_id = $3 AND version = $4 AND status = 'running' RETURNING {RELEASE_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(reason)
        .bind(now)
        .bind(app_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict("the release is not running".into()))?;
    let failed = release_from_row(&row)?;

    // The new version: exactly the members of what ran before the release.
    let current: i64 = sqlx::query_scalar("SELECT secrets_version FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_one(&mut *tx)
        .await?;
    let restored = current + 1;
    let before = members_in(tx, app_id, failed.previous_secrets_version).await?;
    let now_members = members_in(tx, app_id, current).await?;
    let mut changes = Vec::new();
    for (name, (vv, digest)) in &before {
        if now_members.get(name).map(|(v, _)| v) != Some(vv) {
            changes.push(ChangeRecord {
                name: name.clone(),
                kind: ChangeKind::Set,
                digest: Some(digest.clone()),
            });
        }
    }
    for name in now_members.keys().filter(|n| !before.contains_key(*n)) {
        changes.push(ChangeRecord {
            name: name.clone(),
            kind: ChangeKind::Unset,
            digest: None,
        });
    }
    let changes =
        serde_json::to_string(&changes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query("UPDATE apps SET secrets_version = $1, deployed_version = $2 WHERE id = $3")
        .bind(restored)
        .bind(restored)
        .bind(app_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO secret_versions (app_id, version, actor, created_at, changes) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(app_id)
    .bind(restored)
    .bind(format!("coffer (rollback of release {version})"))
    .bind(now)
    .bind(changes)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO secret_members (app_id, version, name, value_version) \
         SELECT app_id, $1, name, value_version FROM secret_members WHERE app_id = $2 AND version = $3",
    )
    .bind(restored)
    .bind(app_id)
    .bind(failed.previous_secrets_version)
    .execute(&mut *tx)
    .await?;
    let rollback = insert_in(
        tx,
        app_id,
        restored,
        (failed.secrets_version, failed.version),
        &NewRelease {
            description: format!(
                "Rollback of release {version}: back to the secrets of secrets version {}",
                failed.previous_secrets_version
            ),
            actor: "coffer".into(),
        },
        ReleaseStatus::RolledBack,
        now,
    )
    .await?;
    Ok((failed, rollback))
}

fn release_from_row(row: &AnyRow) -> Result<ReleaseRecord> {
    let status: String = row.try_get("status")?;
    Ok(ReleaseRecord {
        app_id: row.try_get("app_id")?,
        version: row.try_get("version")?,
        secrets_version: row.try_get("secrets_version")?,
        previous_secrets_version: row.try_get("previous_secrets_version")?,
        previous_release_version: row.try_get("previous_release_version")?,
        description: row.try_get("description")?,
        actor: row.try_get("actor")?,
        status: ReleaseStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("release status {status:?}")))?,
        reason: row.try_get("reason")?,
        progress: row.try_get("progress")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
