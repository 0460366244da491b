-- job_fail_many: record failed attempts, one statement per batch.
--
-- A job with attempts left goes back to waiting, runnable after its backoff delay (computed
-- per task by the child that ran it), with its error; a partially successful batch job keeps
-- only its failed items (%(payloads)s). A job on its last attempt, or one failed as final
-- (no handler, superseded), is exhausted: deleted and recorded in job_history with its
-- error and reason. Serial queues are freed either way. The error is the exception's
-- message (last_error); its traceback goes to job_traceback while the job waits for its next
-- attempt (a failure without one clears the row there), and to
-- job_history.last_error_traceback when it is exhausted (see 0005_error_details.sql).
--
-- Superseded: add_keyed_job (and remove_job) strip the key of a running job and raise its
-- attempts to max_attempts, so it is not retried. The row keeps no other trace of this, so
-- the engine sends the attempts the job had when it was claimed (%(attempts)s): nothing else
-- changes a running job's attempts, so a keyless row with more attempts than at claim lost
-- its key while it ran, and is recorded with reason 'superseded' instead of 'max_attempts'.
-- A job that was on its last attempt anyway keeps 'max_attempts' (it would be exhausted
-- regardless).
--
-- Guard: only rows still claimed by this engine under the same lease. Found by primary key,
-- never through an index on running jobs (see job_complete_many.sql).
-- Parameters: %(engine)s; pairwise arrays %(ids)s bigint[], %(leases)s bigint[],
-- %(errors)s text[], %(delays)s float8[] (seconds), %(finals)s text[] (null, or the reason
-- for exhausting now), %(payloads)s text[] (null, or the JSON payload to keep),
-- %(attempts)s integer[] (the job's attempts as claimed; null if unknown),
-- %(tracebacks)s text[] (null, or the error's traceback).
-- Returns (id, outcome, lease, attempts, max_attempts, run_at, reason) with outcome 'failed'
-- or 'exhausted'; run_at is when a failed job runs again (null for an exhausted one); reason
-- is the one recorded in job_history for an exhausted job (null for a failed one), so the
-- engine's event and log line say what the history says instead of working it out again.
with u as materialized (
    select *
    from unnest(%(ids)s::bigint[], %(leases)s::bigint[], %(errors)s::text[],
                %(delays)s::float8[], %(finals)s::text[], %(payloads)s::text[],
                %(attempts)s::integer[], %(tracebacks)s::text[])
        as u(id, lease, error, delay, final, payload, claimed_attempts, traceback)
), back as (
    -- Attempts left: the row moves back from job_running to job, waiting out its backoff.
    delete from {schema}.job_running j
    using u
    where j.id = u.id and j.lease = u.lease
      and j.locked_by is not distinct from %(engine)s
      and u.final is null and j.attempts < j.max_attempts
    returning j.*, u.error, u.delay, u.payload as new_payload, u.traceback
), retried as (
    insert into {schema}.job as j (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, lease, created_at, updated_at,
        created_by)
    select b.id, b.task_identifier, b.queue_name, coalesce(b.new_payload::jsonb, b.payload),
           b.priority, now() + make_interval(secs => b.delay), b.attempts, b.max_attempts,
           b.error,
           case when w.id is not null then null else b.key end,
           b.flags, b.lease, b.created_at, now(), b.created_by
    from back b
    -- Its key went to a new job while it ran: it waits without one. A join, not a subquery
    -- per row (which planned a scan of job for each, and a JIT compile of the statement).
    left join {schema}.job w on w.key = b.key
    returning j.id, j.lease, j.queue_name, j.attempts, j.max_attempts, j.run_at
), exhausted as (
    delete from {schema}.job_running j
    using u
    where j.id = u.id and j.lease = u.lease
      and j.locked_by is not distinct from %(engine)s
      and (u.final is not null or j.attempts >= j.max_attempts)
    returning j.*, u.error, u.traceback,
              coalesce(u.final,
                       case when j.key is null and j.attempts > u.claimed_attempts
                            then 'superseded' else 'max_attempts' end) as reason,
              coalesce(u.payload::jsonb, j.payload) as final_payload
), traced as (
    insert into {schema}.job_traceback (id, traceback)
    select b.id, b.traceback from back b where b.traceback is not null
    on conflict (id) do update set traceback = excluded.traceback
), untraced as (
    -- A failure without a traceback (a timeout, a lost process) leaves none of an earlier
    -- failure behind; an exhausted job's row goes with the job.
    delete from {schema}.job_traceback t
    using (select b.id from back b where b.traceback is null
           union all select e.id from exhausted e) as gone
    where t.id = gone.id
), recorded as (
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome, reason,
        last_error_traceback)
    select e.id, e.task_identifier, e.queue_name, e.final_payload, e.priority, e.run_at,
           e.attempts, e.max_attempts, e.error, e.key, e.flags, e.created_at, 'exhausted',
           e.reason, e.traceback
    from exhausted e
    on conflict (id) do nothing
), finished as (
    select id, lease, queue_name, 'failed' as outcome, attempts, max_attempts, run_at,
           null::text as reason
    from retried
    union all
    select id, lease, queue_name, 'exhausted', attempts, max_attempts, null::timestamptz,
           reason
    from exhausted
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    from finished f
    where f.queue_name is not null and q.queue_name = f.queue_name and q.job_id = f.id
)
select f.id, f.outcome, f.lease, f.attempts, f.max_attempts, f.run_at, f.reason
from finished f;
