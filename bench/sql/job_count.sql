-- job_count: every row in the job table (enqueue scenario: how many add_job / add_jobs
-- rows were stored).
--
-- Parameters: none.
-- Returns one row: count.
select count(*) from {schema}.job_live;
