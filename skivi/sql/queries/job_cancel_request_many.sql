-- job_cancel_request_many: cancel jobs, waiting or running (`skivi jobs cancel`,
-- skivi.cancel_jobs), through the SQL function cancel_jobs (migration 0007): a waiting job
-- goes to job_history as cancelled at once; a claimed one gets a request that its engine
-- acts on (it is told by NOTIFY, and reads its requests with each heartbeat).
--
-- Parameters: %(ids)s bigint[] (in the caller's order); %(reason)s text or null (why,
-- recorded as the history row's reason); %(cancelled_by)s text or null (who; null records
-- session_user).
-- Returns one row per distinct id, in that order: id, result ('cancelled', 'requested',
-- 'finished', 'not_found'), locked_by (the engine holding a requested job, else null).
select c.id, c.result, c.locked_by
from {schema}.cancel_jobs(%(ids)s::bigint[], %(reason)s::text, %(cancelled_by)s::text) c;
