-- job_claim: claim up to %(limit)s runnable jobs for this engine, in one statement and one
-- round trip, through claim_jobs (migration 0010, where the claim's SQL and its reasons
-- are): run in autocommit, it is its own transaction, and the function carries the lock
-- timeout and the generic plans that the claim used to need a transaction of its own for.
--
-- Parameters: %(engine)s engine id; %(limit)s; %(serial_limit)s; %(max_bytes)s; %(tasks)s,
-- %(forbidden)s, %(queues)s, %(paused_queues)s, %(paused_tasks)s text[] or null (see the
-- migration); %(lock_timeout)s the lock timeout in milliseconds, as text.
-- Returns (id, lease, message, task_identifier, cut): see the migration.
select c.id, c.lease, c.message, c.task_identifier, c.cut
from {schema}.claim_jobs(%(engine)s, %(limit)s, %(serial_limit)s, %(max_bytes)s,
                         %(tasks)s::text[], %(forbidden)s::text[], %(queues)s::text[],
                         %(paused_queues)s::text[], %(paused_tasks)s::text[],
                         %(lock_timeout)s) as c;
