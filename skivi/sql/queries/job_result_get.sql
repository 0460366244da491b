-- job_result_get: what became of one job, for skivi.get_result / skivi.wait_for.
--
-- Looked up where a job can be, first match wins: the live table (waiting; failed, which
-- means waiting for a retry after an error; running, which means claimed by an engine), then
-- the kept results (completed with its value, or exhausted with its last error), then the
-- history (a completed job without a kept value with worker.history on; an exhausted job,
-- however it was exhausted: a crash, the rescuer, an operator). Three primary-key lookups in
-- one statement, so the answer is one snapshot: a job finishing meanwhile is seen either
-- live or finished, never neither.
--
-- Parameters: %(id)s bigint.
-- Returns at most one row: state, task_identifier, value (jsonb or null), error, attempts,
-- max_attempts (null for a kept result), finished_at (null for a live job).
select x.state, x.task_identifier, x.value, x.error, x.attempts, x.max_attempts,
       x.finished_at
from (
    select 1 as rank,
           case when j.locked_by is not null then 'running'
                when j.attempts > 0 and j.last_error is not null then 'failed'
                else 'waiting' end as state,
           j.task_identifier, null::jsonb as value, j.last_error as error, j.attempts,
           j.max_attempts, null::timestamptz as finished_at
    from {schema}.job_live j where j.id = %(id)s::bigint
    union all
    select 2, r.outcome, r.task_identifier, r.value, r.error, null, null, r.finished_at
    from {schema}.job_result r where r.id = %(id)s::bigint
    union all
    select 3, h.outcome, h.task_identifier, null, h.last_error, h.attempts, h.max_attempts,
           h.finished_at
    from {schema}.job_history h where h.id = %(id)s::bigint
) x
order by x.rank
limit 1;
