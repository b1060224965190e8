-- coffer schema v2 (postgres): hosts and machines. Keep in step with the other engine's file.

-- A host runs an agent. It authenticates to the control plane with its host token (only the
-- hash is kept) and signs its decrypt requests with the Ed25519 key whose public half is here.
CREATE TABLE hosts (
    id           TEXT    NOT NULL PRIMARY KEY,
    name         TEXT    NOT NULL,
    address      TEXT    NOT NULL,
    public_key   TEXT    NOT NULL,
    token_hash   BYTEA    NOT NULL,
    -- Bumped with every change to the desired state of the host's machines: agents long-poll it.
    generation   BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);

-- A machine: one supervised process of an app on one host. The row outlives the machine's
-- destruction (destroyed_at) so that the vault can tell a destroyed machine's token from an
-- unknown one; destroying the app removes it.
CREATE TABLE machines (
    id              TEXT    NOT NULL PRIMARY KEY,
    app_id          TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    host_id         TEXT    NOT NULL REFERENCES hosts (id),
    name            TEXT    NOT NULL,
    config          TEXT    NOT NULL, -- JSON {command, env, restart}: never a secret
    desired         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    exit_status     BIGINT,
    message         TEXT,
    secrets_version BIGINT NOT NULL,
    release_version BIGINT NOT NULL,
    generation      BIGINT NOT NULL,
    -- The generation the host's last state report was about.
    state_generation BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    destroyed_at    BIGINT
);

CREATE INDEX machines_by_app ON machines (app_id);
CREATE INDEX machines_by_host ON machines (host_id);
