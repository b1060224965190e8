-- coffer schema v7 (sqlite): the listing kept with each secrets version becomes the record of
-- which value of each name the version holds; `secret_members` goes. Keep in step with the
-- other engine's file.
--
-- Since v4 every version keeps its listing, a JSON array of {n: name, v: value version,
-- d: digest, l: length, c: created at, u: updated at} sorted by name, written in the
-- transaction that writes the version and never changed afterwards. `secret_members` said the
-- same (name, value version) pairs again, one row per secret of every version, with a primary
-- key and an index: of a write of 10 secrets, 10 rows and 30 B-tree inserts that no read
-- needed any more (BENCHMARKS.md, "What was changed").
--
-- Versions written before v4 have no listing yet: derive it from their members and values,
-- as the store did when it wrote one, so that every version has one from now on.
-- A member whose value row is missing (which nothing should have written) keeps its name and
-- value version, with nulls for the rest: reads of that version then fail as corrupt, as a
-- snapshot missing a value does, instead of the version losing the secret without a word.
UPDATE secret_versions SET listing = (
    SELECT json_group_array(json_object(
        'n', m.name, 'v', m.value_version, 'd', v.digest, 'l', v.value_len,
        'c', v.created_at, 'u', v.updated_at) ORDER BY m.name)
    FROM secret_members m LEFT JOIN secret_values v
        ON v.app_id = m.app_id AND v.name = m.name AND v.version = m.value_version
    WHERE m.app_id = secret_versions.app_id AND m.version = secret_versions.version
) WHERE listing IS NULL;

DROP TABLE secret_members;

-- What PostgreSQL's NOT NULL on the column does (SQLite cannot add it to a column): from now
-- on every version has its listing.
CREATE TRIGGER secret_versions_listing_on_insert BEFORE INSERT ON secret_versions
WHEN NEW.listing IS NULL
BEGIN
    SELECT RAISE(ABORT, 'a secrets version needs its listing');
END;
CREATE TRIGGER secret_versions_listing_on_update BEFORE UPDATE OF listing ON secret_versions
WHEN NEW.listing IS NULL
BEGIN
    SELECT RAISE(ABORT, 'a secrets version needs its listing');
END;
