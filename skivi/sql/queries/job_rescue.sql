-- job_rescue: make the jobs of dead engines runnable again.
--
-- An engine is dead when its heartbeat is older than its lease_timeout, both on the
-- database's clock (a lease, not a session lock: this works per transaction, through a
-- transaction-mode pooler), or, with %(orphans)s, when it holds jobs but has no engine row
-- at all. Its claimed jobs go back to waiting at once, their attempt counted (it was counted
-- at claim), with an error saying what happened; those on their last attempt are exhausted.
-- Serial queues it held are freed and its row is deleted. Dead engines are locked FOR UPDATE
-- SKIP LOCKED so two rescuers never handle the same engine; the updates re-check locked_by,
-- so a job finished meanwhile is left alone (River #1302). When any job went back to waiting,
-- one NOTIFY on the jobs channel wakes the listening engines.
--
-- A server that has just (re)started has seen no heartbeat from anyone for as long as it was
-- down, live engines included: nobody is declared dead while its start is less than
-- %(restart_grace)s seconds old, which gives live engines time to reconnect and heartbeat.
-- (The rescuer also waits a lease after it reconnects itself: skivi/engine/maintenance.py.)
--
-- The orphan probe reads every claimed job (job_running), so it runs on some rounds only
-- (%(orphans)s false skips it); the dead-row rule reads only the engine table. In a round
-- that finds no dead engine, the statements on jobs and queues are not run at all (the
-- `exists (select from dead)` one-time filters): without them the exhausted-jobs delete read
-- every claimed job looking for a first match before its join saw that `dead` was empty,
-- 3 ms a round with 8,000 jobs in hand, twice a second on every engine of a fleet.
--
-- Parameters: %(engine)s (the rescuer, never rescued by itself), %(restart_grace)s (seconds),
-- %(orphans)s (bool).
-- Returns (engines, retried, exhausted, fleet): the rescued engine ids, the counts, and how
-- many engine rows there are (live engines, and dead ones not yet rescued), which spaces
-- each engine's orphan probes so the fleet as a whole makes a few.
with dead_rows as (
    select e.id
    from {schema}.engine e
    where e.id <> %(engine)s
      and e.heartbeat_at < now() - make_interval(secs => e.lease_timeout)
      and pg_postmaster_start_time()
          < now() - make_interval(secs => %(restart_grace)s::float8)
    for update skip locked
), dead as (
    select id from dead_rows
    union
    select distinct j.locked_by
    from {schema}.job_running j
    where %(orphans)s
      and j.locked_by is not null
      and j.locked_by <> %(engine)s
      and not exists (select 1 from {schema}.engine e where e.id = j.locked_by)
), back as (
    delete from {schema}.job_running j
    using dead
    where j.locked_by = dead.id and j.attempts < j.max_attempts
      and exists (select from dead)
    returning j.*
), retried as (
    -- Waiting again, runnable at once, the attempt consumed; its key, unless a new job took
    -- it while this one was claimed.
    insert into {schema}.job as j (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, lease, created_at, updated_at,
        created_by)
    select b.id, b.task_identifier, b.queue_name, b.payload, b.priority, b.run_at,
           b.attempts, b.max_attempts,
           'engine ' || b.locked_by || ' was lost while this job ran',
           case when w.id is not null then null else b.key end,
           b.flags, b.lease, b.created_at, now(), b.created_by
    from back b
    -- Its key went to a new job while it ran: it waits without one. A join, not a subquery
    -- per row (which planned a scan of job for each, and a JIT compile of the statement).
    left join {schema}.job w on w.key = b.key
    returning j.id
), exhausted as (
    delete from {schema}.job_running j
    using dead
    where j.locked_by = dead.id and j.attempts >= j.max_attempts
      and exists (select from dead)
    returning j.*
), untraced as (
    -- Their last error is now the lost engine: an earlier failure's traceback goes.
    delete from {schema}.job_traceback t
    using (select id from retried union all select id from exhausted) as gone
    where t.id = gone.id
), recorded as (
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome, reason)
    select e.id, e.task_identifier, e.queue_name, e.payload, e.priority, e.run_at, e.attempts,
           e.max_attempts, 'engine ' || e.locked_by || ' was lost while this job ran', e.key,
           e.flags, e.created_at, 'exhausted', 'max_attempts'
    from exhausted e
    on conflict (id) do nothing
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    where q.locked_by in (select id from dead)
      and exists (select from dead)
), gone as (
    delete from {schema}.engine e using dead where e.id = dead.id
), counted as (
    select (select count(*) from retried) as retried
)
select array(select id from dead order by id) as engines,
       c.retried,
       (select count(*) from exhausted) as exhausted,
       (select count(*) from {schema}.engine) as fleet
from counted c
-- One NOTIFY when jobs went back to waiting, as an enqueue's: every listening engine wakes
-- and claims what it has room for. The rescuer's own fetcher is woken too, but it may have
-- no room, and the rest would otherwise find the jobs only at their next poll.
left join lateral (select pg_notify({channel}, '') where c.retried > 0) notified on true;
