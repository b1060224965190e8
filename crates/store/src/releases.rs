//! Releases: each deploying change rolls a secrets version out to the app's machines, watched
//! for crashes, and is rolled back by itself if a machine crashes. The store keeps the record
//! and enforces one running release per app (a unique partial index), so the rule holds across
//! API replicas.
//!
//! Ownership: a running release is orchestrated by one API process at a time, its **owner**,
//! named by a fencing token (`releases.owner`) and holding a **lease** (`lease_until`) that
//! its writes renew. Every change made on a release's behalf — moving a machine to a version,
//! progress, completing, failing — takes a [`ReleaseLease`] and applies only if the release
//! is still `running` under that owner, checked in the same transaction by an `UPDATE` of the
//! release's row. That `UPDATE` also locks the row until the transaction ends: on PostgreSQL
//! (READ COMMITTED) a mere `EXISTS (…)` in the statement reads a snapshot, so a take-over
//! committing meanwhile would not stop it; the row lock makes the fenced write and a take-over
//! (or a renewal) wait for each other, and the loser re-checks the row as it now is. Once a
//! lease has passed, [`Store::take_over_expired_releases`] hands the release to a new owner,
//! which fences the old one out.

use crate::store::{listing_json, version_entries, BodyError, ListingEntry};
use crate::write_tx::{args, WriteTx};
use crate::{ChangeKind, ChangeRecord, Micros, Result, Store, StoreError, StoreRow};
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

/// How long a release's owner holds it without a renewal: each fenced write, and
/// [`Store::renew_release_lease`], extends the lease to this long from then. Past it, another
/// API replica may take the release over. Replicas' clocks must agree to well within this.
pub const RELEASE_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

pub(crate) fn lease_end(now: Micros) -> Micros {
    now + RELEASE_LEASE.as_micros() as i64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub description: String,
    pub actor: String,
    /// The fencing token of the orchestration that will run the release, if it runs: it owns
    /// the release from its creation, with a fresh lease.
    pub owner: String,
}

/// The right to change a running release: which release, and the owner's fencing token.
/// Every store write made on the release's behalf carries it, and is refused with
/// [`StoreError::Fenced`] once the release is no longer `running` under this owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseLease {
    pub app_id: String,
    pub version: i64,
    pub owner: String,
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
    /// The fencing token of the orchestration that holds the release (see the module's
    /// comment); `None` for releases that never ran and those from before owners existed.
    pub owner: Option<String>,
    /// Until when the owner holds it, unless renewed.
    pub lease_until: Micros,
}

impl ReleaseRecord {
    /// The lease its owner holds, if it has one.
    pub fn lease(&self) -> Option<ReleaseLease> {
        Some(ReleaseLease {
            app_id: self.app_id.clone(),
            version: self.version,
            owner: self.owner.clone()?,
        })
    }
}

const RELEASE_COLUMNS: &str = "app_id, version, secrets_version, previous_secrets_version, \
     previous_release_version, description, actor, status, reason, progress, created_at, \
     updated_at, owner, lease_until";

/// The fence of every write on a release's behalf: renews the lease of `lease`'s release if it
/// is still `running` under that owner, and locks its row until the transaction ends (see the
/// module's comment). `Ok(false)`, with nothing written, if it is not.
pub(crate) fn fence_in(tx: &mut dyn WriteTx, lease: &ReleaseLease, now: Micros) -> Result<bool> {
    let n = tx.execute(
        "UPDATE releases SET lease_until = $1 \
         WHERE app_id = $2 AND version = $3 AND status = 'running' AND owner = $4",
        args![lease_end(now), &lease.app_id, lease.version, &lease.owner],
    )?;
    Ok(n == 1)
}

/// What the app's machines run now: (deployed secrets version, release version).
pub(crate) fn deployed_in(tx: &mut dyn WriteTx, app_id: &str) -> Result<(i64, i64)> {
    tx.fetch_optional(
        "SELECT deployed_version, release_version FROM apps WHERE id = $1",
        args![app_id],
        |row| Ok((row.int("deployed_version")?, row.int("release_version")?)),
    )?
    .ok_or(StoreError::NotFound("app"))
}

/// Inserts the next release of the app: `running`, or `complete` at once when the app has no
/// machine (destroyed ones aside), since then there is nothing to roll out and nothing could
/// crash. `Conflict` if a release is running already.
pub(crate) fn insert_release_in(
    tx: &mut dyn WriteTx,
    app_id: &str,
    secrets_version: i64,
    before: (i64, i64),
    r: &NewRelease,
    now: Micros,
) -> Result<ReleaseRecord> {
    let has_machines = tx
        .fetch_optional(
            "SELECT 1 AS live FROM machines WHERE app_id = $1 AND desired <> 'destroyed' LIMIT 1",
            args![app_id],
            |_| Ok(()),
        )?
        .is_some();
    let status = if has_machines {
        ReleaseStatus::Running
    } else {
        ReleaseStatus::Complete
    };
    let owner = (status == ReleaseStatus::Running).then_some(r.owner.as_str());
    insert_in(tx, app_id, secrets_version, before, r, status, owner, now)
}

#[allow(clippy::too_many_arguments)]
fn insert_in(
    tx: &mut dyn WriteTx,
    app_id: &str,
    secrets_version: i64,
    (previous_secrets_version, previous_release_version): (i64, i64),
    r: &NewRelease,
    status: ReleaseStatus,
    owner: Option<&str>,
    now: Micros,
) -> Result<ReleaseRecord> {
    let version = tx
        .fetch_optional(
            "UPDATE apps SET release_version = release_version + 1 WHERE id = $1 \
             RETURNING release_version",
            args![app_id],
            |row| row.int("release_version"),
        )?
        .ok_or(StoreError::NotFound("app"))?;
    let sql = format!(
        "INSERT INTO releases ({RELEASE_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, '', $9, $9, $10, $11) \
         RETURNING {RELEASE_COLUMNS}"
    );
    let inserted = tx.fetch_optional(
        &sql,
        args![
            app_id,
            version,
            secrets_version,
            previous_secrets_version,
            previous_release_version,
            &r.description,
            &r.actor,
            status.as_str(),
            now,
            owner,
            if owner.is_some() { lease_end(now) } else { 0 }
        ],
        release_from_row,
    );
    match inserted {
        Ok(row) => row.ok_or_else(|| StoreError::Corrupt("INSERT … RETURNING gave no row".into())),
        Err(e) if e.is_unique_violation() => Err(StoreError::Conflict(RELEASE_RUNNING.into())),
        Err(e) => Err(e),
    }
}

pub(crate) const RELEASE_RUNNING: &str =
    "a release is already running for this app; wait for it to \
                               finish (coffer releases list), or use --stage";

impl Store {
    /// Deploys what was staged: the app's newest secrets version becomes deployed and a release
    /// starts for it. `Conflict` if nothing is staged or a release is running.
    pub async fn deploy_staged(&self, app_id: &str, r: &NewRelease) -> Result<ReleaseRecord> {
        let (app_id, r) = (app_id.to_string(), r.clone());
        self.write_tx(move |tx| {
            // Refusals come before the first change, so they leave the group's transaction as
            // it was.
            let before = deployed_in(tx, &app_id).map_err(BodyError::before_changes)?;
            let current = crate::store::secrets_version_in(tx, &app_id)
                .map_err(BodyError::Failed)?
                .ok_or(BodyError::Refused(StoreError::NotFound("app")))?;
            if current == before.0 {
                return Err(BodyError::Refused(StoreError::Conflict(format!(
                    "nothing is staged: secrets version {current} is already deployed"
                ))));
            }
            let running = tx
                .fetch_optional(
                    "SELECT 1 AS running FROM releases WHERE app_id = $1 AND status = 'running' LIMIT 1",
                    args![&app_id],
                    |_| Ok(()),
                )
                .map_err(BodyError::Failed)?;
            if running.is_some() {
                return Err(BodyError::Refused(StoreError::Conflict(
                    RELEASE_RUNNING.into(),
                )));
            }
            tx.execute(
                "UPDATE apps SET deployed_version = $1 WHERE id = $2",
                args![current, &app_id],
            )
            .map_err(BodyError::Failed)?;
            insert_release_in(tx, &app_id, current, before, &r, crate::now_micros())
                .map_err(BodyError::Failed)
        })
        .await
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
        rows.iter().map(|row| release_from_row(row)).collect()
    }

    /// Every release still `running`, of every app (for recovery after a restart).
    pub async fn running_releases(&self) -> Result<Vec<ReleaseRecord>> {
        let sql = format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE status = 'running' ORDER BY created_at"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(|row| release_from_row(row)).collect()
    }

    /// A human line about where a running release is ("watching web-1 (canary): 12s left").
    /// Fenced (see [`ReleaseLease`]); renews the lease.
    pub async fn set_release_progress(&self, lease: &ReleaseLease, progress: &str) -> Result<()> {
        let (lease, progress) = (lease.clone(), progress.to_string());
        self.write_tx(move |tx| {
            let now = crate::now_micros();
            let n = tx
                .execute(
                    "UPDATE releases SET progress = $1, updated_at = $2, lease_until = $3 \
                     WHERE app_id = $4 AND version = $5 AND status = 'running' AND owner = $6",
                    args![
                        &progress,
                        now,
                        lease_end(now),
                        &lease.app_id,
                        lease.version,
                        &lease.owner
                    ],
                )
                .map_err(BodyError::before_changes)?;
            if n == 1 {
                Ok(())
            } else {
                Err(BodyError::Refused(StoreError::Fenced))
            }
        })
        .await
    }

    /// Extends the owner's lease ([`RELEASE_LEASE`] from now). `Fenced` if the release is no
    /// longer running under this owner.
    pub async fn renew_release_lease(&self, lease: &ReleaseLease) -> Result<()> {
        let lease = lease.clone();
        self.write_tx(move |tx| {
            if fence_in(tx, &lease, crate::now_micros()).map_err(BodyError::before_changes)? {
                Ok(())
            } else {
                Err(BodyError::Refused(StoreError::Fenced))
            }
        })
        .await
    }

    /// Takes over every running release whose lease has passed at `now` (its owner stopped
    /// renewing it: dead, or cut off from the store): `owner` becomes the owner of each, with
    /// a fresh lease, in one statement, so that two replicas never both take one. Returns
    /// them; the old owners' writes are fenced out from here on.
    pub async fn take_over_expired_releases(
        &self,
        owner: &str,
        now: Micros,
    ) -> Result<Vec<ReleaseRecord>> {
        let owner = owner.to_string();
        let sql = format!(
            "UPDATE releases SET owner = $1, lease_until = $2 \
             WHERE status = 'running' AND lease_until < $3 RETURNING {RELEASE_COLUMNS}"
        );
        self.write_tx(move |tx| {
            tx.fetch_all(&sql, args![&owner, lease_end(now), now], release_from_row)
                .map_err(BodyError::before_changes)
        })
        .await
    }

    /// Gives up the running releases owned under tokens starting with `owner_prefix` (one
    /// process's, at its graceful shutdown): their lease ends now and their owner is nobody,
    /// so that the next sweep anywhere takes them over at once, and a task of the stopping
    /// process that still writes for them is fenced out. Returns how many.
    pub async fn give_up_releases(&self, owner_prefix: &str) -> Result<u64> {
        // Owner tokens are hex and `-` (`Owners` in the API): nothing LIKE reads as a pattern.
        if !owner_prefix
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return Err(StoreError::Conflict(format!(
                "not an owner prefix: {owner_prefix:?}"
            )));
        }
        let pattern = format!("{owner_prefix}%");
        self.write_tx(move |tx| {
            tx.execute(
                "UPDATE releases SET owner = '', lease_until = 0 \
                 WHERE status = 'running' AND owner LIKE $1",
                args![&pattern],
            )
            .map_err(BodyError::before_changes)
        })
        .await
    }

    /// Marks a running release complete. Fenced (see [`ReleaseLease`]).
    pub async fn complete_release(&self, lease: &ReleaseLease) -> Result<ReleaseRecord> {
        let lease = lease.clone();
        let sql = format!(
            "UPDATE releases SET status = 'complete', progress = '', updated_at = $1 \
             WHERE app_id = $2 AND version = $3 AND status = 'running' AND owner = $4 \
             RETURNING {RELEASE_COLUMNS}"
        );
        self.write_tx(move |tx| {
            tx.fetch_optional(
                &sql,
                args![
                    crate::now_micros(),
                    &lease.app_id,
                    lease.version,
                    &lease.owner
                ],
                release_from_row,
            )
            .map_err(BodyError::before_changes)?
            .ok_or(BodyError::Refused(StoreError::Fenced))
        })
        .await
    }

    /// Fails a running release and returns the app's secrets to what ran before it, in one
    /// transaction: a new secrets version with the previous set (so history shows it), deployed,
    /// recorded by a `rolled_back` release. The machines are the caller's to move back, first.
    /// Fenced (see [`ReleaseLease`]), so that one orchestration alone rolls a release back.
    /// Returns (the failed release, the rollback release).
    pub async fn fail_release(
        &self,
        lease: &ReleaseLease,
        reason: &str,
    ) -> Result<(ReleaseRecord, ReleaseRecord)> {
        let (lease, reason) = (lease.clone(), reason.to_string());
        self.write_tx(move |tx| fail_in(tx, &lease, &reason)).await
    }
}

/// The statements of [`Store::fail_release`]. Refused (nothing written) if the release is not
/// running under the lease's owner; anything after its first change fails the transaction.
fn fail_in(
    tx: &mut dyn WriteTx,
    lease: &ReleaseLease,
    reason: &str,
) -> Result<(ReleaseRecord, ReleaseRecord), BodyError> {
    let (app_id, version) = (lease.app_id.as_str(), lease.version);
    let now = crate::now_micros();
    let sql = format!(
        "UPDATE releases SET status = 'failed', reason = $1, progress = '', updated_at = $2 \
         WHERE app_id = $3 AND version = $4 AND status = 'running' AND owner = $5 \
         RETURNING {RELEASE_COLUMNS}"
    );
    let failed = tx
        .fetch_optional(
            &sql,
            args![reason, now, app_id, version, &lease.owner],
            release_from_row,
        )
        .map_err(BodyError::before_changes)?
        .ok_or(BodyError::Refused(StoreError::Fenced))?;
    restore_in(tx, app_id, version, &failed, now)
        .map(|rollback| (failed, rollback))
        .map_err(BodyError::Failed)
}

/// After `failed` is marked failed: a new secrets version with exactly the members of what ran
/// before it, deployed, recorded by a `rolled_back` release (returned).
fn restore_in(
    tx: &mut dyn WriteTx,
    app_id: &str,
    version: i64,
    failed: &ReleaseRecord,
    now: Micros,
) -> Result<ReleaseRecord> {
    let current =
        crate::store::secrets_version_in(tx, app_id)?.ok_or(StoreError::NotFound("app"))?;
    let restored = current + 1;
    let before = version_entries(tx, app_id, failed.previous_secrets_version)?;
    let now_members = version_entries(tx, app_id, current)?;
    // By name, so that history shows the changes in a stable order.
    let before_sorted: BTreeMap<&str, &ListingEntry> =
        before.values().map(|e| (e.name.as_str(), e)).collect();
    let mut changes = Vec::new();
    for (name, entry) in &before_sorted {
        if now_members.get(*name).map(|e| e.value_version) != Some(entry.value_version) {
            changes.push(ChangeRecord {
                name: name.to_string(),
                kind: ChangeKind::Set,
                digest: Some(entry.digest.clone()),
            });
        }
    }
    let gone: BTreeMap<&str, ()> = now_members
        .keys()
        .filter(|n| !before.contains_key(*n))
        .map(|n| (n.as_str(), ()))
        .collect();
    for name in gone.keys() {
        changes.push(ChangeRecord {
            name: name.to_string(),
            kind: ChangeKind::Unset,
            digest: None,
        });
    }
    let changes =
        serde_json::to_string(&changes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "UPDATE apps SET secrets_version = $1, deployed_version = $1 WHERE id = $2",
        args![restored, app_id],
    )?;
    let actor = format!("coffer (rollback of release {version})");
    // Exactly the secrets of what ran before: the same listing.
    tx.execute(
        "INSERT INTO secret_versions (app_id, version, actor, created_at, changes, listing) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            app_id,
            restored,
            &actor,
            now,
            &changes,
            &listing_json(before.values())
        ],
    )?;
    insert_in(
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
            owner: String::new(),
        },
        ReleaseStatus::RolledBack,
        None,
        now,
    )
}

pub(crate) fn release_from_row(row: &dyn StoreRow) -> Result<ReleaseRecord> {
    let status = row.text("status")?;
    Ok(ReleaseRecord {
        app_id: row.text("app_id")?,
        version: row.int("version")?,
        secrets_version: row.int("secrets_version")?,
        previous_secrets_version: row.int("previous_secrets_version")?,
        previous_release_version: row.int("previous_release_version")?,
        description: row.text("description")?,
        actor: row.text("actor")?,
        status: ReleaseStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("release status {status:?}")))?,
        reason: row.text_opt("reason")?,
        progress: row.text("progress")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        owner: row.text_opt("owner")?,
        lease_until: row.int("lease_until")?,
    })
}
