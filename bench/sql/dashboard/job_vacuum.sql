-- job_vacuum: vacuum and analyze the filled tables, as autovacuum would soon after a bulk
-- load (statistics for the estimates, the visibility map for index-only scans).
--
-- Parameters: none.
-- Returns nothing.
vacuum (analyze) {schema}.job, {schema}.job_running, {schema}.job_history;
