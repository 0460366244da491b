-- job_cancel_many: record the engine's cancelled claims, one statement per batch, as
-- job_complete_many and job_fail_many record theirs (the engine's other statements are
-- unchanged: only claims that had a cancel request come here).
--
-- Each job is deleted and recorded in job_history as 'cancelled' with its request's who,
-- why and when (job_cancel, which goes with it) and the attempts, run_at and key it had
-- before the request disarmed it (see 0007_cancel.sql); last_error is how its attempt ended (the
-- handler's exception, the killed process), or the error it had. Its serial queue is
-- freed, its traceback row and any kept result of an earlier run (job_result) deleted. Only
-- cancelled jobs touch these tables.
--
-- Guard: only rows still claimed by this engine under the same lease. Found by primary key,
-- never through an index on running jobs (see job_complete_many.sql).
-- Parameters: %(engine)s; pairwise arrays %(ids)s bigint[], %(leases)s bigint[], %(errors)s
-- text[] (null: the job never started), %(tracebacks)s text[].
-- Returns (id, lease, reason, cancelled_by) of the claims actually recorded (a missing pair
-- was stale: rescued, or finished otherwise).
with u as materialized (
    select *
    from unnest(%(ids)s::bigint[], %(leases)s::bigint[], %(errors)s::text[],
                %(tracebacks)s::text[]) as u(id, lease, error, traceback)
), cancelled as (
    delete from {schema}.job_running j
    using u
    where j.id = u.id and j.lease = u.lease
      and j.locked_by is not distinct from %(engine)s
    returning j.*, u.error, u.traceback
), requests as (
    delete from {schema}.job_cancel c using cancelled d where c.id = d.id
    returning c.*
), untraced as (
    delete from {schema}.job_traceback t using cancelled d where t.id = d.id
    returning t.id, t.traceback
), unkept as (
    delete from {schema}.job_result r using cancelled d where r.id = d.id
), recorded as (
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome, reason,
        last_error_traceback, cancelled_by, cancel_requested_at)
    select d.id, d.task_identifier, d.queue_name, d.payload, d.priority,
           coalesce(r.run_at, d.run_at), coalesce(r.attempts, d.attempts), d.max_attempts,
           coalesce(d.error, d.last_error),
           case when r.id is not null then r.key else d.key end, d.flags, d.created_at,
           'cancelled',
           r.reason,
           case when d.error is not null then d.traceback
                else (select t.traceback from untraced t where t.id = d.id) end,
           r.requested_by, r.requested_at
    from cancelled d
    left join requests r on r.id = d.id
    on conflict (id) do nothing
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    from cancelled d
    where d.queue_name is not null and q.queue_name = d.queue_name and q.job_id = d.id
)
select d.id, d.lease, r.reason, r.requested_by as cancelled_by
from cancelled d
left join requests r on r.id = d.id;
