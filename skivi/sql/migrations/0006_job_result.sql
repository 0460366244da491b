-- 0006_job_result: the kept results of finished jobs (opt-in: a task's store_result, or
-- worker.store_results).
--
-- Why: skivi.get_result / skivi.wait_for tell an application what became of a job, with the
-- handler's return value. A job leaves the job table when it finishes, and job_history keeps
-- completed jobs only with worker.history (and no value), so the values need a table of their
-- own: one row per finished job of a task that keeps results, written by the engine's
-- completer in the transaction that finishes the job (job_result_store_many.sql), pruned
-- after worker.result_retention by the history pruner (job_result_prune.sql). Jobs of other
-- tasks never touch it: finishing them runs the same statements as before.
--
-- outcome: 'completed' (value: the return value as JSON, a JSON null for None; or SQL null
-- and error saying why it could not be kept) or 'exhausted' (error: the last error).
--
-- Safe to apply while engines run: a new, empty table; engines of the previous version
-- never write it.

create table {schema}.job_result (
    id              bigint      not null,
    task_identifier text        not null,
    outcome         text        not null,
    value           jsonb,
    error           text,
    finished_at     timestamptz not null default now(),
    -- One result per job: a job retried from history (retry_jobs) keeps its id, and its new
    -- end replaces the old one.
    constraint job_result_pkey primary key (id),
    constraint job_result_outcome_check check (outcome in ('completed', 'exhausted'))
);
create index job_result_finished_at_idx on {schema}.job_result (finished_at);
