-- job_claim: claim up to %(limit)s runnable jobs for this engine, in one statement.
--
-- Why this shape (Oban's fetch_jobs, River's JobGetAvailable): candidate ids are chosen and
-- locked in CTEs with FOR UPDATE SKIP LOCKED, ordered by (priority, run_at, id) exactly as
-- the partial claim indexes are, so the scan stops after `limit` index entries however many
-- jobs wait behind them; then one UPDATE stamps the claim.
--   * Jobs without a queue come from job_claim_idx.
--   * Serial queues: a job of a named queue can be claimed only together with its queue's
--     job_queue row, which stays locked (job_id set) until that job is finished or released.
--     A queue therefore yields at most ONE job per claim and none while one of its jobs is
--     in flight, however large the batch (Graphile Worker #621 was this trap). At most
--     %(serial_limit)s of them per claim: what the engine can start now, since a queue's
--     job waiting in an engine's buffer would keep that queue from every other engine.
--   * At most %(max_bytes)s of payload per claim (but always at least one job), so the
--     engine's memory stays bounded whatever producers send: a payload's size is its
--     stored size, or its JSON text's length when it is stored compressed (measured only
--     then, and only for the candidates).
--   * The attempt is counted here, at claim: a job that kills its process every time still
--     reaches max_attempts. lease is bumped so every later write can prove it belongs to
--     this claim.
--
-- Parameters: %(engine)s engine id; %(limit)s; %(tasks)s text[] or null (only these task
-- identifiers: worker.unknown_tasks = "skip"); %(forbidden)s text[] or null (skip jobs with
-- any of these flags); %(queues)s text[] or null (only jobs of these queues);
-- %(serial_limit)s (at most this many serial-queue jobs, <= limit); %(max_bytes)s;
-- %(paused_queues)s / %(paused_tasks)s text[] or null (the pause table as the engine last
-- read it, control_get.sql: skip these queues, '@parallel' being the jobs without one, and
-- these tasks; a serial queue whose next job is of a paused task waits, in order). Null
-- when nothing is paused: the filters fold away and the plan is the unpaused one.
-- Returns (id, lease, message, task_identifier, cut): message is the job as a JSON array, handed
-- as-is to a child process: [id, lease, task, payload, queue_name, priority, run_at,
-- attempts, max_attempts, key, flags, created_at]; the task lets the engine choose the
-- child without parsing the message; cut (the same on every row) is true when jobs were
-- left for the byte limit, so a short claim does not mean the queue is drained.
with recursive unqueued as (
    select j.ctid as tid, j.priority, j.run_at, j.id,
           case when pg_column_compression(j.payload) is null then pg_column_size(j.payload)
                else octet_length(j.payload::text) end as bytes
    from {schema}.job j
    where j.locked_by is null
      and j.queue_name is null
      and %(queues)s::text[] is null
      and j.run_at <= now()
      and (%(tasks)s::text[] is null or j.task_identifier = any(%(tasks)s::text[]))
      and (%(forbidden)s::text[] is null or not coalesce(j.flags && %(forbidden)s::text[], false))
      and not coalesce('@parallel' = any(%(paused_queues)s::text[]), false)
      and (%(paused_tasks)s::text[] is null
           or j.task_identifier <> all(%(paused_tasks)s::text[]))
    order by j.priority, j.run_at, j.id
    limit %(limit)s
    for update of j skip locked
), waiting_queue (queue_name) as (
    -- The serial queues that have unlocked jobs, one index probe each (a loose scan of
    -- job_queue_claim_idx), so a claim never reads job_queue rows of empty queues, however
    -- many past queues there are; with a queue filter, only the queues asked for.
    (select j.queue_name from {schema}.job j
     where j.locked_by is null and j.queue_name is not null and %(queues)s::text[] is null
     order by j.queue_name limit 1)
    union all
    select (select j.queue_name from {schema}.job j
            where j.locked_by is null and j.queue_name > w.queue_name
            order by j.queue_name limit 1)
    from waiting_queue w
    where w.queue_name is not null
), queue_name as (
    select w.queue_name from waiting_queue w where w.queue_name is not null
    union all
    select distinct f.name from unnest(%(queues)s::text[]) as f(name)
), queued as (
    select h.tid, h.priority, h.run_at, h.id, h.bytes
    from queue_name n
    join {schema}.job_queue q on q.queue_name = n.queue_name
    cross join lateral (
        select j.ctid as tid, j.id, j.priority, j.run_at, j.task_identifier as task,
               case when pg_column_compression(j.payload) is null then pg_column_size(j.payload)
                    else octet_length(j.payload::text) end as bytes
        from {schema}.job j
        where j.queue_name = q.queue_name
          and j.locked_by is null
          and j.run_at <= now()
          and (%(tasks)s::text[] is null or j.task_identifier = any(%(tasks)s::text[]))
          and (%(forbidden)s::text[] is null
               or not coalesce(j.flags && %(forbidden)s::text[], false))
        order by j.priority, j.run_at, j.id
        limit 1
    ) h
    where q.job_id is null
      and (%(paused_queues)s::text[] is null or q.queue_name <> all(%(paused_queues)s::text[]))
      and (%(paused_tasks)s::text[] is null or h.task <> all(%(paused_tasks)s::text[]))
    order by h.priority, h.run_at, h.id
    limit %(serial_limit)s
    -- NO KEY UPDATE: enqueues hold queue rows FOR KEY SHARE while they commit (hold_queues,
    -- migration 0004), which this does not wait for or skip; two claims still exclude each
    -- other, and the prune (FOR UPDATE) skips a row a claim holds.
    for no key update of q skip locked
), candidates as (
    select c.tid,
           sum(c.bytes) over (order by c.priority, c.run_at, c.id rows unbounded preceding)
               - c.bytes as before
    from (
        select * from unqueued union all select * from queued
    ) c
    order by c.priority, c.run_at, c.id
    limit %(limit)s
), chosen as (
    select c.tid from candidates c where c.before < %(max_bytes)s
), claimed as (
    update {schema}.job j
    set locked_by = %(engine)s,
        locked_at = now(),
        attempts = j.attempts + 1,
        lease = j.lease + 1
    -- By tuple id (a TID scan): a join with chosen may be planned as a scan of the whole
    -- table, and a primary-key lookup per row is a sixth of the statement. The unqueued
    -- rows are locked, so their tid cannot change; a queued job's row is not, and if it was
    -- updated meanwhile its old tid matches nothing (or fails the recheck): it is simply
    -- not claimed this time.
    where j.ctid = any(array(select chosen.tid from chosen)) and j.locked_by is null
    returning j.id, j.lease, j.task_identifier, j.payload, j.queue_name, j.priority, j.run_at,
              j.attempts, j.max_attempts, j.key, j.flags, j.created_at
), claimed_queued as materialized (
    -- Narrow: an UPDATE joining a CTE carries each joined row whole for its recheck, and
    -- claimed's rows hold the payloads.
    select claimed.id, claimed.queue_name from claimed where claimed.queue_name is not null
), queue_locks as (
    update {schema}.job_queue q
    set job_id = c.id, locked_by = %(engine)s, locked_at = now()
    from claimed_queued c
    where q.queue_name = c.queue_name
)
select c.id, c.lease,
       json_build_array(c.id, c.lease, c.task_identifier, c.payload, c.queue_name, c.priority,
                        c.run_at, c.attempts, c.max_attempts, c.key, c.flags,
                        c.created_at)::text,
       c.task_identifier,
       (select count(*) from candidates) > (select count(*) from chosen) as cut
from claimed c
order by c.priority, c.run_at, c.id;
