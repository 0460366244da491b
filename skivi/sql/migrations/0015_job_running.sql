-- 0015_job_running: a claimed job's row moves out of job into job_running, and back when
-- it is to run again. job holds the jobs waiting (runnable or scheduled), job_running the
-- jobs an engine has claimed, job_history the finished ones; job_live is the union of the
-- first two, for everything that reads live jobs whatever their state.
--
-- Why: a claim stamped its rows in place (locked_by, locked_at, attempts, lease), an UPDATE
-- that cannot be HOT (the claim indexes' predicates name locked_by), so each claimed job
-- wrote a whole new tuple into job and entries into job_pkey and job_locked_idx, and its
-- completion found the row again through job_pkey among every waiting job's entries. Moved,
-- a claimed job costs a DELETE (the old tuple marked, nothing indexed) and an INSERT into a
-- table of a few thousand live rows with one small, hot index; its completion deletes from
-- that table. Measured on a scratch schema (bench/RESULTS.md, session 15; claims of 2,000,
-- completions of 230, the backend's CPU): 12.4-13.5 us a job against 21.2-23.6.
-- The price: a payload is copied into job_running where the UPDATE kept its TOAST pointer,
-- which costs more than it saves for payloads of several kB (8 kB of random text: 101-103
-- against 63-74 us a job).
--
-- Invariants: a job id is in at most one of job, job_running, job_history; every row of
-- job has locked_by null and every row of job_running has it set (checked constraints, which
-- also let the planner skip the other table of job_live when a query filters on locked_by);
-- a job key is unique among waiting jobs (job_key_idx); a running job may share its key with
-- a waiting one (the key was given to a new job while it ran: Graphile Worker's semantics),
-- and gives it up if it has to wait again.
--
-- Safe to apply while engines of the previous version run, with one delay: their claims and
-- completions go through the functions below, but their failures and releases are
-- statements of their own that find no row in job (the row is in job_running now), so such
-- a job stays claimed until its engine stops; the rescue then makes it runnable again (its
-- attempt spent). Nothing is lost; upgrade the fleet without waiting long between.

create table {schema}.job_running (
    like {schema}.job including defaults including constraints including storage
) with (fillfactor = 100, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_insert_threshold = -1, autovacuum_vacuum_cost_limit = 2000);
alter table {schema}.job_running
    add constraint job_running_pkey primary key (id),
    add constraint job_running_claimed_check check (locked_by is not null);
-- For a new job's key: the running job that held it gives it up (add_keyed_job, remove_job).
create index job_running_key_idx on {schema}.job_running (key) where key is not null;

insert into {schema}.job_running select * from {schema}.job where locked_by is not null;
delete from {schema}.job where locked_by is not null;
drop index {schema}.job_locked_idx;
alter table {schema}.job add constraint job_waiting_check check (locked_by is null);

create view {schema}.job_live as
    select * from {schema}.job
    union all
    select * from {schema}.job_running;

-- The claim: candidates chosen and locked as before (0013); the chosen rows are deleted from
-- job and inserted into job_running, stamped with the claim.
create or replace function {schema}.claim_jobs(
    p_engine bigint, p_limit integer, p_serial_limit integer, p_max_bytes bigint,
    p_tasks text[], p_forbidden text[], p_queues text[], p_paused_queues text[],
    p_paused_tasks text[], p_lock_timeout text,
    out id bigint, out lease bigint, out message text, out task_identifier text,
    out cut boolean)
returns setof record
language plpgsql
set plan_cache_mode = force_generic_plan
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    perform set_config('lock_timeout', p_lock_timeout, true);
    return query
        with recursive unqueued as (
            select j.ctid as tid, j.priority, j.run_at, j.id,
                   case when pg_column_compression(j.payload) is null then pg_column_size(j.payload)
                        else octet_length(j.payload::text) end as bytes
            from {schema}.job j
            where j.locked_by is null  -- always, in job: for the partial index's predicate
              and j.queue_name is null
              and p_queues::text[] is null
              and j.run_at <= now()
              and (p_tasks::text[] is null or j.task_identifier = any(p_tasks::text[]))
              and (p_forbidden::text[] is null or not coalesce(j.flags && p_forbidden::text[], false))
              and not coalesce('@parallel' = any(p_paused_queues::text[]), false)
              and (p_paused_tasks::text[] is null
                   or j.task_identifier <> all(p_paused_tasks::text[]))
            order by j.priority, j.run_at, j.id
            limit p_limit
            for update of j skip locked
        ), waiting_queue (queue_name) as (
            -- The serial queues that have unlocked jobs, one index probe each (a loose scan of
            -- job_queue_claim_idx), so a claim never reads job_queue rows of empty queues, however
            -- many past queues there are; with a queue filter, only the queues asked for.
            (select j.queue_name from {schema}.job j
             where j.locked_by is null and j.queue_name is not null and p_queues::text[] is null
             order by j.queue_name limit 1)
            union all
            select (select j.queue_name from {schema}.job j
                    where j.locked_by is null and j.queue_name > w.queue_name
                    order by j.queue_name limit 1)
            from waiting_queue w
            where w.queue_name is not null
        ), queue_name as (
            select w.queue_name from waiting_queue w where w.queue_name is not null
            union all
            select distinct f.name from unnest(p_queues::text[]) as f(name)
        ), queued as (
            select h.tid, h.priority, h.run_at, h.id, h.bytes
            from queue_name n
            join {schema}.job_queue q on q.queue_name = n.queue_name
            cross join lateral (
                select j.ctid as tid, j.id, j.priority, j.run_at, j.task_identifier as task,
                       case when pg_column_compression(j.payload) is null then pg_column_size(j.payload)
                            else octet_length(j.payload::text) end as bytes
                from {schema}.job j
                where j.queue_name = q.queue_name
                  and j.locked_by is null
                  and j.run_at <= now()
                  and (p_tasks::text[] is null or j.task_identifier = any(p_tasks::text[]))
                  and (p_forbidden::text[] is null
                       or not coalesce(j.flags && p_forbidden::text[], false))
                order by j.priority, j.run_at, j.id
                limit 1
            ) h
            where q.job_id is null
              and (p_paused_queues::text[] is null or q.queue_name <> all(p_paused_queues::text[]))
              and (p_paused_tasks::text[] is null or h.task <> all(p_paused_tasks::text[]))
            order by h.priority, h.run_at, h.id
            limit p_serial_limit
            -- NO KEY UPDATE: enqueues hold queue rows FOR KEY SHARE while they commit (hold_queues,
            -- migration 0004), which this does not wait for or skip; two claims still exclude each
            -- other, and the prune (FOR UPDATE) skips a row a claim holds.
            for no key update of q skip locked
        ), candidates as (
            select c.tid,
                   sum(c.bytes) over (order by c.priority, c.run_at, c.id rows unbounded preceding)
                       - c.bytes as before
            from (
                select * from unqueued union all select * from queued
            ) c
            order by c.priority, c.run_at, c.id
            limit p_limit
        ), chosen as (
            select c.tid from candidates c where c.before < p_max_bytes
        ), moved as (
            -- By tuple id (a TID scan): a join with chosen may be planned as a scan of the whole
            -- table, and a primary-key lookup per row is a sixth of the statement. The unqueued
            -- rows are locked, so their tid cannot change; a queued job's row is not, and if it was
            -- updated or claimed meanwhile its old tid matches nothing: it is simply not claimed
            -- this time.
            delete from {schema}.job j
            where j.ctid = any(array(select chosen.tid from chosen))
            returning j.*
        ), claimed as (
            insert into {schema}.job_running as r (id, task_identifier, queue_name, payload,
                priority, run_at, attempts, max_attempts, last_error, key, flags, locked_by,
                locked_at, lease, created_at, updated_at, created_by)
            select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at,
                   m.attempts + 1, m.max_attempts, m.last_error, m.key, m.flags, p_engine, now(),
                   m.lease + 1, m.created_at, m.updated_at, m.created_by
            from moved m
            returning r.id, r.lease, r.task_identifier, r.payload, r.queue_name, r.priority,
                      r.run_at, r.attempts, r.max_attempts, r.key, r.flags, r.created_at
        ), claimed_queued as materialized (
            -- Narrow: an UPDATE joining a CTE carries each joined row whole for its recheck, and
            -- claimed's rows hold the payloads.
            select claimed.id, claimed.queue_name from claimed where claimed.queue_name is not null
        ), queue_locks as (
            update {schema}.job_queue q
            set job_id = c.id, locked_by = p_engine, locked_at = now()
            from claimed_queued c
            where q.queue_name = c.queue_name
        )
        -- Sorted before the messages are built (the fence, offset 0): a sort of the built
        -- rows carried each message through it. A plain select over the fenced subquery
        -- keeps its order.
        select c.id, c.lease,
               json_build_array(c.id, c.lease, c.task_identifier, c.payload, c.queue_name, c.priority,
                                c.run_at, c.attempts, c.max_attempts, c.key, c.flags,
                                c.created_at)::text,
               c.task_identifier,
               (select count(*) from candidates) > (select count(*) from chosen) as cut
        from (select * from claimed order by claimed.priority, claimed.run_at, claimed.id
              offset 0) c;
end;
$$;

revoke execute on function {schema}.claim_jobs(bigint, integer, integer, bigint, text[], text[],
                                                text[], text[], text[], text) from public;

-- The completion: the finished rows are deleted from job_running (else as 0014).
create or replace function {schema}.complete_claims(
    p_engine bigint, p_ids bigint[], p_leases bigint[], p_history boolean,
    p_lock_timeout text, out id bigint, out lease bigint)
returns setof record
language plpgsql
set plan_cache_mode = force_generic_plan
-- By primary key, always. job_running's live rows are few but it churns: from empty to
-- thousands of rows and pages of dead ones within seconds, so a plan chosen on its size
-- when the session first completed (a sequential scan of an empty table) was wrong for the
-- rest of the session: 100-220 ms a flush in a drain of 100,000 jobs (auto_explain).
set enable_seqscan = off
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    perform set_config('lock_timeout', p_lock_timeout, true);
    if not p_history then
        -- Without history nothing reads the deleted rows but their ids, leases and queues.
        return query
            with done as (
                delete from {schema}.job_running j
                where j.id = any(p_ids::bigint[])
                  and coalesce((j.id, j.lease) in (select u.id, u.lease
                                                   from unnest(p_ids::bigint[], p_leases::bigint[])
                                                        as u(id, lease)), false)
                  and j.locked_by is not distinct from p_engine
                returning j.id, j.lease, j.queue_name
            ), queued as materialized (
                select done.id, done.queue_name from done where done.queue_name is not null
            ), freed as (
                update {schema}.job_queue q
                set job_id = null, locked_by = null, locked_at = null
                from queued
                where q.queue_name = queued.queue_name and q.job_id = queued.id
            ), traced as (
                delete from {schema}.job_traceback t
                where t.id = any(array(select done.id from done))
                  and exists (select from {schema}.job_traceback)
            )
            select done.id, done.lease from done;
        return;
    end if;
    return query
        with done as (
            delete from {schema}.job_running j
            where j.id = any(p_ids::bigint[])
              and coalesce((j.id, j.lease) in (select u.id, u.lease
                                               from unnest(p_ids::bigint[], p_leases::bigint[])
                                                    as u(id, lease)), false)
              and j.locked_by is not distinct from p_engine
            returning j.*
        ), queued as materialized (
            select done.id, done.queue_name from done where done.queue_name is not null
        ), freed as (
            update {schema}.job_queue q
            set job_id = null, locked_by = null, locked_at = null
            from queued
            where q.queue_name = queued.queue_name and q.job_id = queued.id
        ), traced as (
            delete from {schema}.job_traceback t
            where t.id = any(array(select done.id from done))
              and exists (select from {schema}.job_traceback)
            returning t.id, t.traceback
        ), recorded as (
            insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
                run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome,
                last_error_traceback)
            select d.id, d.task_identifier, d.queue_name, d.payload, d.priority, d.run_at,
                   d.attempts, d.max_attempts, d.last_error, d.key, d.flags, d.created_at,
                   'completed', (select t.traceback from traced t where t.id = d.id)
            from done d
            where p_history
            on conflict (id) do nothing
        )
        select done.id, done.lease from done;
end;
$$;

revoke execute on function {schema}.complete_claims(bigint, bigint[], bigint[], boolean, text)
    from public;

-- add_keyed_job: a running job is in job_running, where it gives up its key to a new job,
-- and where unsafe_dedupe finds it too (else as 0004).
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
        -- A running job with the key counts too (it kept its key in job before 0015).
        select j.* into job from {schema}.job_running j where j.key = p_job_key limit 1;
        if found then
            outcome := 'deduplicated';
            return;
        end if;
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
        update {schema}.job_running j
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

-- remove_job: a running job with the key gives it up in job_running (else as 0005).
create or replace function {schema}.remove_job(job_key text)
returns setof {schema}.job
language sql
as $$
    with locked as (
        update {schema}.job_running j
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

-- retry_jobs: a key held by a running job is not given to the retried job (else as 0005).
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
        -- key is not null: the partial key indexes' predicate, so each look is an
        -- index probe, not a scan per row.
        case when m.key is not null
                  and (exists (select 1 from {schema}.job j
                               where j.key = m.key and j.key is not null)
                       or exists (select 1 from {schema}.job_running r
                                  where r.key = m.key and r.key is not null))
             then null else m.key end,
        m.flags, m.created_at
    from moved m, queues
    returning *;
$$;

-- cancel_jobs: running jobs are found, and disarmed, in job_running (else as 0007).
create or replace function {schema}.cancel_jobs(job_ids bigint[], reason text default null,
                                     cancelled_by text default null)
returns table (id bigint, result text, locked_by bigint)
language sql
as $$
    with found_waiting as materialized (
        select j.id, j.locked_by, j.run_at, j.attempts, j.key
        from {schema}.job j
        where j.id = any(cancel_jobs.job_ids)
        order by j.id
        for update of j
    ), found_running as materialized (
        select r.id, r.locked_by, r.run_at, r.attempts, r.key
        from {schema}.job_running r
        where r.id = any(cancel_jobs.job_ids)
        order by r.id
        for update of r
    ), found as materialized (
        select * from found_waiting union all select * from found_running
    ), moved as (
        -- Waiting: to history at once.
        delete from {schema}.job j
        using found f
        where j.id = f.id and f.locked_by is null
        returning j.*
    ), untraced as (
        delete from {schema}.job_traceback t using moved m where t.id = m.id
        returning t.id, t.traceback
    ), recorded as (
        insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
            run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome,
            reason, last_error_traceback, cancelled_by, cancel_requested_at)
        select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at,
               m.attempts, m.max_attempts, m.last_error, m.key, m.flags, m.created_at,
               'cancelled', cancel_jobs.reason,
               (select u.traceback from untraced u where u.id = m.id),
               coalesce(cancel_jobs.cancelled_by, session_user::text), now()
        from moved m
        on conflict (id) do nothing
    ), requested as (
        -- Claimed: a request (a second one keeps the first's who and why) ...
        insert into {schema}.job_cancel (id, requested_by, reason, run_at, attempts, key)
        select f.id, coalesce(cancel_jobs.cancelled_by, session_user::text),
               cancel_jobs.reason, f.run_at, f.attempts, f.key
        from found f
        where f.locked_by is not null
        on conflict (id) do nothing
    ), disarmed as (
        -- ... and the job disarmed: whatever ends its claim, it never runs again.
        update {schema}.job_running j
        set attempts = greatest(j.attempts, j.max_attempts), run_at = 'infinity', key = null,
            updated_at = now()
        from found f
        where j.id = f.id and f.locked_by is not null
    ), notified as (
        select count(pg_notify({channel}, 'cancel:' || e.locked_by)) as engines
        from (select distinct f.locked_by from found f where f.locked_by is not null) e
    ), asked as (
        select x.id, min(x.ord) as ord
        from unnest(cancel_jobs.job_ids) with ordinality as x(id, ord)
        where x.id is not null
        group by x.id
    )
    select a.id,
           case when f.id is not null and f.locked_by is null then 'cancelled'
                when f.id is not null then 'requested'
                when exists (select 1 from {schema}.job_history h where h.id = a.id)
                    then 'finished'
                else 'not_found' end,
           f.locked_by
    from asked a
    cross join notified n
    left join found f on f.id = a.id
    order by a.ord;
$$;
