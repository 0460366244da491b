-- 0008_controls: paused queues and tasks, and concurrency and rate limits by key.
--
-- Why: operators stop a queue or a task without stopping engines (skivi queues pause, skivi
-- tasks pause), and limit how many jobs of one key (a tenant, an API account: a payload
-- field, or the task itself) run at once or start per period, across the whole fleet. Both
-- are enforced where jobs are claimed, in the database, so they hold whatever engines run.
--
-- Tables
--   pause       one row per paused queue or task. Engines read it once per poll interval
--               (control_get.sql, and at once on the 'control' NOTIFY the functions below
--               send) and pass what it holds to the claim as parameters, so with nothing
--               paused the claim is the statement it was. The reserved queue name
--               '@parallel' stands for the jobs without a queue (the parallel queue).
--   job_limit   the declared limits: what worker configurations ([[limits]], and typed
--               tasks' limits=) say, upserted by every engine at start
--               (job_limit_upsert_many.sql).
--   limit_key   the enforcement: one row per (limit, key), created by the first claim that
--               meets the key, holding the key's state: the running jobs that hold it
--               (concurrency) or its recent starts (rate). A claim locks the rows of the
--               keys it would take jobs of FOR NO KEY UPDATE, in key order, as a serial
--               queue's job_queue row is taken (job_claim_limited.sql); the state is in the
--               locked row itself, so the lock sees what another claim committed, and two
--               claims never admit past a limit. A job holds its concurrency keys from its
--               claim to the transaction that finishes or releases it
--               (limit_key_held_many.sql and limit_key_drop_many.sql), or until the rescue
--               once its engine is gone (limit_key_stale.sql). Rate: a start is
--               admitted while fewer than N starts of the key are within one period (a
--               sliding-window log of the last N starts).
--
-- Functions: pause_queue, resume_queue, pause_task, resume_task (and set_paused, which they
-- call).
--
-- Safe to apply while engines run: new tables and functions only; engines of the previous
-- version never read them (they do not honour pauses or limits).

create table {schema}.pause (
    kind      text        not null,
    name      text        not null,
    paused_at timestamptz not null default now(),
    constraint pause_pkey primary key (kind, name),
    constraint pause_kind_check check (kind in ('queue', 'task')),
    constraint pause_name_check check (length(name) between 1 and 128)
);

create table {schema}.job_limit (
    name       text        not null,
    tasks      text[]      not null,
    -- The payload path of the key (payload #>> key_path); null: the task identifier.
    key_path   text[],
    -- The concurrency, or the rate's count, per key.
    slots      integer     not null,
    -- The rate's period in seconds; null for a concurrency limit.
    period     double precision,
    updated_at timestamptz not null default now(),
    constraint job_limit_pkey primary key (name),
    constraint job_limit_name_check check (length(name) between 1 and 128),
    constraint job_limit_period_check check (period is null or period > 0),
    constraint job_limit_slots_check check (slots between 1 and 10000),
    constraint job_limit_tasks_check check (cardinality(tasks) >= 1)
);

create table {schema}.limit_key (
    limit_name  text        not null,
    key         text        not null,
    -- Concurrency: the running jobs that hold the key, as (id, lease, engine) triples in
    -- three arrays, pairwise; the limit allows job_limit.slots of them.
    held_ids    bigint[]    not null default '{{}}',
    held_leases bigint[]    not null default '{{}}',
    held_by     bigint[]    not null default '{{}}',
    -- Rate: the starts within the last period, oldest first; at most job_limit.slots.
    starts      timestamptz[] not null default '{{}}',
    constraint limit_key_pkey primary key (limit_name, key),
    constraint limit_key_limit_fkey foreign key (limit_name)
        references {schema}.job_limit (name) on delete cascade,
    constraint limit_key_held_check check (
        cardinality(held_ids) = cardinality(held_leases)
        and cardinality(held_ids) = cardinality(held_by))
)
-- Every claim and every finish of a limited job updates its keys' rows, so the table has
-- only its primary key (no column that changes is indexed) and room on its pages: the
-- updates are HOT, pruned in place.
with (fillfactor = 50);

-- pause_queue / resume_queue, pause_task / resume_task: persisted pauses. A paused queue or
-- task is skipped by every claim (jobs of a serial queue whose next job is of a paused task
-- wait behind it, in order); running jobs finish. Each returns true when it changed
-- something (false: already paused, or not paused), and wakes the engines (NOTIFY
-- 'control') so those that LISTEN honour it at once, the others at their next poll.
-- '@parallel' is the queue of the jobs without a queue.
create function {schema}.set_paused(p_kind text, p_name text, p_paused boolean)
returns boolean
language sql
as $$
    with added as (
        insert into {schema}.pause (kind, name)
        select p_kind, p_name where p_paused
        on conflict do nothing
        returning 1
    ), removed as (
        delete from {schema}.pause p
        where not p_paused and p.kind = p_kind and p.name = p_name
        returning 1
    )
    select (exists (select 1 from added) or exists (select 1 from removed))
           and pg_notify({channel}, 'control') is not null;
$$;

create function {schema}.pause_queue(queue_name text) returns boolean
language sql as $$ select {schema}.set_paused('queue', queue_name, true) $$;

create function {schema}.resume_queue(queue_name text) returns boolean
language sql as $$ select {schema}.set_paused('queue', queue_name, false) $$;

create function {schema}.pause_task(task_identifier text) returns boolean
language sql as $$ select {schema}.set_paused('task', task_identifier, true) $$;

create function {schema}.resume_task(task_identifier text) returns boolean
language sql as $$ select {schema}.set_paused('task', task_identifier, false) $$;
