-- coffer schema v7 (postgres): the listing kept with each secrets version becomes the record of
-- which value of each name the version holds; `secret_members` goes. Keep in step with the
-- other engine's file.
--
-- Since v4 every version keeps its listing, a JSON array of {n: name, v: value version,
-- d: digest, l: length, c: created at, u: updated at} sorted by name, written in the
-- statement that writes the version and never changed afterwards. `secret_members` said the
-- same (name, value version) pairs again, one row per secret of every version: of a write of
-- 10 secrets, 10 rows and their primary key that no read needed any more (BENCHMARKS.md,
-- "What was changed").
--
-- Versions written before v4 have no listing yet: derive it from their members and values,
-- as the store did when it wrote one (names sorted by bytes, as Rust sorts them), so that
-- every version has one from now on.
-- A member whose value row is missing (which nothing should have written) keeps its name and
-- value version, with nulls for the rest: reads of that version then fail as corrupt, as a
-- snapshot missing a value does, instead of the version losing the secret without a word.
UPDATE secret_versions sv SET listing = COALESCE((
    SELECT json_agg(json_build_object(
        'n', m.name, 'v', m.value_version, 'd', v.digest, 'l', v.value_len,
        'c', v.created_at, 'u', v.updated_at) ORDER BY m.name COLLATE "C")
    FROM secret_members m LEFT JOIN secret_values v
        ON v.app_id = m.app_id AND v.name = m.name AND v.version = m.value_version
    WHERE m.app_id = sv.app_id AND m.version = sv.version
)::text, '[]') WHERE listing IS NULL;

ALTER TABLE secret_versions ALTER COLUMN listing SET NOT NULL;

DROP TABLE secret_members;
