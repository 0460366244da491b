-- job_advance: make every scheduled job runnable now, for skivi.testing's
-- drain(run_scheduled=True): retries waiting out their backoff and jobs enqueued with a
-- later run_at run in the same drain, as if their time had come.
--
-- Why this shape: through the SQL function reschedule_jobs (migration 0001), as
-- job_retry_many.sql, so only waiting jobs change (it skips claimed ones) and attempts are
-- kept. The ids are chosen in the same statement.
-- Guard: only jobs with locked_by null and run_at in the future.
--
-- Parameters: %(tasks)s text[] or null (only these task identifiers); %(queues)s text[]
-- or null (only jobs of these queues).
-- Returns one row: the number of jobs made runnable.
select count(*)::bigint
from {schema}.reschedule_jobs(
    array(select j.id from {schema}.job j
          where j.locked_by is null
            and j.run_at > now()
            and (%(tasks)s::text[] is null or j.task_identifier = any(%(tasks)s::text[]))
            and (%(queues)s::text[] is null or j.queue_name = any(%(queues)s::text[]))
          order by j.id),
    run_at => now());
