-- engine_heartbeat: prove this engine is alive and report its load; read its pending
-- cancel requests.
-- The heartbeat covers what the liveness lock cannot see (a half-open connection, a frozen
-- host): an engine whose heartbeat is older than its lease_timeout is rescued like a dead one.
-- It also reports which claimed jobs have started (see 0003_engine_running.sql).
-- Cancel requests (job_cancel, 0007_cancel.sql) ride on it, so an engine learns of them
-- within one heartbeat_interval without LISTEN (a transaction-mode pooler, database.listen
-- off) and at no extra round trip: the requests for the jobs this engine holds, and whether
-- any request's job is no longer claimed (job_cancel_sweep.sql then settles it). The table
-- holds only pending requests, so with none both reads are a look at an empty index; the
-- `exists` one-time filter keeps the join from starting at all then: a hash join fetches its
-- first job row before it sees the empty side, and during a drain that walk through the
-- claimed jobs' dead index entries (other engines' finished claims) cost 3 ms a heartbeat.
-- Parameters: %(engine)s, %(in_flight)s, %(stopping)s, %(running)s (bigint[]: ids of the
-- jobs whose handlers have started).
-- Returns no row if the engine was declared dead (its jobs were rescued); else its id, the
-- ids and leases (pairwise bigint[], by id) of its claims with a cancel request, and
-- strays (bool).
with beat as (
    update {schema}.engine
    set heartbeat_at = now(), in_flight = %(in_flight)s, stopping = %(stopping)s,
        running = %(running)s::bigint[]
    where id = %(engine)s
    returning id
), asked as (
    select c.id, j.lease
    from {schema}.job_cancel c
    join {schema}.job_running j on j.id = c.id
    where j.locked_by = %(engine)s
      and exists (select from {schema}.job_cancel)
)
select b.id,
       array(select a.id from asked a order by a.id) as cancel_ids,
       array(select a.lease from asked a order by a.id) as cancel_leases,
       exists (select 1 from {schema}.job_cancel c
               where not exists (select 1 from {schema}.job_running j
                                 where j.id = c.id and j.locked_by is not null)) as strays
from beat b;
