-- migration_lock_holder: who holds the migration lock of a schema (migration_lock.sql), for
-- the log line of a migrator waiting for it.
--
-- Why: a migrator that waits silently looks hung. pg_locks says which backend holds the
-- advisory lock (classid 1936422505, objid = hashtext(schema) as an unsigned 32-bit value,
-- objsubid 2 for the two-key form); pg_stat_activity says what that session is and since
-- when. A session that is 'idle' (no statement, no transaction) while holding the lock is
-- not migrating: typically a migrator whose process died while its backend lives on (a
-- connection the server has not noticed is gone), which only pg_terminate_backend ends.
-- pg_locks has no acquisition time: backend_start and state_change are the bounds we have.
--
-- Parameters: %(schema)s (the schema name as text).
-- Returns zero rows (nobody holds it any more) or one: pid, application_name, client
-- (address:port, or null for a local socket), backend_start, state, state_change,
-- state_age (float8 seconds since state_change), query (its last statement, shortened).
select a.pid,
       a.application_name,
       case when a.client_addr is null then null
            else host(a.client_addr) || ':' || a.client_port end as client,
       a.backend_start,
       a.state,
       a.state_change,
       extract(epoch from now() - a.state_change)::float8 as state_age,
       left(a.query, 120) as query
from pg_locks l
join pg_stat_activity a on a.pid = l.pid
where l.locktype = 'advisory'
  and l.granted
  and l.classid = 1936422505::oid
  and l.objsubid = 2
  and l.objid = (hashtext(%(schema)s::text)::bigint & 4294967295)::oid
  and l.database = (select d.oid from pg_database d where d.datname = current_database())
limit 1;
