-- job_task_get: one job as the Django tasks backend reports it (skivi.contrib.django.backend:
-- a django.tasks TaskResult needs the call's arguments and times beside the outcome).
--
-- Looked up as job_result_get does, first match wins: the live table (waiting, failed and
-- waiting for a retry, running), then the kept results (joined to the history for the
-- arguments and the traceback, when worker.history keeps them), then the history. Three
-- primary-key lookups in one statement, so the answer is one snapshot. jsonb goes out as
-- text: the statement runs on Django's own connection too, whose jsonb loader gives text
-- (Django's JSONField decodes itself), so the caller always decodes.
--
-- Parameters: %(id)s bigint.
-- Returns at most one row: state (waiting, running, failed, completed, exhausted),
-- task_identifier, payload (json text; null for a kept result without history), value (json
-- text or null), error, traceback, attempts, created_at, started_at (the claim's time, for a
-- running job), finished_at (null for a live job).
select x.state, x.task_identifier, x.payload, x.value, x.error, x.traceback, x.attempts,
       x.created_at, x.started_at, x.finished_at
from (
    select 1 as rank,
           case when j.locked_by is not null then 'running'
                when j.attempts > 0 and j.last_error is not null then 'failed'
                else 'waiting' end as state,
           j.task_identifier, j.payload::text as payload, null::text as value,
           j.last_error as error, t.traceback, j.attempts, j.created_at,
           j.locked_at as started_at, null::timestamptz as finished_at
    from {schema}.job_live j
    left join {schema}.job_traceback t on t.id = j.id
    where j.id = %(id)s::bigint
    union all
    select 2, r.outcome, r.task_identifier, h.payload::text, r.value::text, r.error,
           h.last_error_traceback, h.attempts, h.created_at, null, r.finished_at
    from {schema}.job_result r
    left join {schema}.job_history h on h.id = r.id
    where r.id = %(id)s::bigint
    union all
    select 3, h.outcome, h.task_identifier, h.payload::text, null, h.last_error,
           h.last_error_traceback, h.attempts, h.created_at, null, h.finished_at
    from {schema}.job_history h where h.id = %(id)s::bigint
) x
order by x.rank
limit 1;
