-- job_cancel_sweep: settle the cancel requests whose job is no longer claimed.
--
-- A request is normally settled by the engine that holds the job (job_cancel_many.sql). A
-- claim can also end another way before that engine learns of the request: its handler
-- failed (job_fail_many exhausts it: the request raised its attempts), its engine released
-- it unstarted (it waits with run_at 'infinity') or died (the rescuer exhausts it), or it
-- completed (a handler that returned before the request reached it: it stays completed, see
-- README "Cancel"). Here, for each such request: a job left waiting goes to history as
-- cancelled; a job gone whose history row says exhausted is relabelled cancelled, with its
-- request's who and why and the attempts, run_at and key it really had; and the request
-- goes. A job claimed again meanwhile keeps its request (its engine acts on it).
-- Run by an engine whose heartbeat found such requests (engine_heartbeat.sql); requests are
-- locked SKIP LOCKED, so engines sweeping at once share them out.
--
-- Parameters: none.
-- Returns the number of requests settled.
with stray as (
    select c.*
    from {schema}.job_cancel c
    where not exists (select 1 from {schema}.job_running j
                      where j.id = c.id and j.locked_by is not null)
    for update of c skip locked
), moved as (
    delete from {schema}.job j
    using stray s
    where j.id = s.id and j.locked_by is null
    returning j.*
), untraced as (
    delete from {schema}.job_traceback t using moved m where t.id = m.id
    returning t.id, t.traceback
), recorded as (
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome, reason,
        last_error_traceback, cancelled_by, cancel_requested_at)
    -- Only a release leaves a disarmed job waiting, and a release gives its attempt back.
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, s.run_at,
           greatest(s.attempts - 1, 0), m.max_attempts, m.last_error, s.key, m.flags,
           m.created_at,
           'cancelled', s.reason, (select t.traceback from untraced t where t.id = m.id),
           s.requested_by, s.requested_at
    from moved m
    join stray s on s.id = m.id
    on conflict (id) do nothing
), gone as (
    select s.* from stray s
    where not exists (select 1 from {schema}.job j where j.id = s.id)
), relabelled as (
    update {schema}.job_history h
    set outcome = 'cancelled', reason = g.reason, cancelled_by = g.requested_by,
        cancel_requested_at = g.requested_at, run_at = g.run_at, attempts = g.attempts,
        key = g.key
    from gone g
    where h.id = g.id and h.outcome = 'exhausted'
), settled as (
    delete from {schema}.job_cancel c
    where c.id in (select m.id from moved m union all select g.id from gone g)
    returning c.id
)
select count(*) from settled;
