-- 0009_insert_job: one job without a job key, by scalar arguments.
--
-- Why: a single add_job is the commonest enqueue, one call per transaction, and through
-- insert_jobs (0004) it cost the server the machinery of a batch: check_specs and the
-- insert each parse the specs' JSON array (jsonb_to_recordset), a jsonpath scan looks for
-- job keys, hold_queues is called for no queue, the ids are aggregated into an array.
-- Measured here with pgbench (one client, prepared): insert_jobs of one spec 2,270
-- transactions/s, this function 2,840-3,080, a bare INSERT into job 3,940, a one-column
-- insert into a table of its own 6,100-6,200. The checks are check_specs' own, on the
-- arguments: a producer role may call it directly, and it runs as the owner.
--
-- Safe to apply while engines run: a new function; nothing else changes. Clients of the
-- previous version keep calling insert_jobs, which stays.

create function {schema}.insert_job(task text, payload jsonb, queue_name text,
                                    run_at timestamptz, max_attempts integer,
                                    priority smallint, flags text[],
                                    out id bigint, out inserted_at timestamptz)
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_max integer;
    v_run_at timestamptz;
begin
    if task is null then
        raise exception 'insert_job: the job has no task' using errcode = '22023';
    end if;
    if run_at is not null and not isfinite(run_at) then
        raise exception 'insert_job: the job has run_at %; a job must run at a finite time',
            run_at using errcode = '22023';
    end if;
    if flags is not null and array_position(flags, null) is not null then
        raise exception 'insert_job: the job has a NULL flag' using errcode = '22023';
    end if;
    if flags is not null and array_position(flags, '') is not null then
        raise exception 'insert_job: the job has an empty flag' using errcode = '22023';
    end if;
    select l.max_payload_bytes into v_max from {schema}.limits l;
    if pg_column_size(payload) > v_max then
        raise exception 'insert_job: the job has a payload of % bytes, over '
                        'limits.max_payload_bytes (%)', pg_column_size(payload), v_max
            using errcode = '22023';
    end if;
    if queue_name is not null then
        perform {schema}.hold_queues(array[queue_name]);
    end if;
    insert into {schema}.job as j (task_identifier, queue_name, payload, priority, run_at,
                                   max_attempts, flags, created_by)
    values (task, queue_name, coalesce(payload, '{{}}'::jsonb), coalesce(priority, 0),
            coalesce(run_at, now()), coalesce(max_attempts, 25), flags,
            session_user::regrole::oid)
    returning j.id, j.run_at into id, v_run_at;
    inserted_at := now();
    -- As insert_jobs: empty payload, runnable now; else its run_at in epoch seconds.
    perform pg_notify({channel},
        case when v_run_at <= now() then '' else extract(epoch from v_run_at)::text end);
end;
$$;

revoke execute on function {schema}.insert_job(text, jsonb, text, timestamptz, integer,
                                               smallint, text[]) from public;
