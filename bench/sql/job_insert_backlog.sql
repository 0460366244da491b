-- job_insert_backlog: the backlog scenario's far-future jobs, in one statement.
--
-- Why this shape: a million add_jobs specs would take longer to build than to insert; one
-- insert ... select generate_series fills the table as fast as the server can. The jobs
-- take the table's defaults (queue, priority, attempts), an empty payload and a run_at in
-- 2100, so no drain may claim one.
--
-- Parameters: %(backlog_task)s (task identifier), %(run_at)s (timestamptz text),
-- %(count)s (how many).
-- Returns nothing.
insert into {schema}.job (task_identifier, payload, run_at)
select %(backlog_task)s, '{{}}'::jsonb, %(run_at)s::timestamptz
from generate_series(1, %(count)s);
