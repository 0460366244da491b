-- job_queue_insert_past: the queues scenario's past queues: empty serial-queue rows named
-- past-1 ... past-N, as a queue per tenant leaves them once its jobs are done.
--
-- Why this shape: one insert ... select generate_series; rows already there are kept.
--
-- Parameters: %(count)s (N).
-- Returns nothing.
insert into {schema}.job_queue (queue_name)
select 'past-' || g
from generate_series(1, %(count)s) as g
on conflict do nothing;
