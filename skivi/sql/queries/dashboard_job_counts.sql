-- dashboard_job_counts: the live jobs by state for the dashboard's overview, exact while
-- the table is small.
--
-- Why this shape: the overview is polled while an operator watches it, and the job table
-- may hold millions of rows, so nothing here reads more than %(cap)s rows of each kind.
-- Pending jobs (locked_by null) are read up to %(cap)s rows (a LIMIT under the aggregate:
-- the scan itself stops) and split into waiting, scheduled and failed as job_list.sql
-- defines them; claimed jobs come from job_running (locked_by not null: at most what
-- engines hold), also up to %(cap)s, split into running (reported started by their engine's
-- heartbeat, engine.running) and claimed. When a cap is reached, truncated is true and the
-- pending figures are lower bounds over the rows read: the dashboard then shows the
-- planner's estimates (dashboard_job_estimate.sql) instead, as Oban Web does above 50k rows.
--
-- Parameters: %(cap)s (most rows read of pending and of claimed jobs).
-- Returns one row: waiting, scheduled, failed, running, claimed, truncated, total_estimate
-- (the table's row count in the planner statistics, pg_class.reltuples; -1 before the first
-- analyze).
with pending as (
    select j.run_at, (j.attempts > 0 and j.last_error is not null) as failed
    from {schema}.job j
    where j.locked_by is null
    limit %(cap)s
), locked as (
    select exists (select 1 from {schema}.engine e
                   where e.id = j.locked_by and j.id = any(e.running)) as started
    from {schema}.job_running j
    where j.locked_by is not null
    limit %(cap)s
), p as (
    select count(*) filter (where not x.failed and x.run_at <= now()) as waiting,
           count(*) filter (where not x.failed and x.run_at > now()) as scheduled,
           count(*) filter (where x.failed) as failed,
           count(*) as n
    from pending x
), l as (
    select count(*) filter (where y.started) as running,
           count(*) filter (where not y.started) as claimed,
           count(*) as n
    from locked y
)
select p.waiting, p.scheduled, p.failed, l.running, l.claimed,
       (p.n >= %(cap)s or l.n >= %(cap)s) as truncated,
       (select c.reltuples from pg_class c
        where c.oid = '{schema}.job'::regclass)::bigint as total_estimate
from p, l;
