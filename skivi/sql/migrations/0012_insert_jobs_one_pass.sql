-- 0012_insert_jobs_one_pass: the bulk insert checks its specs in the same pass as it
-- inserts them.
--
-- Why: insert_jobs (migration 0004) read its specs four times before and while inserting
-- them: check_specs (a jsonb_to_recordset of its own), a jsonpath for job keys, an array of
-- every spec's queue name for hold_queues, then the insert's jsonb_to_recordset. Measured
-- here on statements of 1,250 tiny specs (the Python client's bulk statement): insert_jobs
-- 5.9-6.2 ms, the same insert alone 4.6-4.7 ms, check_specs alone 1.2 ms.
--
-- Now the insert's one pass tests every row for anything check_specs refuses, or a job
-- key (those go through add_jobs); the first such row makes it call refuse_specs, which
-- runs check_specs for its message (the first bad spec, by position, as before) and
-- otherwise refuses the job key, as before; the statement then rolls back with nothing
-- written. hold_queues is called only when some spec names a queue. The refusals, their
-- messages and SQLSTATE (22023) are unchanged; so are the function's signature and what it
-- returns.
--
-- Safe to apply while engines and clients run: same signature; callers of the previous
-- version call it as before.

create function {schema}.refuse_specs(specs jsonb)
returns text
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
begin
    perform {schema}.check_specs(specs);
    raise exception 'insert_jobs: specs with a job_key go through add_jobs'
        using errcode = '22023';
end;
$$;

revoke execute on function {schema}.refuse_specs(jsonb) from public;

create or replace function {schema}.insert_jobs(specs jsonb, out ids text,
                                                out inserted_at timestamptz)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_role oid := session_user::regrole::oid;
    v_earliest timestamptz;
    v_max integer;
begin
    if jsonb_typeof(specs) is distinct from 'array' then
        perform {schema}.check_specs(specs);  -- raises, saying what it got
    end if;
    select l.max_payload_bytes into v_max from {schema}.limits l;
    if jsonb_path_exists(specs, '$[*].queue_name ? (@ != null)') then
        perform {schema}.hold_queues(array(
            select e ->> 'queue_name' from jsonb_array_elements(specs) e));
    end if;
    with ins as (
        insert into {schema}.job (task_identifier, queue_name, payload, priority, run_at,
                                  max_attempts, flags, created_by)
        select case
                   -- check_specs' refusals (0004), and a job key
                   when s.task is null
                     or coalesce(s.job_key_mode, 'replace')
                            not in ('replace', 'preserve_run_at', 'unsafe_dedupe')
                     or (s.run_at is not null and not isfinite(s.run_at))
                     or (s.flags is not null and (array_position(s.flags, null) is not null
                                                  or array_position(s.flags, '') is not null))
                     or s.job_key is not null
                     or pg_column_size(s.payload) > v_max
                   then {schema}.refuse_specs(specs)
                   else s.task
               end,
               s.queue_name, coalesce(s.payload, '{{}}'::jsonb),
               coalesce(s.priority, 0), coalesce(s.run_at, now()),
               coalesce(s.max_attempts, 25), s.flags, v_role
        from jsonb_to_recordset(specs) as s(
            task text, payload jsonb, queue_name text, run_at timestamptz,
            max_attempts integer, priority smallint, flags text[], job_key text,
            job_key_mode text)
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
