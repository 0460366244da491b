-- job_release_many: give back claimed jobs that never started (prefetched, or queued in a
-- child at shutdown): waiting again at once, their attempt not consumed.
--
-- Guard: only rows still claimed by this engine under the same lease. Found by primary key,
-- never through an index on running jobs (see job_complete_many.sql).
-- Parameters: %(engine)s; %(ids)s bigint[]; %(leases)s bigint[].
-- Returns the ids released.
with back as (
    delete from {schema}.job_running j
    using unnest(%(ids)s::bigint[], %(leases)s::bigint[]) as u(id, lease)
    where j.id = u.id and j.lease = u.lease
      and j.locked_by is not distinct from %(engine)s
    returning j.*
), released as (
    -- Back to waiting, runnable at once, the attempt not consumed; its key, unless a new job
    -- took it while this one was claimed.
    insert into {schema}.job as j (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, lease, created_at, updated_at,
        created_by)
    select b.id, b.task_identifier, b.queue_name, b.payload, b.priority, b.run_at,
           greatest(b.attempts - 1, 0), b.max_attempts, b.last_error,
           case when w.id is not null then null else b.key end,
           b.flags, b.lease, b.created_at, b.updated_at, b.created_by
    from back b
    -- Its key went to a new job while it ran: it waits without one. A join, not a subquery
    -- per row (which planned a scan of job for each, and a JIT compile of the statement).
    left join {schema}.job w on w.key = b.key
    returning j.id, j.queue_name
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    from released r
    where r.queue_name is not null and q.queue_name = r.queue_name and q.job_id = r.id
)
select released.id from released;
