-- job_count_backlog_untouched: the backlog jobs no engine has touched (backlog scenario's
-- verification: every one of them must be).
--
-- Untouched: never attempted, not locked, no lease taken.
--
-- Parameters: %(backlog_task)s (the backlog jobs' task identifier).
-- Returns one row: count.
select count(*)
from {schema}.job
where task_identifier = %(backlog_task)s
    and attempts = 0
    and locked_by is null
    and lease = 0;
