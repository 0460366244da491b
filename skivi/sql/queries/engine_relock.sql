-- engine_relock: after its connection was lost (a PostgreSQL restart), an engine takes its
-- liveness lock back, but only if its row still exists, i.e. nobody has declared it dead
-- and rescued its jobs meanwhile. If the lock is held elsewhere, or the row is gone, the
-- engine must take a new identity (engine_register.sql).
-- Parameters: %(schema)s, %(engine)s. Returns (ok) or no row.
select pg_try_advisory_lock(hashtext(%(schema)s::text), (e.id %% 2147483647)::integer)
from {schema}.engine e
where e.id = %(engine)s;
