//! Everything that differs between SQLite and PostgreSQL: parsing the database URL, setting up
//! connections, the DDL of the migrations and how a write transaction begins. The queries in
//! [`crate::Store`] are engine-neutral.

use crate::{Result, StoreError};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use url::Url;

const SCHEME_HINT: &str = "use sqlite://PATH or postgres://USER@HOST/DB";

/// Which database engine a [`crate::Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether opening a SQLite store may create its file. PostgreSQL databases are never created
/// by opening (the schema is, by the migrations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// `cofferd dev` and `init`: create the file (mode 0600) if it is absent.
    CreateIfMissing,
    /// Every other role: a missing file is a mistake (a typo in the URL), never a new empty store.
    MustExist,
}

/// A parsed `--database-url`. Its `Debug` and `Display` never show a password, so it can be
/// logged as is.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    target: Target,
}

#[derive(Clone, PartialEq, Eq)]
enum Target {
    Sqlite(PathBuf),
    Postgres(Url),
}

impl DatabaseUrl {
    /// `sqlite://PATH` (`sqlite:///abs/path.db` is absolute, `sqlite://rel.db` relative to the
    /// working directory; the path is taken literally, without percent-decoding) or
    /// `postgres://…` / `postgresql://…` (libpq-style URL as sqlx understands it).
    pub fn parse(s: &str) -> Result<DatabaseUrl> {
        let s = s.trim();
        let Some((scheme, rest)) = s.split_once("://") else {
            let looks_like_path = s.starts_with('/') || s.starts_with('.') || s.ends_with(".db");
            return Err(StoreError::InvalidUrl(if looks_like_path {
                "missing scheme (sqlite:// or postgres://); for a SQLite file write sqlite://PATH"
                    .to_string()
            } else {
                format!("missing scheme (sqlite:// or postgres://); {SCHEME_HINT}")
            }));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {
                if rest.is_empty() {
                    return Err(StoreError::InvalidUrl(
                        "sqlite:// needs a file path, e.g. sqlite:///var/lib/coffer/coffer.db"
                            .into(),
                    ));
                }
                if rest.contains('?') || rest.contains('#') {
                    return Err(StoreError::InvalidUrl(
                        "sqlite URLs take no parameters ('?' or '#'); write sqlite://PATH".into(),
                    ));
                }
                if rest == ":memory:" {
                    return Err(StoreError::InvalidUrl(
                        "an in-memory SQLite store would lose everything on restart (and every \
                         connection would see its own empty database); write sqlite://PATH"
                            .into(),
                    ));
                }
                Ok(DatabaseUrl::sqlite(rest))
            }
            "postgres" | "postgresql" => {
                // The url crate's errors never quote the input, so no password leaks here.
                let url = Url::parse(s).map_err(|e| {
                    StoreError::InvalidUrl(format!("malformed PostgreSQL URL ({e}); {SCHEME_HINT}"))
                })?;
                if url.host_str().is_none_or(str::is_empty)
                    && !url
                        .query_pairs()
                        .any(|(k, _)| k == "host" || k == "hostaddr")
                {
                    return Err(StoreError::InvalidUrl(format!(
                        "PostgreSQL URL has no host; {SCHEME_HINT}"
                    )));
                }
                // Let sqlx check the parameters now rather than at the first connection.
                sqlx::postgres::PgConnectOptions::from_url(&url)
                    .map_err(|e| StoreError::InvalidUrl(format!("PostgreSQL URL rejected: {e}")))?;
                Ok(DatabaseUrl {
                    target: Target::Postgres(url),
                })
            }
            other => {
                let shown: String = if other.len() <= 16
                    && other
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                {
                    format!("`{other}`")
                } else {
                    "in the URL".to_string()
                };
                Err(StoreError::InvalidUrl(format!(
                    "unsupported scheme {shown}; {SCHEME_HINT}"
                )))
            }
        }
    }

    /// A SQLite store in the file at `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> DatabaseUrl {
        DatabaseUrl {
            target: Target::Sqlite(path.into()),
        }
    }

    pub fn engine(&self) -> Engine {
        match self.target {
            Target::Sqlite(_) => Engine::Sqlite,
            Target::Postgres(_) => Engine::Postgres,
        }
    }

    /// The file of a SQLite store.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.target {
            Target::Sqlite(p) => Some(p),
            Target::Postgres(_) => None,
        }
    }

    /// The URL with any password replaced by `***`: safe for logs and messages.
    pub fn redacted(&self) -> String {
        match &self.target {
            Target::Sqlite(p) => format!("sqlite://{}", p.display()),
            Target::Postgres(url) => {
                let mut url = url.clone();
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                if url.query_pairs().any(|(k, _)| k == "password") {
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if k == "password" {
                                "***".into()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                url.to_string()
            }
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl")
            .field(&self.redacted())
            .finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The pools a store uses. For SQLite, all writes go through one connection (SQLite has one
/// writer at a time; queueing in the pool instead of in SQLite avoids `SQLITE_BUSY` when a
/// deferred transaction upgrades to a write lock) and reads through a few others (WAL lets them
/// run beside the writer). For PostgreSQL one pool serves both.
pub(crate) struct Pools {
    pub read: AnyPool,
    pub write: AnyPool,
    /// For the store's own hot-path readers (see `readers`): how to connect, and how many.
    pub read_options: AnyConnectOptions,
    pub hot_readers: usize,
    /// SQLite: the database file, for the hot reads on SQLite's own API (`sqlite_reads`).
    pub sqlite_path: Option<PathBuf>,
}

/// Runs the per-connection settings on a connection made outside a pool.
pub(crate) async fn set_up_connection(
    engine: Engine,
    conn: &mut sqlx::AnyConnection,
) -> Result<()> {
    if engine == Engine::Sqlite {
        for pragma in SQLITE_PRAGMAS {
            conn.execute(*pragma).await?;
        }
    }
    Ok(())
}

static DRIVERS: std::sync::Once = std::sync::Once::new();

pub(crate) fn install_drivers() {
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// SQLite: connections of the read pool (the reads on every request's path have their own,
/// see `sqlite_reads`).
const SQLITE_READERS: u32 = 4;
const POSTGRES_CONNECTIONS: u32 = 16;
/// PostgreSQL connections of the hot-path readers, besides the pool.
const POSTGRES_HOT_READERS: usize = 8;

/// Per-connection settings. `busy_timeout` first: changing the journal mode needs a lock.
/// `synchronous=FULL`: a commit the API acknowledged survives a power cut. (No `mmap_size`: it
/// made lists ~10 % cheaper, but every reader unmaps and remaps the file at each read
/// transaction after a write, and the mapped pages count in the daemon's resident memory;
/// BENCHMARKS.md, "Tried and not kept".)
const SQLITE_PRAGMAS: &[&str] = &[
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
];

pub(crate) async fn connect(url: &DatabaseUrl, mode: OpenMode) -> Result<Pools> {
    install_drivers();
    match &url.target {
        Target::Sqlite(path) => {
            let path = prepare_sqlite_file(path, mode)?;
            let options = AnyConnectOptions::from_str(&sqlite_any_url(&path)?)
                .map_err(|e| StoreError::InvalidUrl(format!("{}: {e}", path.display())))?;
            let pool = |max: u32| {
                AnyPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(30))
                    // sqlx already pings every connection when it goes back to the pool; a
                    // second ping on every acquire is one more round trip to SQLite's thread
                    // per statement (see BENCHMARKS.md, "Where coffer's time goes").
                    .test_before_acquire(false)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            for pragma in SQLITE_PRAGMAS {
                                conn.execute(*pragma).await?;
                            }
                            Ok(())
                        })
                    })
            };
            // The writer first: its first connection switches the file to WAL.
            let write = pool(1).connect_with(options.clone()).await?;
            let read = pool(SQLITE_READERS).connect_with(options.clone()).await?;
            Ok(Pools {
                read,
                write,
                read_options: options,
                // Unused: on SQLite those reads run on SQLite's own API (`sqlite_path`).
                hot_readers: 0,
                sqlite_path: Some(path),
            })
        }
        Target::Postgres(u) => {
            let options = AnyConnectOptions::from_url(u)?;
            let read_options = options.clone();
            let pool = AnyPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(options)
                .await?;
            Ok(Pools {
                read: pool.clone(),
                write: pool,
                read_options,
                hot_readers: POSTGRES_HOT_READERS,
                sqlite_path: None,
            })
        }
    }
}

/// Makes sure the file exists (or refuses, with `MustExist`), is private to its owner, and
/// returns its canonical path.
fn prepare_sqlite_file(path: &Path, mode: OpenMode) -> Result<PathBuf> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(StoreError::InvalidUrl(format!(
                "{shown} is a directory; point sqlite:// at a file inside it"
            )))
        }
        Ok(meta) => {
            if meta.permissions().mode() & 0o777 != 0o600 {
                if let Err(e) =
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                {
                    tracing::warn!(path = %shown, error = %e, "cannot make the database file private (mode 0600)");
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match mode {
            OpenMode::MustExist => {
                return Err(StoreError::InvalidUrl(format!(
                    "no database at {shown}; run `cofferd dev` or check --database-url"
                )))
            }
            OpenMode::CreateIfMissing => {
                // Created by us, not by SQLite, so that it is never readable by others, not even
                // for a moment. `create_new`: if someone else created it meanwhile, use theirs.
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        let hint = if e.kind() == std::io::ErrorKind::NotFound {
                            "; create its directory first"
                        } else {
                            ""
                        };
                        return Err(StoreError::InvalidUrl(format!(
                            "cannot create the database {shown}: {e}{hint}"
                        )));
                    }
                }
            }
        },
        Err(e) => {
            return Err(StoreError::InvalidUrl(format!(
                "cannot open the database {shown}: {e}"
            )))
        }
    }
    std::fs::canonicalize(path)
        .map_err(|e| StoreError::InvalidUrl(format!("cannot open the database {shown}: {e}")))
}

/// The URL sqlx's SQLite driver gets: an absolute path, percent-encoded (sqlx decodes it), and
/// `mode=rw` so that SQLite itself never creates a file.
fn sqlite_any_url(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| StoreError::InvalidUrl(format!("{} is not a UTF-8 path", path.display())))?;
    let mut out = String::from("sqlite://");
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("?mode=rw");
    Ok(out)
}

/// How a transaction that will write begins. SQLite: take the write lock at once, so that a
/// second process on the same file waits (busy_timeout) at BEGIN instead of failing mid-way.
pub(crate) fn begin_write(engine: Engine) -> Option<&'static str> {
    match engine {
        Engine::Sqlite => Some("BEGIN IMMEDIATE"),
        Engine::Postgres => None,
    }
}

/// Serializes migrations across processes: replicas starting together must not race on DDL.
/// SQLite needs nothing more than its write lock (`BEGIN IMMEDIATE`).
pub(crate) fn migration_lock(engine: Engine) -> Option<&'static str> {
    match engine {
        Engine::Sqlite => None,
        // "coffer" in ASCII: an arbitrary key shared by every coffer process.
        Engine::Postgres => Some("SELECT pg_advisory_xact_lock(108887074285938)"),
    }
}

/// The members of the kept listing of the secrets version aliased `sv` (`sv.listing`, a JSON
/// array of {n, v, …}; see schema v7), one row each: the join that follows `sv` in a `FROM`,
/// and the expressions of a member's name and value version.
pub(crate) struct ListingMembers {
    pub join: &'static str,
    pub name: &'static str,
    pub value_version: &'static str,
}

pub(crate) fn listing_members(engine: Engine) -> ListingMembers {
    match engine {
        // A table-valued function may read the tables before it in the join.
        Engine::Sqlite => ListingMembers {
            join: "CROSS JOIN json_each(sv.listing) AS lm",
            name: "(lm.value ->> 'n')",
            value_version: "(lm.value ->> 'v')",
        },
        Engine::Postgres => ListingMembers {
            join: "CROSS JOIN LATERAL json_to_recordset(sv.listing::json) AS lm(n text, v bigint)",
            name: "lm.n",
            value_version: "lm.v",
        },
    }
}

pub(crate) struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

const SQLITE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/sqlite/0002_machines.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/sqlite/0003_releases.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("migrations/sqlite/0004_listing.sql"),
    },
    // Version 5 is PostgreSQL's alone (foreign keys SQLite never checked row by row); the
    // version numbers stay shared so that one number means one schema change.
    Migration {
        version: 6,
        sql: include_str!("migrations/sqlite/0006_release_leases.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("migrations/sqlite/0007_listing_is_the_record.sql"),
    },
];

const POSTGRES_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/postgres/0002_machines.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/postgres/0003_releases.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("migrations/postgres/0004_listing.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("migrations/postgres/0005_no_row_checks_on_secrets.sql"),
    },
    Migration {
        version: 6,
        sql: include_str!("migrations/postgres/0006_release_leases.sql"),
    },
    Migration {
        version: 7,
        sql: include_str!("migrations/postgres/0007_listing_is_the_record.sql"),
    },
];

pub(crate) fn migrations(engine: Engine) -> &'static [Migration] {
    match engine {
        Engine::Sqlite => SQLITE_MIGRATIONS,
        Engine::Postgres => POSTGRES_MIGRATIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn err(s: &str) -> String {
        DatabaseUrl::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn sqlite_urls() {
        let abs = DatabaseUrl::parse("sqlite:///var/lib/coffer/coffer.db").unwrap();
        assert_eq!(abs.engine(), Engine::Sqlite);
        assert_eq!(
            abs.sqlite_path(),
            Some(Path::new("/var/lib/coffer/coffer.db"))
        );
        assert_eq!(abs.to_string(), "sqlite:///var/lib/coffer/coffer.db");

        let rel = DatabaseUrl::parse("sqlite://data/coffer.db").unwrap();
        assert_eq!(rel.sqlite_path(), Some(Path::new("data/coffer.db")));

        let spaced = DatabaseUrl::parse("sqlite:///tmp/my data.db").unwrap();
        assert_eq!(spaced.sqlite_path(), Some(Path::new("/tmp/my data.db")));

        assert_eq!(
            "SQLite:///x.db".parse::<DatabaseUrl>().unwrap(),
            DatabaseUrl::sqlite("/x.db")
        );
        assert!(err("sqlite://").contains("needs a file path"));
        assert!(err("sqlite:///x.db?mode=rwc").contains("no parameters"));
        assert!(err("sqlite://:memory:").contains("in-memory"));
    }

    #[test]
    fn postgres_urls() {
        for s in [
            "postgres://coffer@db.internal/coffer",
            "postgresql://coffer@db.internal:6432/coffer?sslmode=require",
            "postgres://coffer@localhost:5433/coffer?host=/var/run/postgresql",
        ] {
            let u = DatabaseUrl::parse(s).unwrap();
            assert_eq!(u.engine(), Engine::Postgres, "{s}");
            assert_eq!(u.sqlite_path(), None);
        }
        assert!(err("postgres:///coffer").contains("no host"));
        assert!(err("postgres://coffer@db/coffer?sslmode=sometimes").contains("rejected"));
    }

    #[test]
    fn unknown_schemes_get_a_hint() {
        for s in ["mysql://root@db/coffer", "file:///x.db", "sqlite3:///x.db"] {
            let e = err(s);
            assert!(e.contains("unsupported scheme"), "{e}");
            assert!(
                e.contains("use sqlite://PATH or postgres://USER@HOST/DB"),
                "{e}"
            );
        }
        assert!(err("mysql://root@db/x").contains("`mysql`"));
        assert!(err("/var/lib/coffer.db").contains("sqlite://PATH"));
        assert!(err("").contains("use sqlite://PATH or postgres://USER@HOST/DB"));
        let e = DatabaseUrl::parse("mysql://root@db/x").unwrap_err();
        assert!(matches!(e, StoreError::InvalidUrl(_)));
    }

    #[test]
    fn passwords_never_show() {
        let secret = "hunter2-S3cret";
        let u = DatabaseUrl::parse(&format!("postgres://coffer:{secret}@db:5432/coffer")).unwrap();
        for shown in [format!("{u:?}"), u.to_string(), u.redacted()] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("coffer:***@db"), "{shown}");
        }
        let q = DatabaseUrl::parse(&format!(
            "postgres://db/coffer?user=coffer&password={secret}&sslmode=disable"
        ))
        .unwrap();
        for shown in [format!("{q:?}"), q.to_string()] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("password=***"), "{shown}");
            assert!(shown.contains("sslmode=disable"), "{shown}");
        }
        // Nor in the errors.
        for s in [
            format!("mysql://root:{secret}@db/coffer"),
            format!("postgres://coffer:{secret}@db/coffer?sslmode=bogus"),
            format!("postgres://coffer:{secret}@[db/coffer"),
            format!("coffer:{secret}@db/coffer"),
            format!("{secret}://x"),
        ] {
            let e = err(&s);
            assert!(!e.contains(secret), "{e}");
            assert!(!format!("{:?}", DatabaseUrl::parse(&s)).contains(secret));
        }
    }

    #[tokio::test]
    async fn must_exist_refuses_a_missing_file_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("typo.db");
        let url = DatabaseUrl::sqlite(&path);
        let e = crate::Store::open(&url, OpenMode::MustExist)
            .await
            .expect_err("opening a missing file must fail");
        assert!(matches!(e, StoreError::InvalidUrl(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("no database at {}", path.display())),
            "{msg}"
        );
        assert!(msg.contains("cofferd dev"), "{msg}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn create_if_missing_needs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::sqlite(dir.path().join("absent").join("coffer.db"));
        let e = crate::Store::open(&url, OpenMode::CreateIfMissing)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("create its directory first"), "{e}");
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn sqlite_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        // A path that needs percent-encoding on its way to sqlx.
        let path = dir.path().join("a dir %41 #1").join("coffer.db");
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        let url = DatabaseUrl::sqlite(&path);
        let store = crate::Store::open(&url, OpenMode::CreateIfMissing)
            .await
            .unwrap();
        let app = coffer_core::AppName::parse("web").unwrap();
        store.create_app("app1", &app).await.unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let mut checked = 1;
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                assert_eq!(mode_of(&side), 0o600, "{}", side.display());
                checked += 1;
            }
        }
        assert!(checked >= 2, "WAL mode should leave a -wal file while open");
        store.close().await;
        // Only the files we expect, named as we expect.
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(name.starts_with("coffer.db"), "{name}");
        }

        // An existing file with loose permissions is tightened on open, and MustExist opens it
        // with the data intact.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = crate::Store::open(&url, OpenMode::MustExist).await.unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(store.app_by_name(&app).await.unwrap().id, "app1");
        store.close().await;
    }

    #[tokio::test]
    async fn reopening_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::sqlite(dir.path().join("c.db"));
        for _ in 0..3 {
            let store = crate::Store::open(&url, OpenMode::CreateIfMissing)
                .await
                .unwrap();
            store.ping().await.unwrap();
            store.close().await;
        }
    }

    #[tokio::test]
    async fn sqlite_connections_are_set_up() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::sqlite(dir.path().join("c.db"));
        let pools = connect(&url, OpenMode::CreateIfMissing).await.unwrap();
        assert_eq!(pools.write.options().get_max_connections(), 1);
        for pool in [&pools.write, &pools.read] {
            let mut conn = pool.acquire().await.unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            for (pragma, want) in [
                ("synchronous", 2),
                ("foreign_keys", 1),
                ("busy_timeout", 5000),
            ] {
                let got: i64 = sqlx::query_scalar(&format!("PRAGMA {pragma}"))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                assert_eq!(got, want, "{pragma}");
            }
        }
        pools.write.close().await;
        pools.read.close().await;
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::sqlite(dir.path().join("c.db"));
        crate::Store::open(&url, OpenMode::CreateIfMissing)
            .await
            .unwrap()
            .close()
            .await;
        let pools = connect(&url, OpenMode::MustExist).await.unwrap();
        sqlx::query("INSERT INTO coffer_schema (version) VALUES (99)")
            .execute(&pools.write)
            .await
            .unwrap();
        pools.write.close().await;
        pools.read.close().await;
        let e = crate::Store::open(&url, OpenMode::MustExist)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("schema is at version 99") && e.contains("upgrade coffer"),
            "{e}"
        );
    }

    #[test]
    fn any_urls_round_trip_through_sqlx() {
        let path = Path::new("/tmp/a b/%41?#x.db");
        let any = sqlite_any_url(path).unwrap();
        // The way the Any driver hands it over: through a parsed `Url`.
        let opts =
            sqlx::sqlite::SqliteConnectOptions::from_url(&Url::parse(&any).unwrap()).unwrap();
        assert_eq!(opts.get_filename(), path);
    }
}
