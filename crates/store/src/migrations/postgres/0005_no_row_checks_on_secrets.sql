-- A secrets version's values and members are only ever inserted by the transaction that moves
-- the app to that version: it has updated (and so locked) the app's row and inserted the
-- version's row (whose foreign key to the app stays) before them, so their parents exist by
-- construction. PostgreSQL checked each of their rows' foreign keys with a query of its own:
-- 30 queries for a write of 10 secrets, half of the database's time per write (BENCHMARKS.md,
-- "coffer on PostgreSQL"). Without them the store deletes an app's members and values itself,
-- after the app's row, in the same transaction (`Store::delete_app`).
ALTER TABLE secret_members DROP CONSTRAINT secret_members_app_id_name_value_version_fkey;
ALTER TABLE secret_members DROP CONSTRAINT secret_members_app_id_version_fkey;
ALTER TABLE secret_values DROP CONSTRAINT secret_values_app_id_fkey;
-- Only the dropped cascade from a value to its members used it.
DROP INDEX secret_members_value;
