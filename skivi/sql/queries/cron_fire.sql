-- cron_fire: decide, in the database, which cron ticks fire, and enqueue them: one statement.
--
-- Why this shape (Graphile Worker's scheduleCronJobs): the upsert of cron.last_execution is
-- the claim. It only moves last_execution forward ("newer than" guard), and the enqueue joins
-- the rows the upsert returned, in the same statement and so the same transaction. When N
-- engines send the same tick, the first to lock the cron row moves it; the others wait on
-- that row lock, re-check the guard against the committed row, fail it and enqueue nothing.
-- A restarted scheduler that sends a tick again is refused the same way. So each
-- (identifier, tick) is enqueued at most once, whatever the number of engines or restarts.
-- Ticks older than known_since are refused too: a new entry is never backfilled.
--
-- An ON CONFLICT DO UPDATE cannot touch one row twice, so a batch holds at most one tick per
-- identifier; the scheduler sends a backlog of one entry (backfill) as successive batches,
-- oldest first. Rows are claimed in identifier order, so two engines firing the same
-- entries lock cron rows in the same order and cannot deadlock; jobs are added in key order
-- (as job_insert_keyed_many does). The tick CTEs are materialized so add_keyed_job runs
-- only for claimed ticks, whatever plan is chosen.
--
-- Enqueue: add_keyed_job (migration 0004), with the entry's job key and mode, by default
-- 'cron:<identifier>' in unsafe_dedupe mode: while the previous run's job exists (queued,
-- retrying or running) nothing is added and the outcome is 'deduplicated'. A null job_key
-- never conflicts, so the job is simply inserted. run_at is the tick itself, so backfilled
-- runs are claimed oldest first and no run starts before its tick. Serial queues get their
-- job_queue row from add_keyed_job (held until commit: see hold_queues), and one NOTIFY
-- wakes the engines (delivered at commit), as in job_insert_keyed_many.
--
-- Parameters: %(ticks)s: jsonb array of objects, one per identifier: identifier, ts (the
-- tick), task, payload (with _cron merged in), queue_name, priority, max_attempts, job_key,
-- job_key_mode (the entry's effective mode, CronEntry.job_key_mode: unsafe_dedupe for the
-- default key, replace for an explicit one; unsafe_dedupe if absent); missing job options take the table defaults.
-- Returns one row per tick, in identifier order: identifier, ts, claimed (false: another
-- engine or an earlier run already fired this tick or a later one), outcome ('inserted',
-- 'updated', 'deduplicated'; null when not claimed), job_id (the job added, or for
-- 'deduplicated' the existing job that holds the key; null when not claimed).
-- Guard: coalesce(cron.last_execution, cron.known_since) < ts.
with tick as materialized (
    select t.*
    from jsonb_to_recordset(%(ticks)s::jsonb) as t(
        identifier text, ts timestamptz, task text, payload jsonb, queue_name text,
        priority smallint, max_attempts integer, job_key text, job_key_mode text)
), claimed as (
    insert into {schema}.cron as c (identifier, known_since, last_execution)
    select tick.identifier, tick.ts, tick.ts
    from tick
    order by tick.identifier
    on conflict (identifier) do update set last_execution = excluded.last_execution
    where coalesce(c.last_execution, c.known_since) < excluded.last_execution
    returning c.identifier
), due as materialized (
    select tick.* from tick join claimed using (identifier)
), added as materialized (
    -- The ordered subquery makes the calls themselves run in key order.
    select due.identifier, a.outcome, (a.job).id as job_id, (a.job).run_at as run_at
    from (select * from due order by due.job_key, due.identifier) as due,
        lateral {schema}.add_keyed_job(
            due.task, coalesce(due.payload, '{{}}'::jsonb), due.queue_name, due.ts,
            coalesce(due.max_attempts, 25), coalesce(due.priority, 0::smallint), null::text[],
            due.job_key, coalesce(due.job_key_mode, 'unsafe_dedupe')) as a
), notified as (
    select pg_notify({channel},
                     case when min(added.run_at) <= now() then ''
                          else extract(epoch from min(added.run_at))::text end)
    from added
    where added.outcome <> 'deduplicated'
    having count(*) > 0
)
select tick.identifier, tick.ts, added.identifier is not null as claimed, added.outcome,
       added.job_id
from tick
left join added using (identifier)
left join notified on true
order by tick.identifier;
