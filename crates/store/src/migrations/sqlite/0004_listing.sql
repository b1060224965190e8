-- coffer schema v4 (sqlite): what `secrets list` shows of each version, kept with the version.
-- Keep in step with the other engine's file.
--
-- JSON array of {n: name, v: value version, d: digest, l: length, c: created at, u: updated at},
-- derived in the same transaction from the version's members and their values (which stay the
-- record): listing an app reads one row instead of joining a row of each table per secret.
-- NULL for versions written before v4; those are listed through the join.
ALTER TABLE secret_versions ADD COLUMN listing TEXT;
