-- dashboard_job_estimate: the planner's estimates of the pending jobs in each state, for
-- the overview of a large job table (when dashboard_job_counts.sql was truncated).
--
-- Why this shape: counting a million rows takes a scan of a million rows; the planner's
-- estimate, from the statistics autovacuum keeps (pg_statistic on run_at, attempts,
-- last_error), costs a planning step and no read. So this is an EXPLAIN of one select per
-- state, joined by UNION ALL: the plan is an Append whose children are the states in this
-- order (waiting, scheduled, failed), each with its "Plan Rows". Nothing is executed. The
-- states are those of job_list.sql (pending jobs only: claimed jobs are few and counted
-- exactly). A failed job is told by its last_error alone here (job_list.sql also asks for
-- attempts > 0, which every job with an error has but for a keyed job replaced after a
-- failure): the planner multiplies the selectivities of two conditions as if they were
-- independent, which these two are not, and would say 1/400 where 1/20 are failed.
-- Estimates are as fresh as the last analyze of the table.
--
-- Parameters: none.
-- Returns one row: the plan as JSON (a list holding one object with "Plan").
explain (format json)
select 1 from {schema}.job j
where j.locked_by is null and j.last_error is null and j.run_at <= now()
union all
select 1 from {schema}.job j
where j.locked_by is null and j.last_error is null and j.run_at > now()
union all
select 1 from {schema}.job j
where j.locked_by is null and j.last_error is not null;
