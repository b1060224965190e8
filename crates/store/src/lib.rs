//! The store of record: apps, secrets versions (ciphertexts only), API tokens and the vault's
//! wrapped keys, on SQLite (embedded default) or PostgreSQL (several nodes).
//!
//! One [`Store`] type serves both engines: the SQL is written once in the dialect both
//! understand (`$n` placeholders, `RETURNING`, `ON CONFLICT`), and the engine differences are
//! confined to [`engine`] (URL parsing, connection setup, DDL). PostgreSQL runs everything
//! through sqlx's `Any` driver. On SQLite the writes (`group_commit`, through the `WriteTx`
//! interface of `write_tx`) and the reads on every request's path (`sqlite_reads`) run on
//! SQLite's own API, and the other reads on sqlx's pool. The conformance suite in
//! `tests/conformance.rs` runs every behaviour on both engines.
//!
//! Invariants:
//! * No plaintext secret value ever reaches this crate: it stores ciphertexts, keyed digests and
//!   value lengths.
//! * Secrets versions are immutable: a write inserts a new version and never updates one.
//! * A write names the version it was based on; if the app moved on meanwhile the write fails
//!   with [`StoreError::Conflict`] and changes nothing.

mod checkpointer;
pub mod engine;
mod group_commit;
mod machines;
mod readers;
mod releases;
mod sqlite_reads;
mod store;
pub mod testing;
mod write_tx;

pub use engine::{DatabaseUrl, Engine, OpenMode};
pub use machines::{BootFacts, HostRecord, MachineConfig, MachineRecord, NewMachine};
pub use releases::{NewRelease, ReleaseLease, ReleaseRecord, ReleaseStatus, RELEASE_LEASE};
pub use store::Store;

use coffer_core::{Action, AppName, SecretName};

/// Errors in the domain's words. Backend detail stays in `Backend` for the logs; it never
/// contains bound values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database error: {0}")]
    Backend(#[from] sqlx::Error),
    /// From SQLite's own API (on SQLite, the hot reads and the writes: `sqlite_reads`,
    /// `group_commit`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A write on behalf of a release whose orchestration no longer holds it: the release is
    /// not `running` any more, or another orchestration took it over (see
    /// [`ReleaseLease`]). The caller must stop touching the release.
    #[error("the release is no longer running under this orchestration")]
    Fenced,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A write that was not committed for a reason outside it (the database failed, the
    /// daemon is stopping); the message says which.
    #[error("database error: {0}")]
    NotCommitted(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// The database failed (rather than refusing or not finding something).
    pub(crate) fn is_backend(&self) -> bool {
        matches!(self, StoreError::Backend(_) | StoreError::Sqlite(_))
    }

    /// A FOREIGN KEY constraint refused the statement, on either engine.
    pub(crate) fn is_foreign_key_violation(&self) -> bool {
        match self {
            StoreError::Backend(sqlx::Error::Database(db)) => {
                db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation
            }
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
            }
            _ => false,
        }
    }

    /// The unique index or constraint `name` refused the statement (PostgreSQL names it).
    pub(crate) fn is_violation_of(&self, name: &str) -> bool {
        matches!(self, StoreError::Backend(sqlx::Error::Database(db))
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation
                && db.constraint() == Some(name))
    }

    /// A UNIQUE or PRIMARY KEY constraint refused the statement, on either engine.
    pub(crate) fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Backend(sqlx::Error::Database(db)) => {
                db.kind() == sqlx::error::ErrorKind::UniqueViolation
            }
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }
}

/// A row of a result, from sqlx (`AnyRow`) or from SQLite's own API (`sqlite_reads`), so that
/// each mapping from rows to records is written once for both.
pub(crate) trait StoreRow {
    fn text(&self, column: &str) -> Result<String>;
    fn text_opt(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>>;
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>>;
}

impl StoreRow for sqlx::any::AnyRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn text_opt(&self, column: &str) -> Result<Option<String>> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn int_opt(&self, column: &str) -> Result<Option<i64>> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn bytes_opt(&self, column: &str) -> Result<Option<Vec<u8>>> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

/// Microseconds since the Unix epoch, UTC: the one time representation in the store.
pub type Micros = i64;

pub fn now_micros() -> Micros {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    d.as_micros() as i64
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// Random, never reused: ciphertexts and keys are bound to it, not to the name.
    pub id: String,
    pub name: AppName,
    pub created_at: Micros,
    pub secrets_version: i64,
    pub deployed_version: i64,
    pub crash_window_ms: i64,
    /// The app's latest release (0 before the first).
    pub release_version: i64,
}

/// One stored value of a secret, as part of a version's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub name: SecretName,
    /// The version this ciphertext was written at: part of its associated data.
    pub value_version: i64,
    pub ciphertext: Vec<u8>,
    pub digest: String,
    pub value_len: i64,
    /// When this name first got a value (kept across updates of the name).
    pub created_at: Micros,
    /// When this value was written.
    pub updated_at: Micros,
}

/// One row of `secrets list`: a stored secret without its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSecret {
    pub name: SecretName,
    pub value_version: i64,
    pub digest: String,
    pub value_len: i64,
    pub created_at: Micros,
    pub updated_at: Micros,
    /// The same value is in the deployed version.
    pub deployed: bool,
}

/// A value to store in a new version: already sealed by the caller.
#[derive(Debug, Clone)]
pub struct NewValue {
    pub name: SecretName,
    pub ciphertext: Vec<u8>,
    pub digest: String,
    pub value_len: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Set,
    Unset,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeRecord {
    pub name: String,
    pub kind: ChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A new secrets version: what changed relative to `base_version`.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub app_id: String,
    /// The version the change was computed against; the write fails with `Conflict` if the
    /// app's current version is another one.
    pub base_version: i64,
    /// What the caller read of the app to compute the change (its `secrets_version` must be
    /// `base_version`), or `None` for the store to read what it needs inside the write. With
    /// it, a write on PostgreSQL is one statement (one round trip). See [`BaseRead`].
    pub base: Option<BaseRead>,
    /// The version to create (must be `base_version + 1`; the caller sealed the values for it).
    pub version: i64,
    pub actor: String,
    pub sets: Vec<NewValue>,
    pub unsets: Vec<SecretName>,
    /// Mark the new version deployed in the same transaction (no `--stage`).
    pub deploy: bool,
    /// With `deploy`: start a release for the new version in the same transaction. `Conflict`
    /// (and nothing written) if the app has a release running.
    pub release: Option<NewRelease>,
}

/// The app and its current secrets, read together ([`Store::base_read`]): what a write was
/// computed against. A version never changes once written, so the listing stays right for
/// `app().secrets_version`; the write applies only if the app is still at that version (and,
/// for a write with a release on PostgreSQL, still has the deployed and release versions
/// read here, which the release records as what ran before it). Otherwise: `Conflict`, and
/// the caller reads again. Only the store makes one, so the listing is always the version's.
#[derive(Debug, Clone)]
pub struct BaseRead {
    app: AppRecord,
    listing: Vec<ListedSecret>,
}

impl BaseRead {
    pub fn app(&self) -> &AppRecord {
        &self.app
    }

    /// What `secrets list` shows of the app's current version.
    pub fn listing(&self) -> &[ListedSecret] {
        &self.listing
    }
}

/// What `write_version` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub version: i64,
    pub release: Option<ReleaseRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    pub version: i64,
    pub actor: String,
    pub created_at: Micros,
    pub changes: Vec<ChangeRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: Vec<u8>,
    /// `None`: all apps.
    pub app_id: Option<String>,
    pub app_name: Option<AppName>,
    pub action: Action,
    pub description: String,
    pub created_at: Micros,
    pub expires_at: Micros,
    pub revoked_at: Option<Micros>,
}

#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub app_id: Option<String>,
    pub action: Action,
    pub description: String,
    pub expires_at: Micros,
}

/// The vault's record of an app's keys: only the public key is in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKeyRecord {
    pub app_id: String,
    pub public_key: Vec<u8>,
    pub wrapped_private_key: Vec<u8>,
    pub wrapped_digest_key: Vec<u8>,
    pub created_at: Micros,
}
