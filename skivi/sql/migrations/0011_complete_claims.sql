-- 0011_complete_claims: the completion as a function, so a flush of successes is one statement
-- and one round trip.
--
-- Why: job_complete_many.sql ran in a transaction of its own to carry two settings
-- (transaction_settings_local.sql: a lock timeout, and generic plans), so a flush cost four
-- round trips (BEGIN, the settings, the statement, COMMIT) where the claim, since migration
-- 0010, costs one. Through a transaction-mode pooler with prepared statements off the
-- statement was also planned again on every flush (a CTE over five relations, ~0.5 ms);
-- PL/pgSQL plans its query once per session and keeps the generic plan (the SET clause).
-- The lock timeout is set by set_config(..., true), local to the statement's transaction.
-- A flush that also fails, releases or cancels jobs, stores results or gives back limit
-- keys keeps its transaction (all or nothing) and calls this inside it.
--
-- The completion (until this migration, the text of job_complete_many.sql).
--
-- Guard: only rows still claimed by this engine under the same lease are touched, so a late
-- completion from an attempt that was rescued (and perhaps claimed again elsewhere) changes
-- nothing. Completed jobs are deleted; with history on (p_history) they are also recorded
-- in job_history (with the traceback of their last failed attempt, if any). Their serial
-- queues are freed and their job_traceback rows deleted in the same statement; that table
-- holds only jobs waiting for a retry, so the join is against a handful of rows.
--
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
--
-- Parameters: p_engine; p_ids bigint[]; p_leases bigint[] (pairwise); p_history bool;
-- p_lock_timeout, the lock timeout for the statement's transaction, in milliseconds (text).
--
-- Safe to apply while engines run: a new function; engines of the previous version keep
-- sending the completion as before.

create function {schema}.complete_claims(
    p_engine bigint, p_ids bigint[], p_leases bigint[], p_history boolean,
    p_lock_timeout text, out id bigint, out lease bigint)
returns setof record
language plpgsql
set plan_cache_mode = force_generic_plan
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    perform set_config('lock_timeout', p_lock_timeout, true);
    return query
        with done as (
            delete from {schema}.job j
            where j.id = any(p_ids::bigint[])
              and coalesce((j.id, j.lease) in (select u.id, u.lease
                                               from unnest(p_ids::bigint[], p_leases::bigint[])
                                                    as u(id, lease)), false)
              and j.locked_by is not distinct from p_engine
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
            select d.id, d.task_identifier, d.queue_name, d.payload, d.priority, d.run_at,
                   d.attempts, d.max_attempts, d.last_error, d.key, d.flags, d.created_at,
                   'completed', (select t.traceback from traced t where t.id = d.id)
            from done d
            where p_history
            on conflict (id) do nothing
        )
        select done.id, done.lease from done;
end;
$$;

revoke execute on function {schema}.complete_claims(bigint, bigint[], bigint[], boolean, text)
    from public;
