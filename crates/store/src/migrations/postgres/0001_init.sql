-- coffer schema v1, PostgreSQL. Keep in step with ../sqlite/0001_init.sql: the same tables,
-- columns and constraints; only the type names differ.
-- All times are microseconds since the Unix epoch.

CREATE TABLE apps (
    id               TEXT   NOT NULL PRIMARY KEY,
    name             TEXT   NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    secrets_version  BIGINT NOT NULL DEFAULT 0,
    deployed_version BIGINT NOT NULL DEFAULT 0,
    crash_window_ms  BIGINT NOT NULL DEFAULT 30000
);

-- One row per secrets version: immutable once written.
CREATE TABLE secret_versions (
    app_id     TEXT   NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    actor      TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    changes    TEXT   NOT NULL, -- JSON array of {name, kind, digest?}
    PRIMARY KEY (app_id, version)
);

-- Each value once, at the version it was written: versions share unchanged values.
CREATE TABLE secret_values (
    app_id     TEXT   NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    ciphertext BYTEA  NOT NULL,
    digest     TEXT   NOT NULL,
    value_len  BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, name, version)
);

-- Which value of each name a version contains.
CREATE TABLE secret_members (
    app_id        TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    name          TEXT   NOT NULL,
    value_version BIGINT NOT NULL,
    PRIMARY KEY (app_id, version, name),
    FOREIGN KEY (app_id, version) REFERENCES secret_versions (app_id, version) ON DELETE CASCADE,
    FOREIGN KEY (app_id, name, value_version)
        REFERENCES secret_values (app_id, name, version) ON DELETE CASCADE
);

-- For the cascade when a value goes (only with its app).
CREATE INDEX secret_members_value ON secret_members (app_id, name, value_version);

CREATE TABLE api_tokens (
    id          TEXT   NOT NULL PRIMARY KEY,
    secret_hash BYTEA  NOT NULL,
    app_id      TEXT   REFERENCES apps (id) ON DELETE CASCADE, -- NULL: all apps
    action      TEXT   NOT NULL,
    description TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_tokens_app_id ON api_tokens (app_id);

-- No foreign key: the vault may keep its keys in another database than the API's.
CREATE TABLE vault_app_keys (
    app_id              TEXT   NOT NULL PRIMARY KEY,
    public_key          BYTEA  NOT NULL,
    wrapped_private_key BYTEA  NOT NULL,
    wrapped_digest_key  BYTEA  NOT NULL,
    created_at          BIGINT NOT NULL
);

CREATE TABLE meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
