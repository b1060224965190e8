-- coffer schema v3 (postgres): releases. Keep in step with the other engine's file.

ALTER TABLE apps ADD COLUMN release_version BIGINT NOT NULL DEFAULT 0;

-- Every deploying change is a release: it rolls a secrets version out to the app's machines.
CREATE TABLE releases (
    app_id                   TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version                  BIGINT NOT NULL,
    secrets_version          BIGINT NOT NULL,
    -- What the machines ran before: a failed release puts them back on it.
    previous_secrets_version BIGINT NOT NULL,
    previous_release_version BIGINT NOT NULL,
    description              TEXT    NOT NULL,
    actor                    TEXT    NOT NULL,
    status                   TEXT    NOT NULL, -- running | complete | failed | rolled_back
    reason                   TEXT,
    progress                 TEXT    NOT NULL DEFAULT '',
    created_at               BIGINT NOT NULL,
    updated_at               BIGINT NOT NULL,
    PRIMARY KEY (app_id, version)
);

-- One release at a time per app, enforced by the store itself.
CREATE UNIQUE INDEX releases_one_running ON releases (app_id) WHERE status = 'running';
