-- job_complete_many: finish successful jobs, one statement per batch.
--
-- Guard: only rows still claimed by this engine under the same lease are touched, so a late
-- completion from an attempt that was rescued (and perhaps claimed again elsewhere) changes
-- nothing. Completed jobs are deleted; with history on (%(history)s) they are also recorded
-- in job_history (with the traceback of their last failed attempt, if any). Their serial
-- queues are freed and their job_traceback rows deleted in the same statement; that table
-- holds only jobs waiting for a retry, so the join is against a handful of rows.
--
-- Parameters: %(engine)s; %(ids)s bigint[]; %(leases)s bigint[] (pairwise); %(history)s bool.
-- Returns (id, lease) of the rows actually completed (a missing pair was stale: rescued or
-- already finished). The lease tells apart two claims of one job in the same batch.
--
-- Plan shape: the batch is found by primary key (`id = any(ids)`, an index scan whatever
-- the statistics say), and each row's lease is checked against the pairs through a hashed
-- subplan (the coalesce keeps the IN from being made a join). Written as a join with
-- unnest(ids, leases), the planner believed the engine test (after an ANALYZE that saw no
-- running job, "no row matches") and planned a scan of the whole table joined in a nested
-- loop with every pair: O(table + batch^2) per flush, measured at 17 us/job in a 40,000-job
-- drain against 5 us/job for this form. The engine test is written "is not distinct from"
-- so that no index on running jobs can serve it (driving the batch from such an index
-- would visit every job the engine ever claimed, dead index entries included). The
-- statements on `done` read it through narrow forms (the queued ones' ids and queues; an
-- array of ids): a data-modifying statement that joins a CTE carries each joined CTE row
-- whole (payload and all) for its recheck. job_traceback is probed only when it holds a
-- row at all: most batches are jobs that never failed, and 500 probes of an empty index
-- cost a microsecond per job.
with done as (
    delete from {schema}.job j
    where j.id = any(%(ids)s::bigint[])
      and coalesce((j.id, j.lease) in (select u.id, u.lease
                                       from unnest(%(ids)s::bigint[], %(leases)s::bigint[])
                                            as u(id, lease)), false)
      and j.locked_by is not distinct from %(engine)s
    returning j.*
), queued as materialized (
    select done.id, done.queue_name from done where done.queue_name is not null
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    from queued
    where q.queue_name = queued.queue_name and q.job_id = queued.id
), traced as (
    delete from {schema}.job_traceback t
    where t.id = any(array(select done.id from done))
      and exists (select from {schema}.job_traceback)
    returning t.id, t.traceback
), recorded as (
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome,
        last_error_traceback)
    select d.id, d.task_identifier, d.queue_name, d.payload, d.priority, d.run_at, d.attempts,
           d.max_attempts, d.last_error, d.key, d.flags, d.created_at, 'completed',
           (select t.traceback from traced t where t.id = d.id)
    from done d
    where %(history)s
    on conflict (id) do nothing
)
select done.id, done.lease from done;
