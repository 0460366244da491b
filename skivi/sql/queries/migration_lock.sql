-- migration_lock: try to take the session-level advisory lock that serialises migrations of
-- one schema across every process. Session-level, so a migrator that dies releases it with
-- its connection. Keyed by (class 'skvi', hash of the schema name).
-- A try, not a wait: the runner (skivi/db/migrate.py) polls it, so that while it waits it
-- can say who holds the lock (migration_lock_holder.sql) and give up after
-- database.migration_lock_timeout instead of blocking for ever.
-- Parameters: %(schema)s (the schema name as text).
-- Returns one row: locked (true if this session now holds the lock).
select pg_try_advisory_lock(1936422505, hashtext(%(schema)s)) as locked;
