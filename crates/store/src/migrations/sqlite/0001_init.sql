-- coffer schema v1, SQLite. Keep in step with ../postgres/0001_init.sql: the same tables,
-- columns and constraints; only the type names differ (STRICT tables take INTEGER, not BIGINT).
-- All times are microseconds since the Unix epoch.

CREATE TABLE apps (
    id               TEXT    NOT NULL PRIMARY KEY,
    name             TEXT    NOT NULL UNIQUE,
    created_at       INTEGER NOT NULL,
    secrets_version  INTEGER NOT NULL DEFAULT 0,
    deployed_version INTEGER NOT NULL DEFAULT 0,
    crash_window_ms  INTEGER NOT NULL DEFAULT 30000
) STRICT;

-- One row per secrets version: immutable once written.
CREATE TABLE secret_versions (
    app_id     TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    changes    TEXT    NOT NULL, -- JSON array of {name, kind, digest?}
    PRIMARY KEY (app_id, version)
) STRICT;

-- Each value once, at the version it was written: versions share unchanged values.
CREATE TABLE secret_values (
    app_id     TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    ciphertext BLOB    NOT NULL,
    digest     TEXT    NOT NULL,
    value_len  INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, name, version)
) STRICT;

-- Which value of each name a version contains.
CREATE TABLE secret_members (
    app_id        TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    value_version INTEGER NOT NULL,
    PRIMARY KEY (app_id, version, name),
    FOREIGN KEY (app_id, version) REFERENCES secret_versions (app_id, version) ON DELETE CASCADE,
    FOREIGN KEY (app_id, name, value_version)
        REFERENCES secret_values (app_id, name, version) ON DELETE CASCADE
) STRICT;

-- For the cascade when a value goes (only with its app).
CREATE INDEX secret_members_value ON secret_members (app_id, name, value_version);

CREATE TABLE api_tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    secret_hash BLOB    NOT NULL,
    app_id      TEXT    REFERENCES apps (id) ON DELETE CASCADE, -- NULL: all apps
    action      TEXT    NOT NULL,
    description TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_tokens_app_id ON api_tokens (app_id);

-- No foreign key: the vault may keep its keys in another database than the API's.
CREATE TABLE vault_app_keys (
    app_id              TEXT    NOT NULL PRIMARY KEY,
    public_key          BLOB    NOT NULL,
    wrapped_private_key BLOB    NOT NULL,
    wrapped_digest_key  BLOB    NOT NULL,
    created_at          INTEGER NOT NULL
) STRICT;

CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
