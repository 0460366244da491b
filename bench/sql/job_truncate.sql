-- job_truncate: empty the job table between the enqueue scenario's measurements.
--
-- Parameters: none.
-- Returns nothing.
truncate {schema}.job, {schema}.job_running;
