-- coffer schema v3 (sqlite): releases. Keep in step with the other engine's file.

ALTER TABLE apps ADD COLUMN release_version INTEGER NOT NULL DEFAULT 0;

-- Every deploying change is a release: it rolls a secrets version out to the app's machines.
CREATE TABLE releases (
    app_id                   TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    version                  INTEGER NOT NULL,
    secrets_version          INTEGER NOT NULL,
    -- What the machines ran before: a failed release puts them back on it.
    previous_secrets_version INTEGER NOT NULL,
    previous_release_version INTEGER NOT NULL,
    description              TEXT    NOT NULL,
    actor                    TEXT    NOT NULL,
    status                   TEXT    NOT NULL, -- running | complete | failed | rolled_back
    reason                   TEXT,
    progress                 TEXT    NOT NULL DEFAULT '',
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    PRIMARY KEY (app_id, version)
) STRICT;

-- One release at a time per app, enforced by the store itself.
CREATE UNIQUE INDEX releases_one_running ON releases (app_id) WHERE status = 'running';
