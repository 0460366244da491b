-- migration_lock: try to take the transaction-level advisory lock that serialises
-- migrations of one schema across every process, in the migration's own transaction.
-- Transaction-level, so it works through a transaction-mode pooler, and a migrator that dies
-- releases it when its transaction ends. Keyed by (class 'skvi', hash of the schema name).
-- A try, not a wait: the runner (skivi/db/migrate.py) polls it, so that while it waits it
-- can say who holds the lock (migration_lock_holder.sql) and give up after
-- database.migration_lock_timeout instead of blocking for ever.
-- Parameters: %(schema)s (the schema name as text).
-- Returns one row: locked (true if this transaction now holds the lock).
select pg_try_advisory_xact_lock(1936422505, hashtext(%(schema)s)) as locked;
