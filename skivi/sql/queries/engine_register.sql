-- engine_register: give a starting engine its identity and take its liveness lock.
--
-- Every process start gets a new id (Oban #862: identities reused across restarts meant
-- orphans were never rescued). The session advisory lock (hashtext(schema), id) is held for
-- as long as this connection lives; when the engine dies its connection closes, the lock is
-- freed, and job_rescue.sql on any other engine sees it within seconds. Insert and lock are
-- one statement (one transaction), so no other engine can see the row before it is locked.
--
-- Parameters: %(schema)s, %(hostname)s, %(pid)s, %(version)s, %(lease_timeout)s,
-- %(processes)s, %(concurrency)s. Returns (id).
with e as (
    insert into {schema}.engine (hostname, pid, version, lease_timeout, processes, concurrency)
    values (%(hostname)s, %(pid)s, %(version)s, %(lease_timeout)s, %(processes)s,
            %(concurrency)s)
    returning id
)
select e.id, pg_advisory_lock(hashtext(%(schema)s::text), (e.id %% 2147483647)::integer)
from e;
