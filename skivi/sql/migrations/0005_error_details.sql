-- 0005_error_details: how a job failed, as Graphile Worker records it.
--
-- Why: permanently_fail_jobs (0001) moved a job to history with the attempts it had, so a job
-- an operator gave up on before it ever ran read "attempts 0 of 25" there, as if it had
-- retries left. Graphile Worker's permanently_fail_jobs sets attempts = max_attempts: the job
-- is exhausted, and its record says so. greatest() keeps a count that is already higher (a
-- job whose max_attempts was lowered by reschedule_jobs after it ran).
--
-- Why, second: last_error held the whole traceback, where Graphile Worker stores the error's
-- message ("TEST_ERROR" for `raise Exception("TEST_ERROR")`). last_error now holds the
-- message (skivi.engine.child.error_message) and the traceback is kept apart:
-- job_history.last_error_traceback for finished jobs, and the table job_traceback for live
-- ones, one row per job whose last failure had a traceback. The live job table gets no
-- column because add_jobs (0001) returns `job.*` of its inserts under a fixed column list:
-- a new column on job would break every unkeyed add_jobs call until add_jobs is replaced.
-- job_traceback is written and cleared by the engine's statements (job_fail_many,
-- job_complete_many, job_rescue) and by the operator functions replaced here; a stale row
-- (a job replaced by add_keyed_job keeps its id and loses its error) is shown only while the
-- job has a last_error, and is replaced by the next failure or cleared when the job ends.
--
-- Safe to apply while engines run: create or replace function swaps bodies atomically; the
-- new column is nullable without a default (no rewrite) and the new table starts empty.
-- Engines of the previous version keep working: they write the traceback into last_error as
-- before and never touch job_traceback.

alter table {schema}.job_history add column last_error_traceback text;

create table {schema}.job_traceback (
    id        bigint not null,
    traceback text   not null,
    constraint job_traceback_pkey primary key (id)
);

create or replace function {schema}.permanently_fail_jobs(job_ids bigint[],
                                                          error_message text default null)
returns setof {schema}.job_history
language sql
as $$
    with moved as (
        delete from {schema}.job j
        where j.id = any(job_ids) and j.locked_by is null
        returning j.*
    ), cleared as (
        -- The operator's reason replaces the last error, so its traceback goes too.
        delete from {schema}.job_traceback t using moved m where t.id = m.id
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

-- remove_job / complete_jobs: as in 0001, and the removed jobs' tracebacks go with them.
create or replace function {schema}.remove_job(job_key text)
returns setof {schema}.job
language sql
as $$
    with locked as (
        update {schema}.job j
        set key = null, attempts = greatest(j.attempts, j.max_attempts), updated_at = now()
        where j.key = job_key and j.locked_by is not null
        returning j.*
    ), removed as (
        delete from {schema}.job j
        where j.key = job_key and j.locked_by is null
        returning j.*
    ), cleared as (
        delete from {schema}.job_traceback t using removed r where t.id = r.id
    )
    select * from removed union all select * from locked;
$$;

create or replace function {schema}.complete_jobs(job_ids bigint[])
returns setof {schema}.job
language sql
as $$
    with done as (
        delete from {schema}.job j
        where j.id = any(job_ids) and j.locked_by is null
        returning j.*
    ), cleared as (
        delete from {schema}.job_traceback t using done d where t.id = d.id
    )
    select * from done;
$$;

-- retry_jobs: as in 0001; the traceback of the last error comes back with it.
create or replace function {schema}.retry_jobs(job_ids bigint[])
returns setof {schema}.job
language sql
as $$
    with moved as (
        delete from {schema}.job_history h
        where h.id = any(job_ids) and h.outcome = 'exhausted'
        returning h.*
    ), queues as materialized (
        -- Before the insert below reads it: the rows of the jobs' queues, held (see
        -- hold_queues, migration 0004).
        select {schema}.hold_queues(array(select m.queue_name from moved m)) as held
    ), tracebacks as (
        insert into {schema}.job_traceback (id, traceback)
        select m.id, m.last_error_traceback from moved m
        where m.last_error_traceback is not null
        on conflict (id) do update set traceback = excluded.traceback
    )
    insert into {schema}.job (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, created_at)
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, now(), 0,
        m.max_attempts, m.last_error,
        case when exists (select 1 from {schema}.job j where j.key = m.key) then null else m.key end,
        m.flags, m.created_at
    from moved m, queues
    returning *;
$$;
