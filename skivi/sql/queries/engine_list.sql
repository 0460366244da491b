-- engine_list: the engines registered in this schema, for an operator (`skivi workers`).
--
-- Whether each one's liveness lock is held comes from pg_locks, exactly as job_rescue.sql
-- reads it (the session advisory lock (hashtext(schema), id) that engine_register.sql takes):
-- an engine whose lock is free is dead, and the next rescue round removes it. The heartbeat
-- age is measured on the server's clock, as the rescuer does.
-- Cost: the engine table holds one row per live engine; pg_locks is read once.
--
-- Parameters: %(schema)s (the schema name as text).
-- Returns, by id: id, hostname, pid, version, started_at, heartbeat_age (float8 seconds),
-- lease_timeout, processes, concurrency, in_flight, stopping, lock_held.
with alive_locks as (
    select l.objid
    from pg_locks l
    where l.locktype = 'advisory'
      and l.granted
      and l.objsubid = 2
      and l.database = (select d.oid from pg_database d where d.datname = current_database())
      and l.classid = (hashtext(%(schema)s::text)::bigint & 4294967295)::oid
)
select e.id, e.hostname, e.pid, e.version, e.started_at,
       extract(epoch from now() - e.heartbeat_at)::float8 as heartbeat_age,
       e.lease_timeout, e.processes, e.concurrency, e.in_flight, e.stopping,
       ((e.id %% 2147483647)::bigint)::oid in (select a.objid from alive_locks a) as lock_held
from {schema}.engine e
order by e.id;
