//! Hosts and machines: where workloads run, what they should be doing, what they report.

use crate::store::{found_if, BodyError};
use crate::write_tx::{args, WriteTx};
use crate::{Micros, ReleaseLease, Result, Store, StoreError, StoreRow};
use coffer_core::wire::machines::{DesiredState, HealthCheck, MachineState, RestartPolicy};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    /// Ed25519 public key, hex.
    pub public_key: String,
    pub token_hash: Vec<u8>,
    pub generation: i64,
    pub created_at: Micros,
    pub last_seen_at: Micros,
}

/// A machine's configuration: what to run. Plain values only, never a secret. Stored as JSON
/// (the `config` column), so a field added here needs no migration as long as older rows
/// still parse (`#[serde(default)]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub restart: RestartPolicy,
    /// The health check the host runs while the workload runs; absent in rows written before
    /// health checks existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRecord {
    pub id: String,
    pub app_id: String,
    pub host_id: String,
    pub name: String,
    pub config: MachineConfig,
    pub desired: DesiredState,
    pub state: MachineState,
    pub exit_status: Option<i32>,
    pub message: Option<String>,
    pub secrets_version: i64,
    pub release_version: i64,
    pub generation: i64,
    /// The generation the host's latest state report was about.
    pub state_generation: i64,
    pub created_at: Micros,
    pub updated_at: Micros,
    pub destroyed_at: Option<Micros>,
}

#[derive(Debug, Clone)]
pub struct NewMachine {
    pub id: String,
    pub app_id: String,
    pub host_id: String,
    pub name: String,
    pub config: MachineConfig,
    pub secrets_version: i64,
    pub release_version: i64,
}

/// See [`Store::boot_facts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFacts {
    pub machine: MachineRecord,
    /// The host's public key as registered now.
    pub host_public_key: String,
    /// The app's public key as the vault's key record has it now; `None` once the app's keys
    /// are destroyed.
    pub app_public_key: Option<Vec<u8>>,
    /// Name → value version, of the machine's secrets version.
    pub members: std::collections::HashMap<String, i64>,
}

const MACHINE_COLUMNS: &str = "id, app_id, host_id, name, config, desired, state, exit_status, \
     message, secrets_version, release_version, generation, state_generation, created_at, updated_at, \
     destroyed_at";
const HOST_COLUMNS: &str =
    "id, name, address, public_key, token_hash, generation, created_at, last_seen_at";

impl Store {
    // --------------------------------------------------------------------------------- hosts

    pub async fn register_host(
        &self,
        id: &str,
        name: &str,
        address: &str,
        public_key: &str,
        token_hash: &[u8],
    ) -> Result<HostRecord> {
        let sql = format!(
            "INSERT INTO hosts (id, name, address, public_key, token_hash, created_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING {HOST_COLUMNS}"
        );
        let host = [id, name, address, public_key].map(str::to_string);
        let token_hash = token_hash.to_vec();
        self.write_tx(move |tx| {
            let [id, name, address, public_key] = &host;
            let now = crate::now_micros();
            tx.fetch_optional(
                &sql,
                args![id, name, address, public_key, &token_hash, now],
                host_from_row,
            )
            .map_err(BodyError::before_changes)?
            .ok_or_else(|| BodyError::Failed(returned_nothing()))
        })
        .await
    }

    /// On the path of every request of a host agent (its token check).
    pub async fn host(&self, id: &str) -> Result<HostRecord> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1");
        self.hot_read_one(&sql, args![id], "host", host_from_row)
            .await
    }

    pub async fn hosts(&self) -> Result<Vec<HostRecord>> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(|row| host_from_row(row)).collect()
    }

    /// A heartbeat: the host is alive, at `address`.
    pub async fn touch_host(&self, id: &str, address: &str) -> Result<()> {
        let (id, address) = (id.to_string(), address.to_string());
        self.write_tx(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE hosts SET last_seen_at = $1, address = $2 WHERE id = $3",
                    args![crate::now_micros(), &address, &id],
                )
                .map_err(BodyError::before_changes)?;
            found_if(updated > 0, "host")
        })
        .await
    }

    /// The host's generation and its machines that still need it: every machine placed on it
    /// except the destroyed ones it has already acknowledged.
    pub async fn host_assignments(&self, host_id: &str) -> Result<(i64, Vec<MachineRecord>)> {
        let host = self.host(host_id).await?;
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE host_id = $1 \
             AND NOT (desired = 'destroyed' AND state = 'destroyed') ORDER BY created_at, id"
        );
        // On the path of every machine start: the answer that wakes the host. A host's
        // machines are few (a host runs them), so this stays a short read.
        let machines = self
            .hot_read(&sql, args![host_id], machine_from_row)
            .await?;
        Ok((host.generation, machines))
    }

    // ------------------------------------------------------------------------------ machines

    pub async fn create_machine(&self, m: NewMachine) -> Result<MachineRecord> {
        let config = serde_json::to_string(&m.config).expect("machine config serializes");
        let sql = format!(
            "INSERT INTO machines (id, app_id, host_id, name, config, desired, state, \
             secrets_version, release_version, generation, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', 'pending', $6, $7, $8, $9, $9) \
             RETURNING {MACHINE_COLUMNS}"
        );
        self.write_tx(move |tx| {
            let generation = bump_host(tx, &m.host_id).map_err(BodyError::before_changes)?;
            let inserted = tx.fetch_optional(
                &sql,
                args![
                    &m.id,
                    &m.app_id,
                    &m.host_id,
                    &m.name,
                    &config,
                    m.secrets_version,
                    m.release_version,
                    generation,
                    crate::now_micros()
                ],
                machine_from_row,
            );
            match inserted {
                Ok(Some(machine)) => Ok(machine),
                Ok(None) => Err(BodyError::Failed(returned_nothing())),
                // The host's generation moved already: the write fails as a whole.
                Err(e) if e.is_foreign_key_violation() => {
                    Err(BodyError::Failed(StoreError::NotFound("app")))
                }
                Err(e) => Err(BodyError::Failed(e)),
            }
        })
        .await
    }

    /// On the path of every machine start and boot grant.
    pub async fn machine(&self, id: &str) -> Result<MachineRecord> {
        let sql = format!("SELECT {MACHINE_COLUMNS} FROM machines WHERE id = $1");
        self.hot_read_one(&sql, args![id], "machine", machine_from_row)
            .await
    }

    /// What the vault checks before it decrypts for a machine's boot, read in one statement:
    /// the machine, the public key its host has now, and which value of each name the
    /// machine's secrets version holds. `NotFound("machine")` if there is no such machine.
    pub async fn boot_facts(&self, machine_id: &str) -> Result<BootFacts> {
        // One row: the members come as the kept listing of the machine's secrets version (its
        // record since schema v7). A join of a row per member would repeat every machine
        // column on each, and copying those values was most of the cost of a boot's read.
        let columns: Vec<String> = MACHINE_COLUMNS
            .split(',')
            .map(|c| format!("m.{}", c.trim()))
            .collect();
        let sql = format!(
            "SELECT {}, h.public_key AS host_public_key, k.public_key AS app_public_key, \
             sv.listing AS listing \
             FROM machines m JOIN hosts h ON h.id = m.host_id \
             LEFT JOIN vault_app_keys k ON k.app_id = m.app_id \
             LEFT JOIN secret_versions sv \
             ON sv.app_id = m.app_id AND sv.version = m.secrets_version \
             WHERE m.id = $1",
            columns.join(", "),
        );
        let row = self
            .hot_read(&sql, args![machine_id], |row| {
                Ok((
                    machine_from_row(row)?,
                    row.text("host_public_key")?,
                    row.bytes_opt("app_public_key")?,
                    row.text_opt("listing")?,
                ))
            })
            .await?
            .pop();
        let (machine, host_public_key, app_public_key, listing) =
            row.ok_or(StoreError::NotFound("machine"))?;
        let members = match (machine.secrets_version, listing) {
            (0, _) => std::collections::HashMap::new(),
            (_, Some(listing)) => crate::store::listing_members(&listing)?,
            (version, None) => {
                return Err(StoreError::Corrupt(format!(
                    "machine {machine_id} runs secrets version {version}, which has no listing"
                )))
            }
        };
        Ok(BootFacts {
            machine,
            host_public_key,
            app_public_key,
            members,
        })
    }

    /// The app's machines, oldest first, destroyed ones included (callers filter).
    pub async fn app_machines(&self, app_id: &str) -> Result<Vec<MachineRecord>> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE app_id = $1 ORDER BY created_at, id"
        );
        // On the path of every deploying write (the release's rollout plan).
        self.hot_read(&sql, args![app_id], machine_from_row).await
    }

    /// Changes what the machine should be doing and tells its host (generation bump).
    /// Destroying is final: a destroyed machine cannot be started again, and from the moment
    /// this returns the vault refuses the machine's tokens.
    pub async fn set_machine_desired(
        &self,
        id: &str,
        desired: DesiredState,
    ) -> Result<MachineRecord> {
        let id = id.to_string();
        let sql = format!(
            "UPDATE machines SET desired = $1, generation = $2, updated_at = $3, \
             destroyed_at = COALESCE(destroyed_at, $4) WHERE id = $5 RETURNING {MACHINE_COLUMNS}"
        );
        self.write_tx(move |tx| {
            let (host_id, current) = tx
                .fetch_optional(
                    "SELECT host_id, desired FROM machines WHERE id = $1",
                    args![&id],
                    |row| Ok((row.text("host_id")?, row.text("desired")?)),
                )
                .map_err(BodyError::before_changes)?
                .ok_or(BodyError::Refused(StoreError::NotFound("machine")))?;
            if current == DesiredState::Destroyed.as_str() {
                return Err(BodyError::Refused(StoreError::Conflict(
                    "the machine is destroyed".into(),
                )));
            }
            let generation = bump_host(tx, &host_id).map_err(BodyError::before_changes)?;
            let now = crate::now_micros();
            let destroyed_at = (desired == DesiredState::Destroyed).then_some(now);
            tx.fetch_optional(
                &sql,
                args![desired.as_str(), generation, now, destroyed_at, &id],
                machine_from_row,
            )
            .and_then(|machine| machine.ok_or_else(returned_nothing))
            .map_err(BodyError::Failed)
        })
        .await
    }

    /// Points a machine at another secrets version (`machines start`: the deployed one) and
    /// tells its host.
    pub async fn set_machine_version(
        &self,
        id: &str,
        secrets_version: i64,
        release_version: i64,
    ) -> Result<MachineRecord> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            move_machine_in(tx, &id, None, None, secrets_version, release_version)
        })
        .await
    }

    /// Moves a machine of the lease's app to a secrets version on behalf of its release (the
    /// rollout, or the rollback) and tells its host. Fenced (see [`ReleaseLease`]): `Fenced`,
    /// with nothing changed, once the release is no longer running under the lease's owner.
    /// `NotFound` if the app has no such machine.
    pub async fn move_machine_for_release(
        &self,
        lease: &ReleaseLease,
        id: &str,
        secrets_version: i64,
        release_version: i64,
    ) -> Result<MachineRecord> {
        let (lease, id) = (lease.clone(), id.to_string());
        self.write_tx(move |tx| {
            move_machine_in(
                tx,
                &id,
                Some(&lease.app_id),
                Some(&lease),
                secrets_version,
                release_version,
            )
        })
        .await
    }

    /// What the host says the machine is doing. Only the machine's own host may report, and a
    /// destroyed machine only ever goes to `destroyed`.
    pub async fn report_machine_state(
        &self,
        id: &str,
        host_id: &str,
        state: MachineState,
        exit_status: Option<i32>,
        message: Option<&str>,
        generation: i64,
    ) -> Result<MachineRecord> {
        // The state is compared as text, bound a second time ($8), so that PostgreSQL
        // infers one type per placeholder.
        let sql = format!(
            "UPDATE machines SET state = $1, exit_status = $2, message = $3, state_generation = $4, \
             updated_at = $5 \
             WHERE id = $6 AND host_id = $7 AND (desired <> 'destroyed' OR $8 = 'destroyed') \
             RETURNING {MACHINE_COLUMNS}"
        );
        let (id, host_id) = (id.to_string(), host_id.to_string());
        let message = message.map(str::to_string);
        self.write_tx(move |tx| {
            let reported = tx
                .fetch_optional(
                    &sql,
                    args![
                        state.as_str(),
                        exit_status.map(i64::from),
                        message.as_deref(),
                        generation,
                        crate::now_micros(),
                        &id,
                        &host_id,
                        state.as_str()
                    ],
                    machine_from_row,
                )
                .map_err(BodyError::Failed)?;
            if let Some(machine) = reported {
                return Ok(machine);
            }
            let placed_on = tx
                .fetch_optional(
                    "SELECT host_id FROM machines WHERE id = $1",
                    args![&id],
                    |row| row.text("host_id"),
                )
                .map_err(BodyError::before_changes)?;
            Err(BodyError::Refused(match placed_on {
                Some(placed_on) if placed_on == host_id => {
                    StoreError::Conflict("the machine is destroyed".into())
                }
                _ => StoreError::NotFound("machine"),
            }))
        })
        .await
    }
}

fn bump_host(tx: &mut dyn WriteTx, host_id: &str) -> Result<i64> {
    tx.fetch_optional(
        "UPDATE hosts SET generation = generation + 1 WHERE id = $1 RETURNING generation",
        args![host_id],
        |row| row.int("generation"),
    )?
    .ok_or(StoreError::NotFound("host"))
}

/// `INSERT … RETURNING` or `UPDATE … RETURNING` of a row known to exist gave no row.
fn returned_nothing() -> StoreError {
    StoreError::Corrupt("a write that must return its row returned none".into())
}

fn host_from_row(row: &dyn StoreRow) -> Result<HostRecord> {
    Ok(HostRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        address: row.text("address")?,
        public_key: row.text("public_key")?,
        token_hash: row.bytes("token_hash")?,
        generation: row.int("generation")?,
        created_at: row.int("created_at")?,
        last_seen_at: row.int("last_seen_at")?,
    })
}

fn machine_from_row(row: &dyn StoreRow) -> Result<MachineRecord> {
    let config = row.text("config")?;
    let desired = row.text("desired")?;
    let state = row.text("state")?;
    Ok(MachineRecord {
        id: row.text("id")?,
        app_id: row.text("app_id")?,
        host_id: row.text("host_id")?,
        name: row.text("name")?,
        config: serde_json::from_str(&config)
            .map_err(|e| StoreError::Corrupt(format!("machine config: {e}")))?,
        desired: DesiredState::parse(&desired)
            .ok_or_else(|| StoreError::Corrupt(format!("machine desired state {desired:?}")))?,
        state: MachineState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("machine state {state:?}")))?,
        exit_status: row.int_opt("exit_status")?.map(|s| s as i32),
        message: row.text_opt("message")?,
        secrets_version: row.int("secrets_version")?,
        release_version: row.int("release_version")?,
        generation: row.int("generation")?,
        state_generation: row.int("state_generation")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        destroyed_at: row.int_opt("destroyed_at")?,
    })
}

/// Moves machine `id` (of `app_id`, when given) to a secrets version and bumps its host's
/// generation so that the host sees it. The host first, as every write that changes a machine
/// does (see `Store::delete_app`); then, with a `fence`, the release's row, which holds it until
/// the commit, so that a take-over cannot slip between the check and the move.
fn move_machine_in(
    tx: &mut dyn WriteTx,
    id: &str,
    app_id: Option<&str>,
    fence: Option<&ReleaseLease>,
    secrets_version: i64,
    release_version: i64,
) -> Result<MachineRecord, BodyError> {
    let host_id = tx
        .fetch_optional(
            "SELECT host_id FROM machines WHERE id = $1 AND ($2 IS NULL OR app_id = $2)",
            args![id, app_id],
            |row| row.text("host_id"),
        )
        .map_err(BodyError::before_changes)?
        .ok_or(BodyError::Refused(StoreError::NotFound("machine")))?;
    let generation = bump_host(tx, &host_id).map_err(BodyError::before_changes)?;
    let now = crate::now_micros();
    if let Some(lease) = fence {
        if !crate::releases::fence_in(tx, lease, now).map_err(BodyError::Failed)? {
            // The host's bump above is undone with the transaction.
            return Err(BodyError::Failed(StoreError::Fenced));
        }
    }
    let sql = format!(
        "UPDATE machines SET secrets_version = $1, release_version = $2, generation = $3, \
         updated_at = $4 WHERE id = $5 RETURNING {MACHINE_COLUMNS}"
    );
    tx.fetch_optional(
        &sql,
        args![secrets_version, release_version, generation, now, id],
        machine_from_row,
    )
    .and_then(|machine| machine.ok_or_else(returned_nothing))
    .map_err(BodyError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_written_before_health_checks_still_parse() {
        let old: MachineConfig =
            serde_json::from_str(r#"{"command":["x"],"env":{"A":"1"},"restart":"on-failure"}"#)
                .unwrap();
        assert_eq!(old.check, None);
        assert_eq!(old.restart, RestartPolicy::OnFailure);
        // And a config without a check is written as before.
        assert!(!serde_json::to_string(&old).unwrap().contains("check"));
        let checked = MachineConfig {
            check: Some(HealthCheck::Tcp { port: 5432 }),
            ..old
        };
        let text = serde_json::to_string(&checked).unwrap();
        assert!(
            text.contains(r#""check":{"type":"tcp","port":5432}"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<MachineConfig>(&text).unwrap(),
            checked
        );
    }
}
