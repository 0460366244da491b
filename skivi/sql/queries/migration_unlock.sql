-- migration_unlock: release migration_lock.sql's lock.
-- Parameters: %(schema)s. Returns whether the lock was held.
select pg_advisory_unlock(1936422505, hashtext(%(schema)s));
