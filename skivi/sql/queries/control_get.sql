-- control_get: what every claim must honour beyond its own filters: the paused queues and
-- tasks (table pause) and the tasks under a limit (table job_limit), read by each engine's
-- fetcher once per poll interval and on the 'control' NOTIFY (migration 0008). Two tiny
-- tables, read whole.
-- Parameters: none.
-- Returns one row: paused_queues, paused_tasks (text[], null when none: the claim's filters
-- then fold away), limited_tasks (text[], null when no limit is declared).
select (select array_agg(p.name order by p.name) from {schema}.pause p where p.kind = 'queue')
           as paused_queues,
       (select array_agg(p.name order by p.name) from {schema}.pause p where p.kind = 'task')
           as paused_tasks,
       (select array_agg(distinct t.task order by t.task)
        from {schema}.job_limit l cross join unnest(l.tasks) as t(task)) as limited_tasks;
