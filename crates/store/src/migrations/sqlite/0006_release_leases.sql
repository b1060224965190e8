-- coffer schema v6 (sqlite): who orchestrates a running release, and until when. Keep in step
-- with the other engine's file.
--
-- `owner` is the fencing token of the one orchestration that may change the release (a random
-- id per API process and claim); every store change made on the release's behalf requires it
-- and `status = 'running'` in the same transaction. `lease_until` (microseconds) is renewed by
-- the owner's writes; once it has passed, any API replica may take the release over (and roll
-- it back). Releases from before this version have no owner and a lease long expired: the
-- first API to look takes them over, as the recovery at start always did.
ALTER TABLE releases ADD COLUMN owner TEXT;
ALTER TABLE releases ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
