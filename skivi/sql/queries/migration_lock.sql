-- migration_lock: take the session-level advisory lock that serialises migrations of one
-- schema across every process. Session-level, so a migrator that dies releases it with its
-- connection. Keyed by (class 'skvi', hash of the schema name).
-- Parameters: %(schema)s (the schema name as text). Returns one row.
select pg_advisory_lock(1936422505, hashtext(%(schema)s));
