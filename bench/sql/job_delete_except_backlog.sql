-- job_delete_except_backlog: remove the jobs a failed run left behind (all but the backlog
-- ones), so that the next repeat starts with a clean table.
--
-- Parameters: %(backlog_task)s (the backlog jobs' task identifier).
-- Returns nothing.
with waiting as (delete from {schema}.job where task_identifier <> %(backlog_task)s)
delete from {schema}.job_running where task_identifier <> %(backlog_task)s;
