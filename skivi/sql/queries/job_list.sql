-- job_list: the live jobs an operator asks for (`skivi jobs list`), oldest id first.
--
-- A job's state is one of, in this order of precedence (Oban's executing / retryable /
-- scheduled / available):
--   running    claimed by an engine (locked_by set) that reported its handler started
--              (engine.running, sent with each heartbeat: see 0003_engine_running.sql);
--   claimed    claimed by an engine, not reported started: in the engine's buffer, behind
--              a busy child, or started since the engine's last heartbeat;
--   failed     not running, attempted and failed at least once (attempts > 0 and
--              last_error set): waiting for its next attempt, whenever that is;
--   scheduled  not running, not failed, run_at in the future;
--   waiting    not running, not failed, runnable now.
-- The payload is read only when %(payload)s is true, so it never leaves the server
-- otherwise.
--
-- Cost: an operator command, not a hot path. The scan walks the primary key in id order and
-- stops after %(limit)s matching rows; a filter that matches few rows may read up to the
-- whole table (one heap visit per row read). Statements are sent once per run, so the
-- planner sees the actual parameters and folds the "is null" filters away.
--
-- Parameters: %(task)s text or null; %(queue)s text or null; %(state)s text or null
-- (running, claimed, failed, scheduled, waiting); %(limit)s; %(payload)s bool; %(id)s
-- bigint or null (that job only: `skivi jobs show`).
-- Returns: id, task_identifier, queue_name, state, priority, run_at, attempts, max_attempts,
-- last_error, key, flags, locked_by, locked_at, created_at, updated_at, payload (null unless
-- asked), last_error_traceback (job_traceback's row, shown only while the job has a
-- last_error: a job replaced by add_keyed_job keeps its id but loses its error).
select j.id, j.task_identifier, j.queue_name, s.state, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error, j.key, j.flags, j.locked_by, j.locked_at, j.created_at,
       j.updated_at,
       case when %(payload)s::boolean then j.payload end as payload,
       case when j.last_error is not null then
           (select t.traceback from {schema}.job_traceback t where t.id = j.id)
       end as last_error_traceback
from {schema}.job_live j
cross join lateral (
    select case
        when j.locked_by is not null then
            case when exists (select 1 from {schema}.engine e
                              where e.id = j.locked_by and j.id = any(e.running))
                 then 'running' else 'claimed' end
        when j.attempts > 0 and j.last_error is not null then 'failed'
        when j.run_at > now() then 'scheduled'
        else 'waiting'
    end as state
) s
where (%(id)s::bigint is null or j.id = %(id)s::bigint)
  and (%(task)s::text is null or j.task_identifier = %(task)s::text)
  and (%(queue)s::text is null or j.queue_name = %(queue)s::text)
  and (%(state)s::text is null or s.state = %(state)s::text)
order by j.id
limit %(limit)s;
