-- job_history_list: finished jobs an operator asks for (`skivi history list`), most
-- recently finished first.
--
-- The payload is read only when %(payload)s is true, so it never leaves the server
-- otherwise.
-- Cost: walks job_history_finished_at_idx backwards and stops after %(limit)s matching rows;
-- a filter that matches few rows may read up to the whole history.
--
-- Parameters: %(task)s text or null; %(outcome)s text or null (completed, exhausted);
-- %(limit)s; %(payload)s bool; %(id)s bigint or null (that job only: `skivi history show`).
-- Returns: id, task_identifier, queue_name, outcome, reason, attempts, max_attempts,
-- last_error, key, flags, priority, run_at, created_at, finished_at, payload (null unless
-- asked), last_error_traceback.
select h.id, h.task_identifier, h.queue_name, h.outcome, h.reason, h.attempts,
       h.max_attempts, h.last_error, h.key, h.flags, h.priority, h.run_at, h.created_at,
       h.finished_at,
       case when %(payload)s::boolean then h.payload end as payload,
       h.last_error_traceback
from {schema}.job_history h
where (%(id)s::bigint is null or h.id = %(id)s::bigint)
  and (%(task)s::text is null or h.task_identifier = %(task)s::text)
  and (%(outcome)s::text is null or h.outcome = %(outcome)s::text)
order by h.finished_at desc, h.id desc
limit %(limit)s;
