-- job_vacuum: vacuum analyze the job table before each timed drain (unless --no-vacuum).
--
-- Why: every run then starts with no dead rows from the last one and the same planner
-- statistics, the ones autoanalyze would give a table filled by a bulk enqueue.
-- Not in a transaction block: the bench runs it in autocommit.
--
-- Parameters: none.
-- Returns nothing.
vacuum (analyze) {schema}.job, {schema}.job_running;
