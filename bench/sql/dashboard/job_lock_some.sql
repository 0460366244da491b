-- job_lock_some: move %(count)s of the oldest waiting jobs to job_running, claimed by engine
-- %(engine)s, as an engine's in-flight jobs look (no engine row: the dashboard shows them as
-- claimed).
--
-- Parameters: %(count)s, %(engine)s.
-- Returns nothing.
with moved as (
    delete from {schema}.job j
    where j.id in (select id from {schema}.job where attempts = 0 order by id limit %(count)s)
    returning j.*
)
insert into {schema}.job_running
select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at, m.attempts,
       m.max_attempts, m.last_error, m.key, m.flags, %(engine)s, now(), 1, m.created_at,
       m.updated_at, m.created_by
from moved m;
