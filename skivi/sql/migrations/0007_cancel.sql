-- 0007_cancel: cancelling jobs, waiting or running (`skivi jobs cancel`, skivi.cancel_jobs).
--
-- Why: an operator must be able to stop a job, not only one that waits (remove_job,
-- permanently_fail_jobs skip running jobs) but one that runs, where it runs (procrastinate
-- PR#1081, Oban's cancel_job, River's JobCancel). cancel_jobs(ids) does both:
--   * a waiting job (not claimed) leaves the queue at once and is recorded in job_history
--     as 'cancelled', with who (cancelled_by) and why (reason);
--   * a claimed job (running, or in an engine's buffer) gets a request in job_cancel and its
--     engine is notified (NOTIFY on the jobs channel, payload 'cancel:<engine id>'); the
--     engine also reads its pending requests with every heartbeat (engine_heartbeat.sql),
--     so it learns of them without LISTEN too. It stops the job (skivi.engine.children) and
--     records it as cancelled with job_cancel_many.sql.
-- A claimed job with a request is disarmed at once, in the same statement: its attempts are
-- raised to max_attempts and its job key dropped (as remove_job does to a running job: a new
-- job may take the key at once), and its run_at set to 'infinity'; the values it had are
-- kept in its job_cancel row, for its history. Whatever ends its claim first,
-- then, it can never run again: the engine's failure write (job_fail_many) exhausts it
-- instead of retrying it, a release (job_release_many) or a rescue leaves it waiting for
-- ever, and no statement of the engine's hot path needs to know about cancels. Those rare
-- ends are tidied by job_cancel_sweep.sql (run by an engine whose heartbeat saw one): a job
-- left waiting is moved to history as cancelled, an exhausted one's history row is relabelled
-- cancelled (with its real attempts and run_at), and the request goes.
--
-- job_history gains cancelled_by and cancel_requested_at; a cancelled job's reason is the
-- operator's (free text, or null) and its outcome 'cancelled'.
--
-- Safe to apply while engines run: a new, empty table; two nullable columns without default
-- (no rewrite); the outcome check is replaced by a wider one. Engines of the previous version
-- ignore the requests (the jobs they hold run to their end; a failure is not retried, as
-- above) and read a 'cancel:' notification as a wake-up.

create table {schema}.job_cancel (
    id           bigint      not null,
    requested_at timestamptz not null default now(),
    requested_by text        not null,
    reason       text,
    -- What the job had before the request disarmed it (see above), for its history row.
    run_at       timestamptz not null,
    attempts     integer     not null,
    key          text,
    constraint job_cancel_pkey primary key (id)
);

alter table {schema}.job_history add column cancelled_by text;
alter table {schema}.job_history add column cancel_requested_at timestamptz;

-- NOT VALID: every row already there passed the narrower check this replaces, so there is
-- nothing to validate, and no scan of the whole history under an exclusive lock. New rows
-- are checked as with any constraint.
alter table {schema}.job_history drop constraint job_history_outcome_check;
alter table {schema}.job_history add constraint job_history_outcome_check
    check (outcome in ('completed', 'exhausted', 'cancelled')) not valid;

-- cancel_jobs: cancel these jobs; one row per distinct id asked for, in the order given.
--   result 'cancelled'  it was waiting: it is in job_history now, outcome 'cancelled'
--          'requested'  it is claimed by engine locked_by: that engine stops it (an async
--                       handler gets CancelledError, a sync one sees ctx.cancelled) and
--                       records it as cancelled; a second request keeps the first's who/why
--          'finished'   it had already finished (it is in job_history)
--          'not_found'  no such job
-- cancelled_by: who asks (default: session_user); reason: why (free text, or null).
-- Jobs are locked in id order (concurrent callers never deadlock); a claim running at the
-- same time either skips a job locked here (it is then cancelled as waiting) or has claimed
-- it first (it is then requested).
create function {schema}.cancel_jobs(job_ids bigint[], reason text default null,
                                     cancelled_by text default null)
returns table (id bigint, result text, locked_by bigint)
language sql
as $$
    with found as materialized (
        select j.id, j.locked_by, j.run_at, j.attempts, j.key
        from {schema}.job j
        where j.id = any(cancel_jobs.job_ids)
        order by j.id
        for update of j
    ), moved as (
        -- Waiting: to history at once.
        delete from {schema}.job j
        using found f
        where j.id = f.id and f.locked_by is null
        returning j.*
    ), untraced as (
        delete from {schema}.job_traceback t using moved m where t.id = m.id
        returning t.id, t.traceback
    ), recorded as (
        insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
            run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome,
            reason, last_error_traceback, cancelled_by, cancel_requested_at)
        select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at,
               m.attempts, m.max_attempts, m.last_error, m.key, m.flags, m.created_at,
               'cancelled', cancel_jobs.reason,
               (select u.traceback from untraced u where u.id = m.id),
               coalesce(cancel_jobs.cancelled_by, session_user::text), now()
        from moved m
        on conflict (id) do nothing
    ), requested as (
        -- Claimed: a request (a second one keeps the first's who and why) ...
        insert into {schema}.job_cancel (id, requested_by, reason, run_at, attempts, key)
        select f.id, coalesce(cancel_jobs.cancelled_by, session_user::text),
               cancel_jobs.reason, f.run_at, f.attempts, f.key
        from found f
        where f.locked_by is not null
        on conflict (id) do nothing
    ), disarmed as (
        -- ... and the job disarmed: whatever ends its claim, it never runs again.
        update {schema}.job j
        set attempts = greatest(j.attempts, j.max_attempts), run_at = 'infinity', key = null,
            updated_at = now()
        from found f
        where j.id = f.id and f.locked_by is not null
    ), notified as (
        select count(pg_notify({channel}, 'cancel:' || e.locked_by)) as engines
        from (select distinct f.locked_by from found f where f.locked_by is not null) e
    ), asked as (
        select x.id, min(x.ord) as ord
        from unnest(cancel_jobs.job_ids) with ordinality as x(id, ord)
        where x.id is not null
        group by x.id
    )
    select a.id,
           case when f.id is not null and f.locked_by is null then 'cancelled'
                when f.id is not null then 'requested'
                when exists (select 1 from {schema}.job_history h where h.id = a.id)
                    then 'finished'
                else 'not_found' end,
           f.locked_by
    from asked a
    cross join notified n
    left join found f on f.id = a.id
    order by a.ord;
$$;
