-- engine_list: the engines registered in this schema, for an operator (`skivi workers`).
--
-- Alive means what job_rescue.sql decides on: a heartbeat younger than the engine's
-- lease_timeout, measured on the server's clock. A row that is not alive is removed by the
-- next rescue round. Cost: the engine table holds one row per live engine.
--
-- Parameters: none.
-- Returns, by id: id, hostname, pid, version, started_at, heartbeat_age (float8 seconds),
-- lease_timeout, processes, concurrency, in_flight, stopping, alive.
select e.id, e.hostname, e.pid, e.version, e.started_at,
       extract(epoch from now() - e.heartbeat_at)::float8 as heartbeat_age,
       e.lease_timeout, e.processes, e.concurrency, e.in_flight, e.stopping,
       e.heartbeat_at >= now() - make_interval(secs => e.lease_timeout) as alive
from {schema}.engine e
order by e.id;
