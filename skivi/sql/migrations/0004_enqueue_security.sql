-- 0004_enqueue_security: enqueueing through functions that check what they write.
--
-- Why: a producer (docs/operations.md, "Database roles") used to enqueue with INSERT on the
-- job and job_queue tables, which let it write any column (a job_queue row locked by no
-- engine blocks its queue for ever; a job squatting cron:<id> at run_at 'infinity' silences
-- that cron entry; forged locks and errors; payloads past any limit), and add_job returned
-- a deduplicated job's row, payload included, to whoever guessed its key. Now:
--   * every enqueue path (SQL add_job / add_jobs, and Python's two statements) goes through
--     SECURITY DEFINER functions with search_path pinned, so producers need no table
--     privilege at all (roles.sql grants them EXECUTE on add_job, add_jobs, insert_jobs);
--   * check_specs refuses, naming the spec, what the table cannot: a missing task, an
--     unknown job_key_mode, an infinite run_at, a NULL or empty flag, a payload over
--     limits.max_payload_bytes, and a job_key in the cron scheduler's reserved 'cron:'
--     namespace;
--   * what an enqueue returns never carries a job's payload or last error that the caller
--     did not write: a deduplicated job comes back with both null, an updated one with the
--     caller's own payload (or null when a JSON array was appended to the stored one);
--   * a replace on the key of a running job takes the key; it takes the running job's
--     retries too (Graphile Worker's rule: the new job supersedes it) only when the same
--     database role enqueued both (job.created_by), so one producer cannot make another's
--     job unretryable.
-- add_keyed_job becomes internal: producers cannot call it (the cron scheduler, as the
-- worker role, still does, with its own keys).
-- Serial-queue rows (job_queue) can now be removed when empty (job_queue_prune.sql, run by
-- the engines): every enqueue holds the rows of its queues with hold_queues (a KEY SHARE
-- lock until it commits) so the prune, which takes FOR UPDATE SKIP LOCKED, never removes a
-- row that a job about to be committed needs; claims lock queue rows FOR NO KEY UPDATE,
-- which enqueues do not block.
-- Safe to apply while engines run: the new column has a constant default (no rewrite),
-- functions are replaced atomically, and the engine statements do not change shape.

-- The database-side limits, one row. max_payload_bytes follows validation.max_payload_bytes
-- of the System that migrates (skivi.System.start, `skivi migrate`); an owner may set it by
-- hand. Payload size is PostgreSQL's in-memory jsonb size (pg_column_size of the value
-- before it is stored), close to the JSON text's byte length.
create table {schema}.limits (
    only_row          boolean not null default true,
    max_payload_bytes integer not null default 1048576,
    constraint limits_pkey primary key (only_row),
    constraint limits_only_row_check check (only_row),
    constraint limits_max_payload_bytes_check check (max_payload_bytes > 0)
);
insert into {schema}.limits default values;

-- The database role that enqueued the job (session_user: the role the application logged in
-- as, also inside these SECURITY DEFINER functions). Read only by add_keyed_job.
alter table {schema}.job add column created_by oid;

-- hold_queues: make sure a job_queue row exists for each of these serial queues and hold it
-- (FOR KEY SHARE, until the caller's transaction ends) so that job_queue_prune cannot remove
-- it before the caller's jobs are committed. A row removed between the insert and the lock
-- (the prune committed in between) is inserted again.
create function {schema}.hold_queues(names text[])
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_wanted integer;
    v_held integer;
begin
    select count(distinct n) into v_wanted from unnest(names) n where n is not null;
    if v_wanted = 0 then
        return;
    end if;
    loop
        insert into {schema}.job_queue (queue_name)
        select distinct n from unnest(names) n where n is not null
        order by 1
        on conflict do nothing;
        select count(*) into v_held from (
            select 1 from {schema}.job_queue q
            where q.queue_name = any(names)
            order by q.queue_name
            for key share of q
        ) held;
        exit when v_held = v_wanted;
    end loop;
end;
$$;

-- check_specs: refuse a batch of enqueue specs (the JSON array add_jobs takes) before
-- anything is written, naming the first bad spec by its 1-based position. The table's own
-- constraints (lengths of task, queue and key; max_attempts >= 1) still apply on insert.
create function {schema}.check_specs(specs jsonb)
returns void
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_bad record;
    v_max integer;
begin
    if jsonb_typeof(specs) is distinct from 'array' then
        raise exception 'add_jobs: specs must be a JSON array, got %',
            coalesce(jsonb_typeof(specs), 'null') using errcode = '22023';
    end if;
    select l.max_payload_bytes into v_max from {schema}.limits l;
    select s.ord,
           case
               when s.task is null then 'has no task'
               when coalesce(s.job_key_mode, 'replace')
                        not in ('replace', 'preserve_run_at', 'unsafe_dedupe')
                   then format('has job_key_mode %s; expected replace, preserve_run_at or '
                               'unsafe_dedupe', left(quote_literal(s.job_key_mode), 60))
               when s.run_at is not null and not isfinite(s.run_at)
                   then format('has run_at %s; a job must run at a finite time', s.run_at)
               when s.flags is not null and array_position(s.flags, null) is not null
                   then 'has a NULL flag'
               when s.flags is not null and array_position(s.flags, '') is not null
                   then 'has an empty flag'
               when starts_with(s.job_key, 'cron:')
                   then format('has job_key %s: keys starting with cron: are reserved for '
                               'the cron scheduler', left(quote_literal(s.job_key), 60))
               when pg_column_size(s.payload) > v_max
                   then format('has a payload of %s bytes, over limits.max_payload_bytes '
                               '(%s)', pg_column_size(s.payload), v_max)
           end as problem
    into v_bad
    from rows from (jsonb_to_recordset(specs) as (
            task text, job_key_mode text, run_at timestamptz, flags text[], job_key text,
            payload jsonb))
        with ordinality as s(task, job_key_mode, run_at, flags, job_key, payload, ord)
    where s.task is null
       or coalesce(s.job_key_mode, 'replace') not in ('replace', 'preserve_run_at', 'unsafe_dedupe')
       or (s.run_at is not null and not isfinite(s.run_at))
       or (s.flags is not null and (array_position(s.flags, null) is not null
                                    or array_position(s.flags, '') is not null))
       or starts_with(s.job_key, 'cron:')
       or pg_column_size(s.payload) > v_max
    order by s.ord
    limit 1;
    if found then
        raise exception 'add_jobs: spec % %', v_bad.ord, v_bad.problem using errcode = '22023';
    end if;
end;
$$;

-- insert_jobs: the fast path for specs without a job key (Python's bulk enqueue,
-- job_insert_many.sql): one insert, and one row back, not one per job: the ids (drawn from
-- the column default in the order the specs are read, so the n-th id belongs to the n-th
-- spec) as a bigint[] literal, and the statement's now(), which every defaulted timestamp
-- holds. Serial queues get their job_queue row; one NOTIFY wakes the engines at commit.
-- Specs with a job_key are refused (they go through add_jobs).
create function {schema}.insert_jobs(specs jsonb, out ids text, out inserted_at timestamptz)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_role oid := session_user::regrole::oid;
    v_earliest timestamptz;
begin
    perform {schema}.check_specs(specs);
    if jsonb_path_exists(specs, '$[*].job_key ? (@ != null)') then
        raise exception 'insert_jobs: specs with a job_key go through add_jobs'
            using errcode = '22023';
    end if;
    perform {schema}.hold_queues(array(
        select e ->> 'queue_name' from jsonb_array_elements(specs) e));
    with ins as (
        insert into {schema}.job (task_identifier, queue_name, payload, priority, run_at,
                                  max_attempts, flags, created_by)
        select s.task, s.queue_name, coalesce(s.payload, '{{}}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()),
               coalesce(s.max_attempts, 25), s.flags, v_role
        from jsonb_to_recordset(specs) as s(
            task text, payload jsonb, queue_name text, run_at timestamptz,
            max_attempts integer, priority smallint, flags text[])
        returning id, run_at
    )
    select array_agg(ins.id order by ins.id)::text, min(ins.run_at) into ids, v_earliest
    from ins;
    inserted_at := now();
    if v_earliest is not null then
        -- Empty payload: runnable now. Otherwise the earliest run_at in epoch seconds, so an
        -- engine can set a timer instead of waiting for its next poll.
        perform pg_notify({channel},
            case when v_earliest <= now() then '' else extract(epoch from v_earliest)::text end);
    end if;
end;
$$;

-- add_keyed_job: one job with a job_key (Graphile Worker's semantics), internal to add_jobs
-- and the cron scheduler.
--   replace          update the pending job with this key (new payload, run_at, ...): debounce
--   preserve_run_at  the same, but keep the pending job's run_at: throttle
--   unsafe_dedupe    if any job with this key exists, keep it and add nothing
-- A job with this key that is running (locked) loses its key and a new job is inserted: both
-- run. The running job also loses its retries when the same role enqueued it (created_by =
-- session_user), so it is not retried beside the job that superseded it; a job of another
-- role keeps them. A job that had failed starts afresh (attempts 0, no error). When both
-- payloads are JSON arrays they are concatenated (batch jobs), within
-- limits.max_payload_bytes. outcome: 'inserted', 'updated' or 'deduplicated'.
create or replace function {schema}.add_keyed_job(
    p_task text, p_payload jsonb, p_queue_name text, p_run_at timestamptz,
    p_max_attempts integer, p_priority smallint, p_flags text[], p_job_key text,
    p_job_key_mode text, out job {schema}.job, out outcome text
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_id bigint;
    v_inserted boolean;
    v_role oid := session_user::regrole::oid;
    v_max integer;
begin
    perform {schema}.hold_queues(array[p_queue_name]);
    if p_job_key_mode = 'unsafe_dedupe' then
        loop
            insert into {schema}.job as j (task_identifier, queue_name, payload, priority, run_at,
                                           max_attempts, flags, key, created_by)
            values (p_task, p_queue_name, p_payload, p_priority, p_run_at, p_max_attempts,
                    p_flags, p_job_key, v_role)
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
        -- A running job keeps running but gives up its key (and its retries, if ours).
        update {schema}.job j
        set key = null,
            attempts = case when j.created_by is not distinct from v_role
                            then greatest(j.attempts, j.max_attempts) else j.attempts end,
            updated_at = now()
        where j.key = p_job_key and j.locked_by is not null;

        insert into {schema}.job as j (task_identifier, queue_name, payload, priority, run_at,
                                       max_attempts, flags, key, created_by)
        values (p_task, p_queue_name, p_payload, p_priority, p_run_at, p_max_attempts, p_flags,
                p_job_key, v_role)
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
            created_by = excluded.created_by,
            updated_at = now()
        where j.locked_by is null
        returning j.id, j.xmax = 0 into v_id, v_inserted;
        if found then
            select j.* into job from {schema}.job j where j.id = v_id;
            if not v_inserted and jsonb_typeof(p_payload) = 'array' then
                select l.max_payload_bytes into v_max from {schema}.limits l;
                -- Read back from the table, the value may be compressed: measure its text.
                if octet_length(job.payload::text) > v_max then
                    raise exception 'add_jobs: job_key %: appending % items makes a payload of % bytes, over limits.max_payload_bytes (%)',
                        left(quote_literal(p_job_key), 60), jsonb_array_length(p_payload),
                        octet_length(job.payload::text), v_max using errcode = '22023';
                end if;
            end if;
            outcome := case when v_inserted then 'inserted' else 'updated' end;
            return;
        end if;
        -- The keyed job was claimed between the two statements: go round again, which
        -- strips its key and inserts a new job.
    end loop;
end;
$$;

-- add_jobs: enqueue many jobs in one call (see 0001 for the spec fields and the rows it
-- returns). Checked by check_specs first; returns no payload or error the caller did not
-- write (see the header).
create or replace function {schema}.add_jobs(specs jsonb)
returns table (
    ord bigint, outcome text,
    id bigint, task_identifier text, queue_name text, payload jsonb, priority smallint,
    run_at timestamptz, attempts integer, max_attempts integer, last_error text, key text,
    flags text[], locked_by bigint, locked_at timestamptz, lease bigint,
    created_at timestamptz, updated_at timestamptz
)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    v_spec record;
    v_added record;
    v_ords bigint[];
    v_earliest timestamptz;
    v_role oid := session_user::regrole::oid;
begin
    perform {schema}.check_specs(specs);

    -- The keyed specs' queues are held by add_keyed_job.
    perform {schema}.hold_queues(array(
        select e ->> 'queue_name' from jsonb_array_elements(specs) e
        where e ->> 'job_key' is null));

    -- Unkeyed specs: one insert. Ids come from the column default in the order the specs are
    -- read, so the n-th id belongs to the n-th unkeyed spec.
    v_ords := array(
        select s.ord
        from rows from (jsonb_to_recordset(specs) as (job_key text))
            with ordinality as s(job_key, ord)
        where s.job_key is null
        order by s.ord);
    return query
    with ins as (
        insert into {schema}.job (task_identifier, queue_name, payload, priority, run_at,
                                  max_attempts, flags, created_by)
        select s.task, s.queue_name, coalesce(s.payload, '{{}}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()),
               coalesce(s.max_attempts, 25), s.flags, v_role
        from jsonb_to_recordset(specs) as s(
            task text, payload jsonb, queue_name text, run_at timestamptz,
            max_attempts integer, priority smallint, flags text[], job_key text)
        where s.job_key is null
        returning *
    )
    select v_ords[row_number() over (order by ins.id)], 'inserted'::text, ins.id,
           ins.task_identifier, ins.queue_name, ins.payload, ins.priority, ins.run_at,
           ins.attempts, ins.max_attempts, ins.last_error, ins.key, ins.flags, ins.locked_by,
           ins.locked_at, ins.lease, ins.created_at, ins.updated_at
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
        -- Only what the caller wrote: an existing job's payload and error stay private.
        payload := case
            when v_added.outcome = 'inserted' then (v_added.job).payload
            when v_added.outcome = 'updated'
                 and (v_added.job).payload = coalesce(v_spec.payload, '{{}}'::jsonb)
                then (v_added.job).payload
        end;
        priority := (v_added.job).priority;
        run_at := (v_added.job).run_at;
        attempts := (v_added.job).attempts;
        max_attempts := (v_added.job).max_attempts;
        last_error := case when v_added.outcome = 'deduplicated' then null
                           else (v_added.job).last_error end;
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

-- add_job: unchanged in what it does (one spec through add_jobs); made SECURITY DEFINER too,
-- so that a producer needs EXECUTE on it alone.
alter function {schema}.add_job(text, jsonb, text, timestamptz, integer, text, integer, text[],
                                text)
    security definer set search_path = pg_catalog, pg_temp;

-- Nobody but the owner may run them until roles.sql (or an owner's own GRANT) says who may:
-- PostgreSQL grants EXECUTE to PUBLIC on every new function.
revoke execute on function {schema}.check_specs(jsonb) from public;
revoke execute on function {schema}.hold_queues(text[]) from public;
revoke execute on function {schema}.insert_jobs(jsonb) from public;
