-- 0001_initial: Skivi's first schema.
--
-- Why: everything a Skivi instance keeps lives in one schema ({schema}); two schemas in one
-- database are two independent instances. This file is composed with psycopg.sql, so {schema}
-- is an Identifier, {channel} a Literal, and literal braces are doubled.
-- Safe to apply while engines run: there are none before this migration.
--
-- Tables
--   job          waiting, scheduled and running jobs (completed ones are deleted)
--   job_queue    one row per serial queue name; locked while one of its jobs runs
--   job_history  terminal records: exhausted jobs, and completed jobs when history is on
--   cron         last execution of every cron entry (fire-once across engines and restarts)
--   engine       live engines, their heartbeat and capacity
--
-- Functions (callable by any client, from triggers too)
--   add_job, add_jobs, remove_job, complete_jobs, permanently_fail_jobs, reschedule_jobs,
--   retry_jobs

create sequence {schema}.job_id_seq as bigint;

create table {schema}.job (
    id              bigint      not null default nextval('{schema}.job_id_seq'),
    task_identifier text        not null,
    queue_name      text,
    payload         jsonb       not null default '{{}}'::jsonb,
    priority        smallint    not null default 0,
    run_at          timestamptz not null default now(),
    attempts        integer     not null default 0,
    max_attempts    integer     not null default 25,
    last_error      text,
    key             text,
    flags           text[],
    -- Claim identity: the engine holding the job and a counter bumped on every claim. Every
    -- completion, failure and release matches (id, lease) so a late write from an attempt
    -- that was rescued and claimed again changes nothing.
    locked_by       bigint,
    locked_at       timestamptz,
    lease           bigint      not null default 0,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    constraint job_pkey primary key (id),
    constraint job_attempts_check check (attempts >= 0),
    constraint job_key_check check (length(key) between 1 and 512),
    constraint job_locked_check check ((locked_by is null) = (locked_at is null)),
    constraint job_max_attempts_check check (max_attempts >= 1),
    constraint job_queue_name_check check (length(queue_name) between 1 and 128),
    constraint job_task_identifier_check check (length(task_identifier) between 1 and 128)
);
alter sequence {schema}.job_id_seq owned by {schema}.job.id;

-- The claim path. Partial indexes hold only unlocked rows, in claim order, so the first N
-- entries are the N jobs to claim however many jobs wait behind them (scheduled in the
-- future or at a lower priority). Jobs of serial queues have their own index, led by the
-- queue name, so the head of each queue is one index probe.
create index job_claim_idx on {schema}.job (priority, run_at, id)
    where locked_by is null and queue_name is null;
create index job_queue_claim_idx on {schema}.job (queue_name, priority, run_at, id)
    where locked_by is null and queue_name is not null;
-- Job keys are unique among live jobs. Partial, so the great majority of jobs, which have no
-- key, cost no entry here at enqueue.
create unique index job_key_idx on {schema}.job (key) where key is not null;
-- Rescue finds running jobs (a few per engine slot) without scanning the table. Deliberately
-- NOT keyed on locked_by: completion statements filter on locked_by = <engine>, and right
-- after an ANALYZE (which sees no running job) the planner would drive them from an index on
-- locked_by, visiting every job the engine ever claimed (dead index entries included) per
-- batch: measured at 8.5 s for one 1,000-row batch. Without it they go by primary key.
create index job_locked_idx on {schema}.job (locked_at) where locked_by is not null;

create table {schema}.job_queue (
    queue_name text        not null,
    -- The running job that holds the queue; null while the queue is free.
    job_id     bigint,
    locked_by  bigint,
    locked_at  timestamptz,
    constraint job_queue_pkey primary key (queue_name),
    constraint job_queue_locked_check check ((job_id is null) = (locked_by is null))
);

create table {schema}.job_history (
    id              bigint      not null,
    task_identifier text        not null,
    queue_name      text,
    payload         jsonb       not null,
    priority        smallint    not null,
    run_at          timestamptz not null,
    attempts        integer     not null,
    max_attempts    integer     not null,
    last_error      text,
    key             text,
    flags           text[],
    created_at      timestamptz not null,
    finished_at     timestamptz not null default now(),
    outcome         text        not null,
    -- Why a job was exhausted: max_attempts, no_handler, permanently_failed, superseded.
    reason          text,
    -- One terminal record per job: the primary key is the job's own id.
    constraint job_history_pkey primary key (id),
    constraint job_history_outcome_check check (outcome in ('completed', 'exhausted'))
);
create index job_history_finished_at_idx on {schema}.job_history (finished_at);

create table {schema}.cron (
    identifier     text        not null,
    known_since    timestamptz not null default now(),
    last_execution timestamptz,
    constraint cron_pkey primary key (identifier)
);

create table {schema}.engine (
    id            bigint      generated always as identity,
    hostname      text        not null,
    pid           integer     not null,
    version       text        not null,
    started_at    timestamptz not null default now(),
    heartbeat_at  timestamptz not null default now(),
    lease_timeout double precision not null,
    processes     integer     not null,
    concurrency   integer     not null,
    in_flight     integer     not null default 0,
    stopping      boolean     not null default false,
    constraint engine_pkey primary key (id)
);

-- add_jobs: enqueue many jobs in one call.
--
-- specs is a JSON array of objects with the fields of one job: task (required), payload,
-- queue_name, run_at, max_attempts, priority, flags, job_key, job_key_mode. Returns one row per
-- spec: ord (the spec's 1-based position in specs), outcome ('inserted'; 'updated' when a
-- job_key replaced a pending job; 'deduplicated' when unsafe_dedupe kept an existing job and
-- added nothing) and the job as stored. Unkeyed specs go in with one insert; keyed specs follow
-- Graphile Worker's job_key semantics one by one, in key order so concurrent callers take row
-- locks in the same order. Wakes listening engines with one NOTIFY when a job is runnable now.
create function {schema}.add_jobs(specs jsonb)
returns table (
    ord bigint, outcome text,
    id bigint, task_identifier text, queue_name text, payload jsonb, priority smallint,
    run_at timestamptz, attempts integer, max_attempts integer, last_error text, key text,
    flags text[], locked_by bigint, locked_at timestamptz, lease bigint,
    created_at timestamptz, updated_at timestamptz
)
language plpgsql
as $$
#variable_conflict use_column
declare
    v_spec record;
    v_added record;
    v_ords bigint[];
    v_earliest timestamptz;
begin
    if jsonb_typeof(specs) is distinct from 'array' then
        raise exception 'add_jobs: specs must be a JSON array, got %',
            coalesce(jsonb_typeof(specs), 'null') using errcode = '22023';
    end if;

    -- One pass to check what the typed record conversion below cannot.
    select s.ord, s.task, s.job_key_mode, s.job_key into v_spec
    from rows from (jsonb_to_recordset(specs) as (task text, job_key_mode text, job_key text))
            with ordinality as s(task, job_key_mode, job_key, ord)
    where s.task is null
       or coalesce(s.job_key_mode, 'replace') not in ('replace', 'preserve_run_at', 'unsafe_dedupe')
    limit 1;
    if found then
        if v_spec.task is null then
            raise exception 'add_jobs: spec % has no task', v_spec.ord using errcode = '22023';
        end if;
        raise exception 'add_jobs: spec % has job_key_mode %; expected replace, preserve_run_at or unsafe_dedupe',
            v_spec.ord, quote_literal(v_spec.job_key_mode) using errcode = '22023';
    end if;

    insert into {schema}.job_queue (queue_name)
    select distinct e ->> 'queue_name' from jsonb_array_elements(specs) e
    where e ->> 'queue_name' is not null
    on conflict do nothing;

    -- Unkeyed specs: one insert. Ids come from the column default in the order the specs are
    -- read, so the n-th id belongs to the n-th unkeyed spec (RETURNING cannot see the source
    -- rows, and a join back would cost a pass per row).
    v_ords := array(
        select s.ord
        from rows from (jsonb_to_recordset(specs) as (job_key text))
            with ordinality as s(job_key, ord)
        where s.job_key is null
        order by s.ord);
    return query
    with ins as (
        insert into {schema}.job (task_identifier, queue_name, payload, priority, run_at,
                                  max_attempts, flags)
        select s.task, s.queue_name, coalesce(s.payload, '{{}}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()),
               coalesce(s.max_attempts, 25), s.flags
        from jsonb_to_recordset(specs) as s(
            task text, payload jsonb, queue_name text, run_at timestamptz,
            max_attempts integer, priority smallint, flags text[], job_key text)
        where s.job_key is null
        returning *
    )
    select v_ords[row_number() over (order by ins.id)], 'inserted'::text, ins.*
    from ins;

    for v_spec in
        select s.* from rows from (jsonb_to_recordset(specs) as (task text, payload jsonb, queue_name text, run_at timestamptz, max_attempts integer, priority smallint, flags text[], job_key text, job_key_mode text))
            with ordinality as s(task, payload, queue_name, run_at, max_attempts, priority, flags, job_key, job_key_mode, ord)
        where s.job_key is not null
        order by s.job_key, s.ord
    loop
        select * into v_added from {schema}.add_keyed_job(
            v_spec.task, coalesce(v_spec.payload, '{{}}'::jsonb), v_spec.queue_name,
            coalesce(v_spec.run_at, now()), coalesce(v_spec.max_attempts, 25),
            coalesce(v_spec.priority, 0::smallint), v_spec.flags, v_spec.job_key,
            coalesce(v_spec.job_key_mode, 'replace'));
        ord := v_spec.ord;
        outcome := v_added.outcome;
        id := (v_added.job).id;
        task_identifier := (v_added.job).task_identifier;
        queue_name := (v_added.job).queue_name;
        payload := (v_added.job).payload;
        priority := (v_added.job).priority;
        run_at := (v_added.job).run_at;
        attempts := (v_added.job).attempts;
        max_attempts := (v_added.job).max_attempts;
        last_error := (v_added.job).last_error;
        key := (v_added.job).key;
        flags := (v_added.job).flags;
        locked_by := (v_added.job).locked_by;
        locked_at := (v_added.job).locked_at;
        lease := (v_added.job).lease;
        created_at := (v_added.job).created_at;
        updated_at := (v_added.job).updated_at;
        return next;
    end loop;

    select min(coalesce((e ->> 'run_at')::timestamptz, now())) into v_earliest
    from jsonb_array_elements(specs) e;
    if v_earliest is not null then
        -- An empty payload means "runnable now"; otherwise the earliest run_at (epoch seconds)
        -- lets engines set a timer instead of waiting for their next poll.
        perform pg_notify({channel},
            case when v_earliest <= now() then ''
                 else extract(epoch from v_earliest)::text end);
    end if;
end;
$$;

-- add_keyed_job: one job with a job_key (Graphile Worker's semantics).
--   replace          update the pending job with this key (new payload, run_at, ...): debounce
--   preserve_run_at  the same, but keep the pending job's run_at: throttle
--   unsafe_dedupe    if any job with this key exists, keep it and add nothing
-- A job with this key that is running (locked) loses its key and will not be retried, and a
-- new job is inserted: both run. A job that had failed starts afresh (attempts 0, no error).
-- When both payloads are JSON arrays they are concatenated (batch jobs).
-- outcome: 'inserted', 'updated' or 'deduplicated'.
create function {schema}.add_keyed_job(
    p_task text, p_payload jsonb, p_queue_name text, p_run_at timestamptz,
    p_max_attempts integer, p_priority smallint, p_flags text[], p_job_key text,
    p_job_key_mode text, out job {schema}.job, out outcome text
)
language plpgsql
as $$
declare
    v_id bigint;
    v_inserted boolean;
begin
    if p_job_key_mode = 'unsafe_dedupe' then
        loop
            insert into {schema}.job as j (task_identifier, queue_name, payload, priority, run_at,
                                           max_attempts, flags, key)
            values (p_task, p_queue_name, p_payload, p_priority, p_run_at, p_max_attempts,
                    p_flags, p_job_key)
            on conflict (key) where key is not null do nothing
            returning j.* into job;
            if found then
                outcome := 'inserted';
                return;
            end if;
            select j.* into job from {schema}.job j where j.key = p_job_key;
            if found then
                outcome := 'deduplicated';
                return;
            end if;
            -- The conflicting job went away between the two statements: try again.
        end loop;
    end if;

    loop
        -- A running job keeps running but gives up its key and its retries.
        update {schema}.job j
        set key = null, attempts = greatest(j.attempts, j.max_attempts), updated_at = now()
        where j.key = p_job_key and j.locked_by is not null;

        insert into {schema}.job as j (task_identifier, queue_name, payload, priority, run_at,
                                       max_attempts, flags, key)
        values (p_task, p_queue_name, p_payload, p_priority, p_run_at, p_max_attempts, p_flags,
                p_job_key)
        on conflict (key) where key is not null do update set
            task_identifier = excluded.task_identifier,
            queue_name = excluded.queue_name,
            payload = case
                when jsonb_typeof(j.payload) = 'array' and jsonb_typeof(excluded.payload) = 'array'
                    then j.payload || excluded.payload
                else excluded.payload end,
            priority = excluded.priority,
            run_at = case
                when p_job_key_mode = 'preserve_run_at' and j.attempts = 0 then j.run_at
                else excluded.run_at end,
            max_attempts = excluded.max_attempts,
            flags = excluded.flags,
            attempts = 0,
            last_error = null,
            updated_at = now()
        where j.locked_by is null
        returning j.id, j.xmax = 0 into v_id, v_inserted;
        if found then
            select j.* into job from {schema}.job j where j.id = v_id;
            outcome := case when v_inserted then 'inserted' else 'updated' end;
            return;
        end if;
        -- The keyed job was claimed between the two statements: go round again, which
        -- strips its key and inserts a new job.
    end loop;
end;
$$;

-- add_job: enqueue one job. The same options as add_jobs; returns the same row shape.
create function {schema}.add_job(
    identifier text,
    payload jsonb default null,
    queue_name text default null,
    run_at timestamptz default null,
    max_attempts integer default null,
    job_key text default null,
    priority integer default null,
    flags text[] default null,
    job_key_mode text default null
)
returns table (
    ord bigint, outcome text,
    id bigint, task_identifier text, queue_name text, payload jsonb, priority smallint,
    run_at timestamptz, attempts integer, max_attempts integer, last_error text, key text,
    flags text[], locked_by bigint, locked_at timestamptz, lease bigint,
    created_at timestamptz, updated_at timestamptz
)
language sql
as $$
    select * from {schema}.add_jobs(jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'task', identifier, 'payload', payload, 'queue_name', queue_name, 'run_at', run_at,
        'max_attempts', max_attempts, 'job_key', job_key, 'priority', priority,
        'flags', to_jsonb(flags), 'job_key_mode', job_key_mode))));
$$;

-- remove_job: delete the pending job with this key and return it. A running job with the key
-- keeps running but loses its key and will not be retried.
create function {schema}.remove_job(job_key text)
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
    )
    select * from removed union all select * from locked;
$$;

-- complete_jobs: mark pending jobs as done (deleted); running jobs are skipped.
create function {schema}.complete_jobs(job_ids bigint[])
returns setof {schema}.job
language sql
as $$
    delete from {schema}.job j
    where j.id = any(job_ids) and j.locked_by is null
    returning j.*;
$$;

-- permanently_fail_jobs: move pending jobs to history as exhausted, with reason as last error;
-- running jobs are skipped.
create function {schema}.permanently_fail_jobs(job_ids bigint[], error_message text default null)
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
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at, m.attempts,
        m.max_attempts, coalesce(error_message, 'permanently failed by an operator'), m.key,
        m.flags, m.created_at, 'exhausted', 'permanently_failed'
    from moved m
    returning *;
$$;

-- reschedule_jobs: change when and how pending jobs run; null leaves a field as it is.
-- Running jobs are skipped.
create function {schema}.reschedule_jobs(
    job_ids bigint[],
    run_at timestamptz default null,
    priority integer default null,
    attempts integer default null,
    max_attempts integer default null
)
returns setof {schema}.job
language sql
as $$
    update {schema}.job j set
        run_at = coalesce(reschedule_jobs.run_at, j.run_at),
        priority = coalesce(reschedule_jobs.priority, j.priority),
        attempts = coalesce(reschedule_jobs.attempts, j.attempts),
        max_attempts = coalesce(reschedule_jobs.max_attempts, j.max_attempts),
        updated_at = now()
    where j.id = any(job_ids) and j.locked_by is null
    returning j.*;
$$;

-- retry_jobs: put exhausted jobs from history back in the queue, runnable now, with their
-- attempts reset. Their key comes back only if no live job has taken it meanwhile.
create function {schema}.retry_jobs(job_ids bigint[])
returns setof {schema}.job
language sql
as $$
    with moved as (
        delete from {schema}.job_history h
        where h.id = any(job_ids) and h.outcome = 'exhausted'
        returning h.*
    ), queues as (
        insert into {schema}.job_queue (queue_name)
        select distinct m.queue_name from moved m where m.queue_name is not null
        on conflict do nothing
    )
    insert into {schema}.job (id, task_identifier, queue_name, payload, priority, run_at,
        attempts, max_attempts, last_error, key, flags, created_at)
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, now(), 0,
        m.max_attempts, m.last_error,
        case when exists (select 1 from {schema}.job j where j.key = m.key) then null else m.key end,
        m.flags, m.created_at
    from moved m
    returning *;
$$;
