-- job_count_except_backlog: the jobs in the job table other than the backlog ones: those a
-- scenario enqueued and an engine must finish (after a drain: must be none; steady: the
-- backlog of jobs enqueued and not yet completed, sampled every second).
--
-- Parameters: %(backlog_task)s (the backlog jobs' task identifier).
-- Returns one row: count.
select count(*) from {schema}.job_live where task_identifier <> %(backlog_task)s;
