-- 0004_error_details: how a job failed, as Graphile Worker records it.
--
-- Why: permanently_fail_jobs (0001) moved a job to history with the attempts it had, so a job
-- an operator gave up on before it ever ran read "attempts 0 of 25" there, as if it had
-- retries left. Graphile Worker's permanently_fail_jobs sets attempts = max_attempts: the job
-- is exhausted, and its record says so. greatest() keeps a count that is already higher (a
-- job whose max_attempts was lowered by reschedule_jobs after it ran).
-- Safe to apply while engines run: create or replace function swaps the body atomically;
-- engines do not call this function (operators do, through `skivi jobs fail`).

create or replace function {schema}.permanently_fail_jobs(job_ids bigint[],
                                                          error_message text default null)
returns setof {schema}.job_history
language sql
as $$
    with moved as (
        delete from {schema}.job j
        where j.id = any(job_ids) and j.locked_by is null
        returning j.*
    )
    insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, created_at, outcome, reason)
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at,
        greatest(m.attempts, m.max_attempts), m.max_attempts,
        coalesce(error_message, 'permanently failed by an operator'), m.key,
        m.flags, m.created_at, 'exhausted', 'permanently_failed'
    from moved m
    returning *;
$$;
