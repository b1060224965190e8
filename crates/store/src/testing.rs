//! Helpers for tests, in this crate and in the others: where to find a PostgreSQL server, a
//! fresh database on it, a SQLite file in a temporary directory.
//!
//! PostgreSQL is found through `COFFER_TEST_POSTGRES_URL`, else through the libpq variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`) that `pg_virtualenv` exports:
//!
//! ```text
//! pg_virtualenv -c '-c fsync=off' cargo test -p coffer-store
//! ```
//!
//! Without one, PostgreSQL tests are skipped with a note, except under `CI`, where they fail:
//! a suite that silently skips an engine in CI tests nothing.

use crate::DatabaseUrl;
use sqlx::{Connection, Executor};
use std::hash::{BuildHasher, Hasher};
use url::Url;

/// A URL with the right to `CREATE DATABASE`, if the environment names a server.
pub fn postgres_admin_url() -> Option<String> {
    if let Some(url) = non_empty("COFFER_TEST_POSTGRES_URL") {
        return Some(url);
    }
    let host = non_empty("PGHOST");
    let port = non_empty("PGPORT");
    if host.is_none() && port.is_none() {
        return None;
    }
    let host = host.unwrap_or_else(|| "localhost".into());
    let user = non_empty("PGUSER")
        .or_else(|| non_empty("USER"))
        .unwrap_or_else(|| "postgres".into());
    let database = non_empty("PGDATABASE").unwrap_or_else(|| user.clone());

    let mut url = Url::parse("postgres://localhost").expect("static URL");
    url.set_username(&user).ok()?;
    if let Some(password) = non_empty("PGPASSWORD") {
        url.set_password(Some(&password)).ok()?;
    }
    if let Some(port) = port {
        url.set_port(Some(port.parse().ok()?)).ok()?;
    }
    url.set_path(&database);
    if host.starts_with('/') {
        // A socket directory: sqlx takes it as the `host` parameter.
        url.query_pairs_mut().append_pair("host", &host);
    } else {
        url.set_host(Some(&host)).ok()?;
    }
    Some(url.to_string())
}

/// The admin URL, or `None` (after a note on stderr) when there is no PostgreSQL and this is
/// not CI. Panics under CI without PostgreSQL.
pub fn require_postgres() -> Option<String> {
    if let Some(url) = postgres_admin_url() {
        return Some(url);
    }
    let ci = std::env::var("CI").unwrap_or_default();
    if !ci.is_empty() && ci != "false" && ci != "0" {
        panic!(
            "CI is set but no PostgreSQL: set COFFER_TEST_POSTGRES_URL or run under pg_virtualenv"
        );
    }
    eprintln!(
        "note: skipping a PostgreSQL test: set COFFER_TEST_POSTGRES_URL or run under \
         pg_virtualenv (with CI set, this is a failure)"
    );
    None
}

/// Creates an empty database `coffer_test_<random>` on the server and returns its URL.
pub async fn fresh_postgres_database(admin_url: &str) -> String {
    crate::engine::install_drivers();
    let name = format!("coffer_test_{:016x}", random_u64());
    let mut conn = sqlx::AnyConnection::connect(admin_url)
        .await
        .expect("connect to the PostgreSQL admin URL");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let mut url = Url::parse(admin_url).expect("admin URL parses");
    url.set_path(&name);
    url.to_string()
}

/// Drops a database made by [`fresh_postgres_database`] (closing any connections still open).
pub async fn drop_postgres_database(admin_url: &str, database_url: &str) {
    crate::engine::install_drivers();
    let url = Url::parse(database_url).expect("database URL parses");
    let name = url.path().trim_start_matches('/');
    assert!(
        name.starts_with("coffer_test_")
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "refusing to drop {name:?}: not a test database"
    );
    let mut conn = sqlx::AnyConnection::connect(admin_url)
        .await
        .expect("connect to the PostgreSQL admin URL");
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("DROP DATABASE");
    let _ = conn.close().await;
}

/// A SQLite store in `dir` (open it with `OpenMode::CreateIfMissing`).
pub fn sqlite_url_in(dir: &std::path::Path) -> DatabaseUrl {
    DatabaseUrl::sqlite(dir.join("coffer.db"))
}

/// A database at schema `version`, with every migration up to it and none after: what an older
/// coffer left behind, for a test of what a later migration does with its data. Write those
/// rows through the returned pool and close it; `Store::open` then applies the rest.
pub async fn database_at_schema(url: &DatabaseUrl, version: i64) -> crate::Result<sqlx::AnyPool> {
    let pools = crate::engine::connect(url, crate::OpenMode::CreateIfMissing).await?;
    // (On PostgreSQL the read pool is the write pool: dropped, not closed.)
    drop(pools.read);
    let engine = url.engine();
    // As `Store::open` migrates: on the write pool, in one transaction.
    let mut tx = match crate::engine::begin_write(engine) {
        Some(begin) => pools.write.begin_with(begin).await?,
        None => pools.write.begin().await?,
    };
    crate::store::migrate_in(engine, &mut tx, version).await?;
    tx.commit().await?;
    Ok(pools.write)
}

/// How many rows app `app_id` has in `secret_values` and `secret_versions`: what a test counts
/// to see that a refused write left nothing behind (on PostgreSQL values have no foreign key,
/// so a stray row would show in no read of a version).
pub async fn rows_of_app(store: &crate::Store, app_id: &str) -> crate::Result<(i64, i64)> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM secret_values WHERE app_id = $1) AS v, \
         (SELECT count(*) FROM secret_versions WHERE app_id = $1) AS s",
    )
    .bind(app_id)
    .fetch_one(&store.read)
    .await?;
    Ok((row.try_get("v")?, row.try_get("s")?))
}

fn non_empty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// Good enough to keep test databases apart: std's per-process random hash keys, the time and
/// a counter.
fn random_u64() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}
