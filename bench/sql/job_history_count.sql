-- job_history_count: the rows in job_history: the jobs that were exhausted (after a
-- drain or a steady run: must be none).
--
-- Parameters: none.
-- Returns one row: count.
select count(*) from {schema}.job_history;
