-- 0013_claim_sort_first: the claim sorts its rows before it builds their messages. Same
-- signature, same rows, same order.
--
-- Why: the claimed rows come out of the UPDATE in tuple order and were sorted into claim
-- order (priority, run_at, id) after the final select had built each row's JSON message,
-- so the sort carried every message. Sorted first (a subquery fenced by offset 0, so the
-- planner keeps the sort below the messages), the claim's backend spent 12.5 us a job
-- against 13.0-13.5 (claims of 2,000 jobs on a scratch schema, each completed, 3 rounds;
-- CPU from /proc), and one engine's drain of 100,000 jobs (bench/run.py, 3 alternating
-- pairs) 13.1-13.3 us a job on its claim connection against 13.9-14.1.
--
-- Safe to apply while engines run: the same function, replaced in one transaction; a claim
-- running meanwhile finishes with the old text.

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
            where j.locked_by is null
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
        ), claimed as (
            update {schema}.job j
            set locked_by = p_engine,
                locked_at = now(),
                attempts = j.attempts + 1,
                lease = j.lease + 1
            -- By tuple id (a TID scan): a join with chosen may be planned as a scan of the whole
            -- table, and a primary-key lookup per row is a sixth of the statement. The unqueued
            -- rows are locked, so their tid cannot change; a queued job's row is not, and if it was
            -- updated meanwhile its old tid matches nothing (or fails the recheck): it is simply
            -- not claimed this time.
            where j.ctid = any(array(select chosen.tid from chosen)) and j.locked_by is null
            returning j.id, j.lease, j.task_identifier, j.payload, j.queue_name, j.priority, j.run_at,
                      j.attempts, j.max_attempts, j.key, j.flags, j.created_at
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
