-- job_count_by_queue: queue depth for an operator (`skivi queues`): per queue and task, the
-- jobs waiting (runnable now), scheduled (run_at in the future), running (claimed, and
-- reported started by the engine's heartbeat) and claimed (claimed, not reported started),
-- and the age of the oldest runnable job.
--
-- Cost: an operator command, not something to poll (the engine's metrics use job_stats.sql,
-- which never scans). Counting per task needs each job's task_identifier, which no index
-- holds, so pending jobs are read from the heap: one sequential pass over the job table,
-- O(pending jobs), stopped after %(scan_limit)s rows (a LIMIT under the aggregate, so the
-- scan itself stops; rows stream into a hash aggregate of one entry per queue and task).
-- Running jobs come from job_running (migration 0015): a few per engine slot, also capped
-- at %(scan_limit)s. When either cap is hit,
-- truncated is true and the figures are lower bounds over the rows read (which rows is up to
-- the scan order), not totals. With the CLI's default cap (1,000,000) that is about a second
-- of sequential read at worst; nothing is locked (a plain MVCC read).
-- Failed jobs waiting for their next attempt count as waiting or scheduled by their run_at.
-- A job of a serial queue counts as waiting even while its queue is held by a running job.
--
-- Parameters: %(scan_limit)s (most rows read from each of pending and running).
-- Returns one row per (queue_name, task_identifier) that has jobs, queues without a name
-- (null) first, then by name and task: queue_name, task_identifier, waiting, scheduled,
-- running, claimed, oldest_runnable_age (float8 seconds; Infinity when the oldest runnable
-- run_at is -infinity; null when nothing is runnable), truncated.
with pending as (
    select j.queue_name, j.task_identifier, j.run_at
    from {schema}.job j
    where j.locked_by is null
    limit %(scan_limit)s
), running as (
    select j.queue_name, j.task_identifier,
           exists (select 1 from {schema}.engine e
                   where e.id = j.locked_by and j.id = any(e.running)) as started
    from {schema}.job_running j
    where j.locked_by is not null
    limit %(scan_limit)s
), counted as (
    select p.queue_name, p.task_identifier, p.run_at, p.run_at <= now() as runnable,
           false as running, false as started
    from pending p
    union all
    select r.queue_name, r.task_identifier, null, false, true, r.started
    from running r
)
select c.queue_name, c.task_identifier,
       count(*) filter (where c.runnable) as waiting,
       count(*) filter (where not c.runnable and not c.running) as scheduled,
       count(*) filter (where c.started) as running,
       count(*) filter (where c.running and not c.started) as claimed,
       -- Epochs subtracted, not timestamps: now() - '-infinity' is an error, while the
       -- epoch of -infinity is -Infinity, so such a job's age is Infinity.
       (extract(epoch from now())
        - extract(epoch from min(c.run_at) filter (where c.runnable)))::float8
           as oldest_runnable_age,
       -- Totals over all groups (a window over the aggregates), so each CTE is read once
       -- and streams into the aggregate instead of being materialized.
       (sum(count(*) filter (where not c.running)) over () >= %(scan_limit)s
        or sum(count(*) filter (where c.running)) over () >= %(scan_limit)s) as truncated
from counted c
group by c.queue_name, c.task_identifier
order by c.queue_name nulls first, c.task_identifier;
