//! The engine-neutral queries. Every statement here runs unchanged on SQLite and PostgreSQL:
//! `$n` placeholders in ascending order, `RETURNING`, `ON CONFLICT`, and only BIGINT, TEXT and
//! BLOB/BYTEA values. Orderings by name are done in Rust, because PostgreSQL sorts text by the
//! database's collation and SQLite by bytes.

use crate::engine::{self, DatabaseUrl, Engine, OpenMode};
use crate::group_commit::{GroupCommit, Outcome, WriteOp};
use crate::readers::Readers;
use crate::sqlite_reads::SqliteReads;
use crate::write_tx::{args, sqlx_query, Arg, Prepare, WriteTx};
use crate::{
    AppKeyRecord, AppRecord, ChangeKind, ChangeRecord, ListedSecret, Micros, NewToken, NewValue,
    NewVersion, Result, StoreError, StoreRow, StoredSecret, TokenRecord, VersionRecord,
    WriteOutcome,
};
use coffer_core::{Action, AppName, SecretName};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// The store of record. Cheap to clone: the pools are shared.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    /// Reads. For PostgreSQL the same pool as `write`.
    pub(crate) read: AnyPool,
    /// PostgreSQL: the writes' transactions (see `write_tx`). SQLite: only the migrations at
    /// open; closed afterwards.
    pub(crate) write: AnyPool,
    /// SQLite: the writer thread, which commits the writes in groups (see `group_commit`).
    group_commit: Option<GroupCommit>,
    /// The reads on every request's path.
    hot: Arc<HotReads>,
}

/// Where the reads on every request's path run.
enum HotReads {
    /// On SQLite's own API, on the calling thread (see `sqlite_reads`).
    Sqlite(SqliteReads),
    /// On the store's own sqlx connections (see `readers`).
    Pooled(Readers),
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Rows per multi-row INSERT: far below SQLite's and PostgreSQL's limits on bound parameters.
const ROWS_PER_INSERT: usize = 100;

/// Multi-row INSERTs of up to this many rows (the common writes) stay prepared on their
/// connection; longer ones are prepared for one use, so that they do not crowd the statement
/// cache (one entry per row count).
const PREPARED_ROWS_MAX: usize = 16;

const APP_COLUMNS: &str =
    "id, name, created_at, secrets_version, deployed_version, crash_window_ms, release_version";

/// The columns [`token_from_row`] reads, as one literal for the constants below.
macro_rules! token_select {
    () => {
        "SELECT t.id, t.secret_hash, t.app_id, a.name AS app_name, t.action, \
         t.description, t.created_at, t.expires_at, t.revoked_at \
         FROM api_tokens t LEFT JOIN apps a ON a.id = t.app_id"
    };
}
const TOKEN_SELECT: &str = token_select!();
/// One token by ID: on every request's path (the token check), so not formatted per call.
const TOKEN_BY_ID: &str = concat!(token_select!(), " WHERE t.id = $1");

/// The app named `$1` with the kept listings of its current and deployed versions (the
/// deployed one only when it differs from the current one, which it usually does not).
/// Built once: it is read on every list and every write.
static APP_WITH_LISTING: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {}, cur.listing AS current_listing, dep.listing AS deployed_listing \
         FROM apps a \
         LEFT JOIN secret_versions cur ON cur.app_id = a.id AND cur.version = a.secrets_version \
         LEFT JOIN secret_versions dep ON dep.app_id = a.id AND dep.version = a.deployed_version \
         AND a.deployed_version <> a.secrets_version \
         WHERE a.name = $1",
        prefixed_app_columns("a"),
    )
});

impl Store {
    /// Connects and applies the migrations this build knows (idempotent; serialized across
    /// processes). A SQLite file is created (mode 0600) only with [`OpenMode::CreateIfMissing`].
    pub async fn open(url: &DatabaseUrl, mode: OpenMode) -> Result<Store> {
        let pools = engine::connect(url, mode).await?;
        let engine = url.engine();
        let group_commit = match &pools.sqlite_path {
            Some(path) => match GroupCommit::start(path) {
                Ok(writer) => Some(writer),
                Err(e) => {
                    pools.write.close().await;
                    pools.read.close().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let store = Store {
            engine,
            group_commit,
            hot: Arc::new(match pools.sqlite_path {
                Some(path) => HotReads::Sqlite(SqliteReads::new(path)),
                None => {
                    HotReads::Pooled(Readers::new(engine, pools.read_options, pools.hot_readers))
                }
            }),
            read: pools.read,
            write: pools.write,
        };
        if let Err(e) = store.migrate().await {
            store.close().await;
            return Err(e);
        }
        if engine == Engine::Sqlite {
            // From now on every write goes through the writer thread (`group_commit`); sqlx's
            // write connection was only for the migrations.
            store.write.close().await;
        }
        tracing::debug!(database = %url, "store open");
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// A round trip to the database on both read paths (the pool, and the connections of the
    /// reads on every request's path), for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        self.hot_read("SELECT CAST($1 AS TEXT) AS ok", args!["ok"], |row| {
            row.text("ok")
        })
        .await?;
        Ok(())
    }

    /// Waits for the connections in use to be returned, then closes them all.
    pub async fn close(&self) {
        match &*self.hot {
            HotReads::Sqlite(reads) => reads.close(),
            HotReads::Pooled(readers) => readers.close().await,
        }
        if let Some(writer) = &self.group_commit {
            writer.close().await;
        }
        self.write.close().await;
        self.read.close().await;
    }

    /// One read on a request's path: `sql`, whose parameters `$n` are bound to `args[n - 1]`,
    /// with every row mapped by `map`.
    pub(crate) async fn hot_read<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        mut map: impl FnMut(&dyn StoreRow) -> Result<T>,
    ) -> Result<Vec<T>> {
        match &*self.hot {
            HotReads::Sqlite(reads) => match reads.read(sql, args, &mut map)? {
                Ok(rows) => Ok(rows),
                // Busy (recovery, another process's exclusive lock): wait on the pool's threads.
                Err(crate::sqlite_reads::Busy) => {
                    let rows = sqlx_query(sql, args).fetch_all(&self.read).await?;
                    rows.iter().map(|row| map(row)).collect()
                }
            },
            HotReads::Pooled(readers) => {
                let mut reader = readers.get().await?;
                let rows = sqlx_query(sql, args).fetch_all(reader.conn()).await?;
                reader.done();
                rows.iter().map(|row| map(row)).collect()
            }
        }
    }

    /// A [`hot_read`](Store::hot_read) of one record by its key: the first row, or
    /// `NotFound(what)`.
    pub(crate) async fn hot_read_one<T>(
        &self,
        sql: &str,
        args: &[Arg<'_>],
        what: &'static str,
        map: impl FnMut(&dyn StoreRow) -> Result<T>,
    ) -> Result<T> {
        let rows = self.hot_read(sql, args, map).await?;
        rows.into_iter().next().ok_or(StoreError::NotFound(what))
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match engine::begin_write(self.engine) {
            Some(begin) => self.write.begin_with(begin).await?,
            None => self.write.begin().await?,
        })
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        match migrate_in(self.engine, &mut tx, i64::MAX).await {
            Ok(()) => Ok(tx.commit().await?),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// Applies the migrations after the database's schema version, up to version `upto` (tests
/// stop early, to write what an older coffer wrote).
pub(crate) async fn migrate_in(engine: Engine, tx: &mut AnyConnection, upto: i64) -> Result<()> {
    if let Some(lock) = engine::migration_lock(engine) {
        sqlx::query(lock).execute(&mut *tx).await?;
    }
    sqlx::query("CREATE TABLE IF NOT EXISTS coffer_schema (version BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM coffer_schema")
        .fetch_one(&mut *tx)
        .await?;
    let current = current.unwrap_or(0);
    let migrations = engine::migrations(engine);
    let known = migrations.last().map_or(0, |m| m.version);
    if current > known {
        return Err(StoreError::Corrupt(format!(
            "the database schema is at version {current}, newer than this coffer knows \
                 ({known}); upgrade coffer"
        )));
    }
    for m in migrations
        .iter()
        .filter(|m| m.version > current && m.version <= upto)
    {
        // A plain `&str` runs unprepared, so a file of several statements is fine on both
        // engines. (`sqlx::raw_sql` would do the same, but its future is not `Send` for
        // every lifetime, which makes `Store::open` unusable in `tokio::spawn`.)
        tx.execute(m.sql).await?;
        sqlx::query("INSERT INTO coffer_schema (version) VALUES ($1)")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tracing::info!(engine = %engine, version = m.version, "applied schema migration");
    }
    Ok(())
}

impl Store {
    // ---------------------------------------------------------------------------------- apps

    /// Creates an app at secrets version 0. `Conflict` if the name is taken.
    pub async fn create_app(&self, id: &str, name: &AppName) -> Result<AppRecord> {
        let (id, name) = (id.to_string(), name.clone());
        let sql = format!(
            "INSERT INTO apps (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING RETURNING {APP_COLUMNS}"
        );
        if self.engine == Engine::Postgres {
            let write = self.clone();
            let (new_id, new_name) = (id.clone(), name.clone());
            let created = alone_on_postgres(async move {
                let args = args![&new_id, new_name.as_str(), crate::now_micros()];
                let row = sqlx_query(&sql, args)
                    .persistent(true)
                    .fetch_optional(&write.write)
                    .await?;
                row.map(|row| app_from_row(&row)).transpose()
            })
            .await;
            return match created {
                Ok(Some(app)) => Ok(app),
                Ok(None) => Err(StoreError::Conflict(format!("app {name} already exists"))),
                Err(e) if e.is_unique_violation() => {
                    Err(StoreError::Conflict(format!("app ID {id} already exists")))
                }
                Err(e) => Err(e),
            };
        }
        self.write_tx(move |tx| {
            let created = tx
                .fetch_optional(
                    &sql,
                    args![&id, name.as_str(), crate::now_micros()],
                    app_from_row,
                )
                .map_err(|e| {
                    if e.is_unique_violation() {
                        BodyError::Refused(StoreError::Conflict(format!(
                            "app ID {id} already exists"
                        )))
                    } else {
                        BodyError::Failed(e)
                    }
                })?;
            created.ok_or_else(|| {
                BodyError::Refused(StoreError::Conflict(format!("app {name} already exists")))
            })
        })
        .await
    }

    pub async fn app_by_name(&self, name: &AppName) -> Result<AppRecord> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE name = $1");
        self.hot_read_one(&sql, args![name.as_str()], "app", app_from_row)
            .await
    }

    pub async fn app_by_id(&self, id: &str) -> Result<AppRecord> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1");
        self.hot_read_one(&sql, args![id], "app", app_from_row)
            .await
    }

    /// All apps, ordered by name.
    pub async fn list_apps(&self) -> Result<Vec<AppRecord>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM apps");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        let mut apps = rows
            .iter()
            .map(|row| app_from_row(row))
            .collect::<Result<Vec<_>>>()?;
        apps.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(apps)
    }

    /// Deletes the app with its versions, values and app-scoped tokens, and tells the hosts
    /// that ran its machines (generation bump), so that their agents stop the workloads at
    /// once rather than at their long-poll's deadline. The vault's keys for it are the
    /// vault's to delete.
    pub async fn delete_app(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            // The hosts first, while the app's machines still name them (the cascade below
            // removes them), and in the order of the writes that change a machine (host, then
            // machine: `set_machine_version`, `set_machine_desired`), so that a release or a
            // stop of one of the app's machines cannot deadlock with this on PostgreSQL. An
            // app that does not exist has no machines: nothing is changed before the refusal
            // below.
            tx.execute(
                "UPDATE hosts SET generation = generation + 1 \
                 WHERE id IN (SELECT host_id FROM machines WHERE app_id = $1)",
                args![&id],
            )
            .map_err(BodyError::before_changes)?;
            // Then the app's row: on PostgreSQL that waits for a write of the app still under
            // way, whose values the delete below then sees. Versions, tokens, machines and
            // releases go with it by foreign-key cascade; values have no foreign key on
            // PostgreSQL (schema v5: checking them row by row was a large part of a write's
            // time), so they are deleted here, on both engines alike.
            let deleted = tx
                .execute("DELETE FROM apps WHERE id = $1", args![&id])
                .map_err(BodyError::Failed)?;
            found_if(deleted > 0, "app")?;
            tx.execute("DELETE FROM secret_values WHERE app_id = $1", args![&id])
                .map_err(BodyError::Failed)?;
            Ok(())
        })
        .await
    }

    pub async fn set_crash_window(&self, id: &str, ms: i64) -> Result<()> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE apps SET crash_window_ms = $1 WHERE id = $2",
                    args![ms, &id],
                )
                .map_err(BodyError::before_changes)?;
            found_if(updated > 0, "app")
        })
        .await
    }

    // ------------------------------------------------------------------------------- secrets

    /// The secrets of one version, ordered by name. Version 0 (before the first write) is
    /// empty.
    pub async fn snapshot(&self, app_id: &str, version: i64) -> Result<Vec<StoredSecret>> {
        if version == 0 {
            return Ok(Vec::new());
        }
        if version < 0 {
            return Err(StoreError::NotFound("secrets version"));
        }
        // On the path of every boot grant. The version's kept listing names the value of each
        // of its secrets; each is read by its key. A value the listing names but the store
        // lacks is corruption, never a smaller snapshot.
        let mut secrets = self
            .hot_read(snapshot_sql(self.engine), args![app_id, version], |row| {
                let name = secret_name(row.text("name")?)?;
                let value_version = row.int("value_version")?;
                let Some(ciphertext) = row.bytes_opt("ciphertext")? else {
                    return Err(StoreError::Corrupt(format!(
                        "secrets version {version} names value {value_version} of {name}, \
                         which is not stored"
                    )));
                };
                Ok(StoredSecret {
                    name,
                    value_version,
                    ciphertext,
                    digest: row.text("digest")?,
                    value_len: row.int("value_len")?,
                    created_at: row.int("created_at")?,
                    updated_at: row.int("updated_at")?,
                })
            })
            .await?;
        // A version may be empty (everything unset): tell that apart from a missing one.
        if secrets.is_empty() && !self.version_exists(app_id, version).await? {
            return Err(StoreError::NotFound("secrets version"));
        }
        secrets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(secrets)
    }

    /// What `secrets list` shows of one version, without reading any ciphertext: each name's
    /// digest, length and dates, and whether the value is also the one in `deployed_version`.
    /// One statement: the kept listings of both versions.
    pub async fn listing(
        &self,
        app_id: &str,
        version: i64,
        deployed_version: i64,
    ) -> Result<Vec<ListedSecret>> {
        if version == 0 {
            return Ok(Vec::new());
        }
        if version < 0 {
            return Err(StoreError::NotFound("secrets version"));
        }
        let rows = self
            .hot_read(
                "SELECT version, listing FROM secret_versions \
                 WHERE app_id = $1 AND version IN ($2, $3)",
                args![app_id, version, deployed_version],
                |row| Ok((row.int("version")?, row.text_opt("listing")?)),
            )
            .await?;
        let listing_of = |wanted: i64| rows.iter().find(|(v, _)| *v == wanted).map(|(_, l)| l);
        let current = listing_of(version).ok_or(StoreError::NotFound("secrets version"))?;
        let current = kept_listing(current.as_deref(), version)?;
        // As `app_with_listing`: a deployed version above 0 whose row is missing is corrupt.
        let deployed = if deployed_version == version {
            None
        } else if deployed_version == 0 {
            Some(HashMap::new())
        } else {
            let listing = listing_of(deployed_version).and_then(|l| l.as_deref());
            Some(listing_members(kept_listing(listing, deployed_version)?)?)
        };
        listed_secrets(current, deployed.as_ref())
    }

    /// [`Store::app_with_listing`], as what a write is computed against ([`NewVersion::base`]).
    pub async fn base_read(&self, name: &AppName) -> Result<crate::BaseRead> {
        let (app, listing) = self.app_with_listing(name).await?;
        Ok(crate::BaseRead { app, listing })
    }

    /// The app named `name` and what `secrets list` shows of its current version (as
    /// [`Store::listing`] with the app's own versions): the hot path of `secrets list` and of
    /// every write. One statement reads the app and the kept listings of its current and
    /// deployed versions (`secret_versions.listing`).
    pub async fn app_with_listing(&self, name: &AppName) -> Result<(AppRecord, Vec<ListedSecret>)> {
        let row = self
            .hot_read(&APP_WITH_LISTING, args![name.as_str()], |row| {
                Ok((
                    app_from_row(row)?,
                    row.text_opt("current_listing")?,
                    row.text_opt("deployed_listing")?,
                ))
            })
            .await?
            .pop();
        let (app, current, deployed) = row.ok_or(StoreError::NotFound("app"))?;
        if app.secrets_version == 0 {
            return Ok((app, Vec::new()));
        }
        // Which value of each name the machines run: `None` when they run the listed version.
        let deployed: Option<HashMap<String, i64>> = if app.deployed_version == app.secrets_version
        {
            None
        } else if app.deployed_version == 0 {
            Some(HashMap::new())
        } else {
            Some(listing_members(kept_listing(
                deployed.as_deref(),
                app.deployed_version,
            )?)?)
        };
        let current = kept_listing(current.as_deref(), app.secrets_version)?;
        Ok((app, listed_secrets(current, deployed.as_ref())?))
    }

    /// Whether the version exists (a snapshot without rows is an empty version only if it
    /// does). A version without its listing is corrupt: its members are unknown.
    async fn version_exists(&self, app_id: &str, version: i64) -> Result<bool> {
        let row = sqlx::query(
            "SELECT CASE WHEN listing IS NULL THEN 0 ELSE 1 END AS listed \
             FROM secret_versions WHERE app_id = $1 AND version = $2",
        )
        .bind(app_id)
        .bind(version)
        .fetch_optional(&self.read)
        .await?;
        match row {
            None => Ok(false),
            Some(row) if row.try_get::<i64, _>("listed")? == 1 => Ok(true),
            Some(_) => kept_listing(None, version).map(|_| true),
        }
    }

    /// Writes the next secrets version in one transaction, or nothing at all.
    ///
    /// `Conflict` if the app is no longer at `v.base_version` (someone else wrote meanwhile:
    /// recompute and retry), if `v.version` is not `base_version + 1`, if a name is changed
    /// twice, or if an unset name is not in the base version. `NotFound("app")` if the app is
    /// gone. Returns the new version.
    pub async fn write_version(&self, mut v: NewVersion) -> Result<WriteOutcome> {
        if v.base_version.checked_add(1) != Some(v.version) || v.base_version < 0 {
            return Err(StoreError::Conflict(format!(
                "secrets version {} cannot follow version {}",
                v.version, v.base_version
            )));
        }
        let mut seen = HashSet::new();
        for name in v.sets.iter().map(|s| &s.name).chain(&v.unsets) {
            if !seen.insert(name) {
                return Err(StoreError::Conflict(format!(
                    "{name} is changed twice in one write"
                )));
            }
        }
        let mut changes: Vec<ChangeRecord> = v
            .sets
            .iter()
            .map(|s| ChangeRecord {
                name: s.name.as_str().to_string(),
                kind: ChangeKind::Set,
                digest: Some(s.digest.clone()),
            })
            .collect();
        changes.extend(v.unsets.iter().map(|n| ChangeRecord {
            name: n.as_str().to_string(),
            kind: ChangeKind::Unset,
            digest: None,
        }));
        let changes = serde_json::to_string(&changes)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the changes: {e}")))?;

        let base_read = v.base.take();
        if let Some(read) = &base_read {
            if (read.app.id.as_str(), read.app.secrets_version) != (&v.app_id, v.base_version) {
                return Err(StoreError::Conflict(format!(
                    "the write was computed against version {} of app {}, not version {} of {}",
                    read.app.secrets_version, read.app.id, v.base_version, v.app_id
                )));
            }
        }
        let base_given = match (self.engine, base_read) {
            (Engine::Postgres, Some(read)) => {
                // On a task of its own, as every write transaction here: once started it runs
                // to the end even if the caller stops waiting, so its outcome is never half
                // known to this process.
                let store = self.clone();
                return alone_on_postgres(async move {
                    store
                        .write_version_in_one_statement(&v, read, &changes)
                        .await
                })
                .await;
            }
            (_, read) => read.map(|read| base_members_from(read.listing)),
        };
        self.write_tx(move |tx| {
            let release = write_version_body(tx, &v, base_given.as_ref(), &changes)?;
            Ok(WriteOutcome {
                version: v.version,
                release,
            })
        })
        .await
    }

    /// [`Store::write_version`] on PostgreSQL when the caller read the base: one statement
    /// ([`WRITE_VERSION_STATEMENT`], or [`WRITE_VERSION_WITH_RELEASE_STATEMENT`]) in
    /// PostgreSQL's implicit transaction. One round trip, where the transaction of
    /// [`write_version_body`] takes seven without a release and eleven with one, and each
    /// round trip cost PostgreSQL more CPU than the statement's own work (BENCHMARKS.md,
    /// *coffer on PostgreSQL*). The same rows and refusals as `write_version_body`: the
    /// conformance suite compares the two.
    async fn write_version_in_one_statement(
        &self,
        v: &NewVersion,
        read: crate::BaseRead,
        changes: &str,
    ) -> Result<WriteOutcome> {
        let base_members = base_members_from(read.listing);
        check_unsets(v, &base_members)?;
        let now = crate::now_micros();
        let entries = new_entries(&base_members, v, now);
        let listing = listing_json(&entries);
        let values = values_json(v, &entries);
        let common = args![
            v.version,
            &v.app_id,
            v.base_version,
            i64::from(v.deploy),
            &v.actor,
            now,
            changes,
            &listing,
            &values
        ];
        let written = match &v.release {
            None => sqlx_query(WRITE_VERSION_STATEMENT, common)
                .persistent(true)
                .fetch_optional(&self.write)
                .await?
                .map(|_| None),
            Some(r) => {
                let release = args![
                    read.app.deployed_version,
                    read.app.release_version,
                    &r.description,
                    &r.actor,
                    &r.owner,
                    crate::releases::lease_end(now)
                ];
                let args: Vec<Arg<'_>> = common.iter().chain(release).copied().collect();
                let row = sqlx_query(WRITE_VERSION_WITH_RELEASE_STATEMENT, &args)
                    .persistent(true)
                    .fetch_optional(&self.write)
                    .await
                    .map_err(StoreError::from);
                match row {
                    Ok(row) => row
                        .map(|row| crate::releases::release_from_row(&row).map(Some))
                        .transpose()?,
                    // Another replica's release started between the check and the insert.
                    Err(e) if e.is_violation_of("releases_one_running") => {
                        return Err(StoreError::Conflict(
                            crate::releases::RELEASE_RUNNING.into(),
                        ))
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if let Some(release) = written {
            return Ok(WriteOutcome {
                version: v.version,
                release,
            });
        }
        // Nothing was written: say why, in the order the transaction checks.
        let now_at = sqlx::query(
            "SELECT a.secrets_version, CASE WHEN EXISTS (SELECT 1 FROM releases r \
             WHERE r.app_id = a.id AND r.status = 'running') THEN 1 ELSE 0 END AS running \
             FROM apps a WHERE a.id = $1",
        )
        .bind(&v.app_id)
        .fetch_optional(&self.read)
        .await?;
        let Some(now_at) = now_at else {
            return Err(StoreError::NotFound("app"));
        };
        if v.release.is_some() && now_at.try_get::<i64, _>("running")? == 1 {
            return Err(StoreError::Conflict(
                crate::releases::RELEASE_RUNNING.into(),
            ));
        }
        let secrets_version = now_at.try_get::<i64, _>("secrets_version")?;
        Err(StoreError::Conflict(if secrets_version == v.base_version {
            // Only what runs moved (a release rolled back, a deploy): what the release would
            // record as before it is no longer what was read.
            "the app's deployed secrets changed meanwhile; retry".into()
        } else {
            format!("the app's secrets changed meanwhile (now at version {secrets_version}); retry")
        }))
    }

    /// Runs the statements of one write transaction: on SQLite through group commit (with the
    /// writes waiting beside it, see `group_commit`), on PostgreSQL in a transaction of its own
    /// (see `write_tx`). `op` may run more than once on SQLite (group commit redoes a group
    /// when one of its writes fails); only its last run is committed.
    pub(crate) async fn write_tx<T: Send + 'static>(
        &self,
        mut op: impl FnMut(&mut dyn WriteTx) -> Result<T, BodyError> + Send + 'static,
    ) -> Result<T> {
        match &self.group_commit {
            Some(writer) => {
                let op: WriteOp = Box::new(move |tx| Ok(Box::new(op(tx)?) as Outcome));
                let outcome = writer.run(op).await?;
                Ok(*outcome
                    .downcast::<T>()
                    .expect("a write returns the type its caller expects"))
            }
            None => {
                crate::write_tx::run_pooled(self.engine, &self.write, move |tx| {
                    op(tx).map_err(StoreError::from)
                })
                .await
            }
        }
    }

    /// Records that `version` is what the app's machines run. `Conflict` if that version does
    /// not exist (yet).
    pub async fn mark_deployed(&self, app_id: &str, version: i64) -> Result<()> {
        if version < 0 {
            return Err(StoreError::Conflict(format!(
                "secrets version {version} does not exist"
            )));
        }
        let app_id = app_id.to_string();
        self.write_tx(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE apps SET deployed_version = $1 WHERE id = $2 AND secrets_version >= $1",
                    args![version, &app_id],
                )
                .map_err(BodyError::before_changes)?;
            if updated > 0 {
                return Ok(());
            }
            let at = secrets_version_in(tx, &app_id).map_err(BodyError::before_changes)?;
            Err(BodyError::Refused(match at {
                None => StoreError::NotFound("app"),
                Some(at) => StoreError::Conflict(format!(
                    "secrets version {version} does not exist (the app is at version {at})"
                )),
            }))
        })
        .await
    }

    /// The app's secrets versions, newest first.
    pub async fn versions(&self, app_id: &str) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(
            "SELECT version, actor, created_at, changes FROM secret_versions \
             WHERE app_id = $1 ORDER BY version DESC",
        )
        .bind(app_id)
        .fetch_all(&self.read)
        .await?;
        if rows.is_empty() {
            // No versions yet, or no such app.
            self.app_by_id(app_id).await?;
        }
        rows.iter()
            .map(|row| {
                let changes: String = row.try_get("changes")?;
                Ok(VersionRecord {
                    version: row.try_get("version")?,
                    actor: row.try_get("actor")?,
                    created_at: row.try_get("created_at")?,
                    changes: serde_json::from_str(&changes).map_err(|e| {
                        StoreError::Corrupt(format!("changes of a secrets version: {e}"))
                    })?,
                })
            })
            .collect()
    }

    // ---------------------------------------------------------------------------- API tokens

    /// `Conflict` if the ID is taken, `NotFound("app")` if the token's app does not exist.
    pub async fn insert_token(&self, t: NewToken) -> Result<TokenRecord> {
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO api_tokens \
                 (id, secret_hash, app_id, action, description, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![
                    &t.id,
                    &t.secret_hash,
                    t.app_id.as_deref(),
                    t.action.as_str(),
                    &t.description,
                    crate::now_micros(),
                    t.expires_at
                ],
            )
            .map_err(|e| {
                BodyError::before_changes(if e.is_unique_violation() {
                    StoreError::Conflict(format!("token ID {} already exists", t.id))
                } else if e.is_foreign_key_violation() {
                    StoreError::NotFound("app")
                } else {
                    e
                })
            })?;
            tx.fetch_optional(TOKEN_BY_ID, args![&t.id], token_from_row)
                .and_then(|token| token.ok_or(StoreError::NotFound("token")))
                .map_err(BodyError::Failed)
        })
        .await
    }

    pub async fn token(&self, id: &str) -> Result<TokenRecord> {
        self.hot_read_one(TOKEN_BY_ID, args![id], "token", token_from_row)
            .await
    }

    /// All tokens, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let sql = format!("{TOKEN_SELECT} ORDER BY t.created_at, t.id");
        let rows = sqlx::query(&sql).fetch_all(&self.read).await?;
        rows.iter().map(|row| token_from_row(row)).collect()
    }

    /// Revokes a token from now on. Revoking it again keeps the first revocation time.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.write_tx(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                    args![crate::now_micros(), &id],
                )
                .map_err(BodyError::before_changes)?;
            found_if(updated > 0, "token")
        })
        .await
    }

    // ---------------------------------------------------------------------------- vault keys

    /// `Conflict` if the app already has keys: they are never replaced silently.
    pub async fn insert_app_key(&self, k: &AppKeyRecord) -> Result<()> {
        const INSERT: &str = "INSERT INTO vault_app_keys \
            (app_id, public_key, wrapped_private_key, wrapped_digest_key, created_at) \
            VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id) DO NOTHING";
        let k = k.clone();
        let app_id = k.app_id.clone();
        let inserted = if self.engine == Engine::Postgres {
            let write = self.clone();
            alone_on_postgres(async move {
                let done = sqlx_query(INSERT, &app_key_args(&k))
                    .persistent(true)
                    .execute(&write.write)
                    .await?;
                Ok(done.rows_affected())
            })
            .await?
        } else {
            self.write_tx(move |tx| {
                tx.execute(INSERT, &app_key_args(&k))
                    .map_err(BodyError::Failed)
            })
            .await?
        };
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "the app {app_id} already has keys"
            )));
        }
        Ok(())
    }

    pub async fn app_key(&self, app_id: &str) -> Result<AppKeyRecord> {
        // On the path of every app's creation and of the vault's first decrypt for an app.
        self.hot_read(
            "SELECT app_id, public_key, wrapped_private_key, wrapped_digest_key, created_at \
             FROM vault_app_keys WHERE app_id = $1",
            args![app_id],
            |row| {
                Ok(AppKeyRecord {
                    app_id: row.text("app_id")?,
                    public_key: row.bytes("public_key")?,
                    wrapped_private_key: row.bytes("wrapped_private_key")?,
                    wrapped_digest_key: row.bytes("wrapped_digest_key")?,
                    created_at: row.int("created_at")?,
                })
            },
        )
        .await?
        .pop()
        .ok_or(StoreError::NotFound("app key"))
    }

    /// Idempotent.
    pub async fn delete_app_key(&self, app_id: &str) -> Result<()> {
        let app_id = app_id.to_string();
        self.write_tx(move |tx| {
            tx.execute(
                "DELETE FROM vault_app_keys WHERE app_id = $1",
                args![&app_id],
            )
            .map_err(BodyError::before_changes)?;
            Ok(())
        })
        .await
    }

    // ---------------------------------------------------------------------------------- meta

    pub async fn meta_get(&self, key: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.read)
            .await?)
    }

    /// Stores `value` unless the key has one; returns the value stored, so that replicas
    /// starting together agree on the first one written.
    pub async fn meta_set_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write_tx(move |tx| {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                args![&key, &value],
            )
            .map_err(BodyError::before_changes)?;
            tx.fetch_optional(
                "SELECT value FROM meta WHERE key = $1",
                args![&key],
                |row| row.text("value"),
            )
            .and_then(|stored| stored.ok_or(StoreError::NotFound("meta key")))
            .map_err(BodyError::Failed)
        })
        .await
    }
}

/// Why the statements of one write failed, and whether they left anything in the
/// transaction.
pub(crate) enum BodyError {
    /// Refused before anything was written: the transaction can go on with other writes.
    Refused(StoreError),
    /// Failed after writing: the transaction must be rolled back.
    Failed(StoreError),
}

impl BodyError {
    /// An error met before the write changed anything (or from its one statement, which
    /// SQLite and PostgreSQL undo as a whole): a refusal, unless the database failed.
    pub(crate) fn before_changes(e: StoreError) -> BodyError {
        if e.is_backend() {
            BodyError::Failed(e)
        } else {
            BodyError::Refused(e)
        }
    }
}

/// `Ok` if the statement found its row, else a refusal: `NotFound(what)`.
pub(crate) fn found_if(found: bool, what: &'static str) -> Result<(), BodyError> {
    if found {
        Ok(())
    } else {
        Err(BodyError::Refused(StoreError::NotFound(what)))
    }
}

impl From<BodyError> for StoreError {
    fn from(e: BodyError) -> StoreError {
        match e {
            BodyError::Refused(e) | BodyError::Failed(e) => e,
        }
    }
}

/// The statements of one [`Store::write_version`], inside the caller's write transaction.
/// Every check that can refuse the write runs before its first change, so that a refused
/// write leaves the transaction as it found it (group commit relies on it). Returns the
/// release it started, if any.
pub(crate) fn write_version_body(
    tx: &mut dyn WriteTx,
    v: &NewVersion,
    base_given: Option<&BaseMembers>,
    changes: &str,
) -> Result<Option<crate::ReleaseRecord>, BodyError> {
    let now = crate::now_micros();
    // A refusal changes nothing; a database error may have (SQLite can roll the whole
    // transaction back by itself on I/O errors), so it fails the group.
    let checked = check_version(tx, v, base_given).map_err(BodyError::before_changes)?;
    apply_version(tx, v, checked, changes, now).map_err(BodyError::Failed)
}

/// A version's secrets, by name.
pub(crate) type BaseMembers = HashMap<String, ListingEntry>;

/// The caller's listing of a version ([`NewVersion::base`]), by name.
fn base_members_from(listing: Vec<ListedSecret>) -> BaseMembers {
    listing
        .into_iter()
        .map(|s| {
            let name = s.name.as_str().to_string();
            let entry = ListingEntry {
                name: name.clone(),
                value_version: s.value_version,
                digest: s.digest,
                value_len: s.value_len,
                created_at: s.created_at,
                updated_at: s.updated_at,
            };
            (name, entry)
        })
        .collect()
}

/// `Conflict` if the write unsets a name its base does not have.
fn check_unsets(v: &NewVersion, base_members: &BaseMembers) -> Result<()> {
    for name in &v.unsets {
        if !base_members.contains_key(name.as_str()) {
            return Err(StoreError::Conflict(format!(
                "cannot unset {name}: it is not set in version {}",
                v.base_version
            )));
        }
    }
    Ok(())
}

/// The secrets of the version `v` writes: each of its base's that `v` does not change, plus
/// each it sets (a name keeps its creation time across values).
fn new_entries(base_members: &BaseMembers, v: &NewVersion, now: Micros) -> Vec<ListingEntry> {
    let changed: HashSet<&str> = v
        .sets
        .iter()
        .map(|s| s.name.as_str())
        .chain(v.unsets.iter().map(SecretName::as_str))
        .collect();
    base_members
        .values()
        .filter(|e| !changed.contains(e.name.as_str()))
        .cloned()
        .chain(v.sets.iter().map(|set| {
            ListingEntry {
                name: set.name.as_str().to_string(),
                value_version: v.version,
                digest: set.digest.clone(),
                value_len: set.value_len,
                created_at: base_members
                    .get(set.name.as_str())
                    .map_or(now, |e| e.created_at),
                updated_at: now,
            }
        }))
        .collect()
}

/// The app's newest secrets version; `None` if there is no such app.
pub(crate) fn secrets_version_in(tx: &mut dyn WriteTx, app_id: &str) -> Result<Option<i64>> {
    tx.fetch_optional(
        "SELECT secrets_version FROM apps WHERE id = $1",
        args![app_id],
        |row| row.int("secrets_version"),
    )
}

/// One secret of a version as `secrets list` shows it: an element of the JSON array kept in
/// `secret_versions.listing` (short keys: it is repeated for every secret of every version).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ListingEntry {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "v")]
    pub value_version: i64,
    #[serde(rename = "d")]
    pub digest: String,
    #[serde(rename = "l")]
    pub value_len: i64,
    #[serde(rename = "c")]
    pub created_at: Micros,
    #[serde(rename = "u")]
    pub updated_at: Micros,
}

/// A version's secrets, by name: from the listing kept with the version (the record of which
/// value of each name it holds since schema v7), written with the version and never changed.
/// Empty for a version that does not exist (the caller's check of the app's version then
/// refuses the write).
pub(crate) fn version_entries(
    tx: &mut dyn WriteTx,
    app_id: &str,
    version: i64,
) -> Result<HashMap<String, ListingEntry>> {
    if version == 0 {
        return Ok(HashMap::new());
    }
    let kept = tx.fetch_optional(
        "SELECT listing FROM secret_versions WHERE app_id = $1 AND version = $2",
        args![app_id, version],
        |row| row.text_opt("listing"),
    )?;
    match kept {
        Some(listing) => Ok(parse_listing(kept_listing(listing.as_deref(), version)?)?
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()),
        None => Ok(HashMap::new()),
    }
}

/// The `listing` column of a version with these secrets: sorted by name, so that equal
/// versions have equal listings. (The listings schema v7 derived for versions written before
/// v4 are sorted too, but spaced as the database writes JSON.)
pub(crate) fn listing_json<'a>(entries: impl IntoIterator<Item = &'a ListingEntry>) -> String {
    let mut entries: Vec<&ListingEntry> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    serde_json::to_string(&entries).expect("a listing serializes")
}

/// What [`check_version`] read, for [`apply_version`].
struct CheckedVersion<'b> {
    /// The base snapshot, by name: the caller's, or read in the transaction.
    base_members: Cow<'b, BaseMembers>,
    /// With a release: what the machines ran before it (deployed secrets version, release).
    before: Option<(i64, i64)>,
}

/// Reads, checks, and finally moves the app's version (the one statement that can refuse the
/// write and changes nothing when it does).
fn check_version<'b>(
    tx: &mut dyn WriteTx,
    v: &NewVersion,
    base_given: Option<&'b BaseMembers>,
) -> Result<CheckedVersion<'b>> {
    // The base version is immutable, so it can be read before the app's row is locked.
    let base_members = match base_given {
        Some(given) => Cow::Borrowed(given),
        None => Cow::Owned(version_entries(tx, &v.app_id, v.base_version)?),
    };
    check_unsets(v, &base_members)?;

    // Read before the write moves `deployed_version`: the release records what the machines
    // ran before it. The unique index on running releases is the guarantee; this check only
    // refuses early, before anything is written.
    let before = match &v.release {
        Some(_) => {
            let running = tx.fetch_optional(
                "SELECT 1 AS running FROM releases WHERE app_id = $1 AND status = 'running' LIMIT 1",
                args![&v.app_id],
                |_| Ok(()),
            )?;
            if running.is_some() {
                return Err(StoreError::Conflict(
                    crate::releases::RELEASE_RUNNING.into(),
                ));
            }
            Some(crate::releases::deployed_in(tx, &v.app_id)?)
        }
        None => None,
    };

    // Concurrent writers of one app serialize on its row (PostgreSQL) and the loser sees the
    // new version and fails. Zero rows moved: nothing was written.
    let moved = if v.deploy {
        tx.execute(
            "UPDATE apps SET secrets_version = $1, deployed_version = $1 \
             WHERE id = $2 AND secrets_version = $3",
            args![v.version, &v.app_id, v.base_version],
        )?
    } else {
        tx.execute(
            "UPDATE apps SET secrets_version = $1 WHERE id = $2 AND secrets_version = $3",
            args![v.version, &v.app_id, v.base_version],
        )?
    };
    if moved == 0 {
        let now_at = secrets_version_in(tx, &v.app_id)?;
        return Err(match now_at {
            None => StoreError::NotFound("app"),
            Some(n) => StoreError::Conflict(format!(
                "the app's secrets changed meanwhile (now at version {n}); retry"
            )),
        });
    }
    Ok(CheckedVersion {
        base_members,
        before,
    })
}

/// The writes of one version, after [`check_version`] moved the app to it.
fn apply_version(
    tx: &mut dyn WriteTx,
    v: &NewVersion,
    checked: CheckedVersion<'_>,
    changes: &str,
    now: Micros,
) -> Result<Option<crate::ReleaseRecord>> {
    let CheckedVersion {
        base_members,
        before,
    } = checked;
    let entries = new_entries(&base_members, v, now);
    tx.execute(
        "INSERT INTO secret_versions (app_id, version, actor, created_at, changes, listing) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            &v.app_id,
            v.version,
            &v.actor,
            now,
            changes,
            &listing_json(&entries)
        ],
    )?;

    // The new values; the listing above names each of the version's values.
    let by_name: HashMap<&str, &ListingEntry> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for chunk in v.sets.chunks(ROWS_PER_INSERT) {
        insert_values(tx, v, chunk, &by_name)?;
    }
    match (&v.release, before) {
        (Some(r), Some(before)) => Ok(Some(crate::releases::insert_release_in(
            tx, &v.app_id, v.version, before, r, now,
        )?)),
        _ => Ok(None),
    }
}

/// The rows of a new version, for PostgreSQL's one-statement writes: the CTEs that follow
/// `moved` (the app, if it moved to version `$1`; see [`WRITE_VERSION_STATEMENT`]): the
/// version's row with its listing `$8` (which names each of its values) and its new values
/// (`$9`, from [`values_json`]). Each reads `moved`, so none inserts a row unless the app
/// moved. Data-modifying CTEs all run, on one snapshot, and commit or fail together.
macro_rules! version_rows_ctes {
    () => {
        "version_row AS ( \
            INSERT INTO secret_versions (app_id, version, actor, created_at, changes, listing) \
            SELECT id, $1, $5, $6, $7, $8 FROM moved \
        ), value_rows AS ( \
            INSERT INTO secret_values \
                (app_id, name, version, ciphertext, digest, value_len, created_at, updated_at) \
            SELECT moved.id, x.n, $1, decode(x.ct, 'hex'), x.d, x.l, x.c, x.u \
            FROM moved, json_to_recordset($9::json) \
                AS x(n text, ct text, d text, l bigint, c bigint, u bigint) \
        )"
    };
}

/// PostgreSQL: a write without a release as one statement (see
/// [`Store::write_version_in_one_statement`]). The app moves from version `$3` to `$1` (and
/// `deployed_version` with it if `$4` is 1), then [`version_rows_ctes`]. A row if it moved,
/// none if not. (SQLite has no data-modifying CTEs, and there a statement is a function call
/// anyway.)
const WRITE_VERSION_STATEMENT: &str = concat!(
    "WITH moved AS ( \
        UPDATE apps SET secrets_version = $1, \
            deployed_version = CASE WHEN $4 = 1 THEN $1 ELSE deployed_version END \
        WHERE id = $2 AND secrets_version = $3 RETURNING id \
    ), ",
    version_rows_ctes!(),
    " SELECT id FROM moved"
);

/// PostgreSQL: a write with a release as one statement. The app moves from version `$3` to
/// `$1`, deployed, with its next release version, only if no release of it is running and it
/// still has the deployed version `$10` and release version `$11` its writer read (what ran
/// before the release); then [`version_rows_ctes`] and the release: `running` under owner
/// `$14` until `$15` if the app has a machine (destroyed ones aside), else `complete` at once,
/// as `releases::insert_release_in` does. The release's row if the app moved, none if not.
/// `NOT EXISTS` sees the statement's snapshot only; a release started after it by another
/// replica bumped `release_version` under the app row's lock (every path that starts a release
/// does), so the re-check of `release_version = $11` once the lock is ours refuses the write.
/// The unique index of running releases is the backstop (`releases_one_running`).
const WRITE_VERSION_WITH_RELEASE_STATEMENT: &str = concat!(
    "WITH moved AS ( \
        UPDATE apps SET secrets_version = $1, \
            deployed_version = CASE WHEN $4 = 1 THEN $1 ELSE deployed_version END, \
            release_version = release_version + 1 \
        WHERE id = $2 AND secrets_version = $3 \
            AND deployed_version = $10 AND release_version = $11 \
            AND NOT EXISTS (SELECT 1 FROM releases WHERE app_id = $2 AND status = 'running') \
        RETURNING id, release_version \
    ), ",
    version_rows_ctes!(),
    ", live AS ( \
        SELECT EXISTS (SELECT 1 FROM machines WHERE app_id = $2 AND desired <> 'destroyed') \
            AS live \
    ) \
    INSERT INTO releases (app_id, version, secrets_version, previous_secrets_version, \
        previous_release_version, description, actor, status, reason, progress, created_at, \
        updated_at, owner, lease_until) \
    SELECT moved.id, moved.release_version, $1, $10, $11, $12, $13, \
        CASE WHEN live.live THEN 'running' ELSE 'complete' END, NULL, '', $6, $6, \
        CASE WHEN live.live THEN $14 END, CASE WHEN live.live THEN $15 ELSE 0 END \
    FROM moved, live \
    RETURNING app_id, version, secrets_version, previous_secrets_version, \
        previous_release_version, description, actor, status, reason, progress, created_at, \
        updated_at, owner, lease_until"
);

/// The values `v` sets, for [`version_rows_ctes`]: a JSON array of {n: name,
/// ct: the ciphertext in hex, d, l, c, u as in the version's listing `entries`}. Holds only
/// ciphertext, like the column it goes to.
fn values_json(v: &NewVersion, entries: &[ListingEntry]) -> String {
    #[derive(serde::Serialize)]
    struct ValueRow<'a> {
        n: &'a str,
        ct: String,
        d: &'a str,
        l: i64,
        c: Micros,
        u: Micros,
    }
    let by_name: HashMap<&str, &ListingEntry> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let rows: Vec<ValueRow<'_>> = v
        .sets
        .iter()
        .map(|set| {
            let entry = by_name[set.name.as_str()];
            ValueRow {
                n: set.name.as_str(),
                ct: hex::encode(&set.ciphertext),
                d: &set.digest,
                l: set.value_len,
                c: entry.created_at,
                u: entry.updated_at,
            }
        })
        .collect();
    serde_json::to_string(&rows).expect("values serialize")
}

/// Multi-row INSERTs of up to [`PREPARED_ROWS_MAX`] rows stay prepared.
fn prepare_for(rows: usize) -> Prepare {
    if rows <= PREPARED_ROWS_MAX {
        Prepare::Keep
    } else {
        Prepare::Once
    }
}

/// The rows of `values`, with the dates their entries in the version's listing have.
fn insert_values(
    tx: &mut dyn WriteTx,
    v: &NewVersion,
    values: &[NewValue],
    entries: &HashMap<&str, &ListingEntry>,
) -> Result<()> {
    let sql = multi_row_insert(
        "INSERT INTO secret_values \
         (app_id, name, version, ciphertext, digest, value_len, created_at, updated_at) VALUES ",
        8,
        values.len(),
    );
    let mut bound = Vec::with_capacity(values.len() * 8);
    for value in values {
        let entry = entries[value.name.as_str()];
        bound.extend_from_slice(args![
            &v.app_id,
            value.name.as_str(),
            v.version,
            &value.ciphertext,
            &value.digest,
            value.value_len,
            entry.created_at,
            entry.updated_at
        ]);
    }
    tx.execute_with(&sql, &bound, prepare_for(values.len()))?;
    Ok(())
}

/// `prefix ($1, $2), ($3, $4)`: placeholders numbered in order of appearance.
fn multi_row_insert(prefix: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::from(prefix);
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
    sql
}

/// `apps` columns as [`app_from_row`] reads them, from the table aliased `alias`.
fn prefixed_app_columns(alias: &str) -> String {
    APP_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_listing(json: &str) -> Result<Vec<ListingEntry>> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("listing of a secrets version: {e}")))
}

/// The statement of [`Store::snapshot`] on `engine`, built once: it runs at every boot grant.
fn snapshot_sql(engine: Engine) -> &'static str {
    fn build(engine: Engine) -> String {
        let lm = engine::listing_members(engine);
        format!(
            "SELECT {name} AS name, {vv} AS value_version, v.ciphertext, v.digest, \
             v.value_len, v.created_at, v.updated_at \
             FROM secret_versions sv {join} \
             LEFT JOIN secret_values v \
             ON v.app_id = sv.app_id AND v.name = {name} AND v.version = {vv} \
             WHERE sv.app_id = $1 AND sv.version = $2",
            name = lm.name,
            vv = lm.value_version,
            join = lm.join,
        )
    }
    static SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| build(Engine::Sqlite));
    static POSTGRES: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| build(Engine::Postgres));
    match engine {
        Engine::Sqlite => &SQLITE,
        Engine::Postgres => &POSTGRES,
    }
}

/// The parameters of `insert_app_key`'s statement.
fn app_key_args(k: &AppKeyRecord) -> [Arg<'_>; 5] {
    [
        Arg::from(k.app_id.as_str()),
        Arg::from(k.public_key.as_slice()),
        Arg::from(k.wrapped_private_key.as_slice()),
        Arg::from(k.wrapped_digest_key.as_slice()),
        Arg::from(k.created_at),
    ]
}

/// PostgreSQL: a write that is one statement, run alone in the database's implicit transaction
/// (one round trip, where a transaction takes three: `BEGIN`, the statement, `COMMIT`, and each
/// round trip costs PostgreSQL more CPU than a small statement's own work). On a task of its
/// own, as every write here: once started it runs to the end even if the caller stops waiting.
async fn alone_on_postgres<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(write)
        .await
        .map_err(crate::write_tx::stopped)?
}

/// A version's kept listing, which every version has since schema v7.
fn kept_listing(listing: Option<&str>, version: i64) -> Result<&str> {
    listing.ok_or_else(|| StoreError::Corrupt(format!("secrets version {version} has no listing")))
}

/// Which value of each name a listing holds, read without the rest of each entry (on the path
/// of every boot, `Store::boot_facts`).
pub(crate) fn listing_members(listing: &str) -> Result<HashMap<String, i64>> {
    #[derive(serde::Deserialize)]
    struct Member {
        n: String,
        v: i64,
    }
    let members: Vec<Member> = serde_json::from_str(listing)
        .map_err(|e| StoreError::Corrupt(format!("listing of a secrets version: {e}")))?;
    Ok(members.into_iter().map(|m| (m.n, m.v)).collect())
}

/// What `secrets list` shows of the version with listing `current`, each secret marked deployed
/// if `deployed` (which value of each name the machines run) has its value, or if `deployed` is
/// `None` (the machines run this version). Sorted by name.
fn listed_secrets(
    current: &str,
    deployed: Option<&HashMap<String, i64>>,
) -> Result<Vec<ListedSecret>> {
    let mut secrets = parse_listing(current)?
        .into_iter()
        .map(|e| {
            Ok(ListedSecret {
                deployed: deployed.is_none_or(|d| d.get(&e.name) == Some(&e.value_version)),
                name: secret_name(e.name)?,
                value_version: e.value_version,
                digest: e.digest,
                value_len: e.value_len,
                created_at: e.created_at,
                updated_at: e.updated_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(secrets)
}

fn app_from_row(row: &dyn StoreRow) -> Result<AppRecord> {
    Ok(AppRecord {
        id: row.text("id")?,
        name: app_name(row.text("name")?)?,
        created_at: row.int("created_at")?,
        secrets_version: row.int("secrets_version")?,
        deployed_version: row.int("deployed_version")?,
        crash_window_ms: row.int("crash_window_ms")?,
        release_version: row.int("release_version")?,
    })
}

fn token_from_row(row: &dyn StoreRow) -> Result<TokenRecord> {
    let action = row.text("action")?;
    Ok(TokenRecord {
        id: row.text("id")?,
        secret_hash: row.bytes("secret_hash")?,
        app_id: row.text_opt("app_id")?,
        app_name: row.text_opt("app_name")?.map(app_name).transpose()?,
        action: Action::parse(&action)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown token action {action:?}")))?,
        description: row.text("description")?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        revoked_at: row.int_opt("revoked_at")?,
    })
}

fn app_name(s: String) -> Result<AppName> {
    AppName::parse(&s).map_err(|e| StoreError::Corrupt(format!("app name in the store: {e}")))
}

fn secret_name(s: String) -> Result<SecretName> {
    SecretName::parse(&s).map_err(|e| StoreError::Corrupt(format!("secret name in the store: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_database_is_read_through_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let url = crate::testing::sqlite_url_in(dir.path());
        let store = Store::open(&url, OpenMode::CreateIfMissing).await.unwrap();
        let name = AppName::parse("busy").unwrap();
        store.create_app("id-1", &name).await.unwrap();

        // Another process holds a database in exclusive mode: readers find it busy. (The
        // store's own file cannot be locked so while the store has it open, so the hot reads
        // are pointed at a second file for the test.)
        let other = dir.path().join("other.db");
        let locker = rusqlite::Connection::open(&other).unwrap();
        locker
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .unwrap();
        locker
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .unwrap();
        locker.execute_batch("BEGIN EXCLUSIVE; COMMIT;").unwrap();
        let busy = SqliteReads::new(other);
        let read = busy.read("SELECT x FROM t WHERE x = $1", args!["k"], |r| r.text("x"));
        assert!(
            matches!(read, Ok(Err(crate::sqlite_reads::Busy))),
            "busy is reported at once: {read:?}"
        );

        // The store hands such a read to its pool (which may wait on its own threads).
        let store = Store {
            hot: Arc::new(HotReads::Sqlite(busy)),
            ..store
        };
        assert_eq!(store.app_by_name(&name).await.unwrap().id, "id-1");
        store.close().await;
    }

    #[test]
    fn placeholders_ascend() {
        assert_eq!(
            multi_row_insert("INSERT INTO t (a, b) VALUES ", 2, 3),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)"
        );
    }
}
