-- 0010_claim_jobs: the claim as a function, so a claim is one statement and one round trip.
--
-- Why: job_claim.sql ran in a transaction of its own to carry two settings
-- (transaction_settings_local.sql: a lock timeout, and generic plans), so every claim cost
-- four round trips (BEGIN, the settings, the claim, COMMIT); measured here with an idle
-- engine at 200 jobs/s, the claim's part of a job's latency from NOTIFY to handler start was
-- 1.3 ms, of which BEGIN and the settings 0.33 ms and the claim with its COMMIT 1.0 ms.
-- A function carries both settings itself: plan_cache_mode in its SET clause (PL/pgSQL
-- plans its query once per session and keeps the generic plan; through a transaction-mode
-- pooler with prepared statements off this also spares the 0.6 ms of planning each claim
-- cost), the lock timeout by set_config(..., true) (local to the statement's transaction),
-- and it runs as one autocommit statement. The engine calls it through job_claim.sql.
--
-- The claim (until this migration, the text of job_claim.sql): claim up to p_limit runnable
-- jobs for this engine, in one statement.
--
-- Why this shape (Oban's fetch_jobs, River's JobGetAvailable): candidate ids are chosen and
-- locked in CTEs with FOR UPDATE SKIP LOCKED, ordered by (priority, run_at, id) exactly as
-- the partial claim indexes are, so the scan stops after `limit` index entries however many
-- jobs wait behind them; then one UPDATE stamps the claim.
--   * Jobs without a queue come from job_claim_idx.
--   * Serial queues: a job of a named queue can be claimed only together with its queue's
--     job_queue row, which stays locked (job_id set) until that job is finished or released.
--     A queue therefore yields at most ONE job per claim and none while one of its jobs is
--     in flight, however large the batch (Graphile Worker #621 was this trap). At most
--     p_serial_limit of them per claim: what the engine can start now, since a queue's
--     job waiting in an engine's buffer would keep that queue from every other engine.
--   * At most p_max_bytes of payload per claim (but always at least one job), so the
--     engine's memory stays bounded whatever producers send: a payload's size is its
--     stored size, or its JSON text's length when it is stored compressed (measured only
--     then, and only for the candidates).
--   * The attempt is counted here, at claim: a job that kills its process every time still
--     reaches max_attempts. lease is bumped so every later write can prove it belongs to
--     this claim.
--
-- Parameters: p_engine engine id; p_limit; p_tasks text[] or null (only these task
-- identifiers: worker.unknown_tasks = "skip"); p_forbidden text[] or null (skip jobs with
-- any of these flags); p_queues text[] or null (only jobs of these queues);
-- p_serial_limit (at most this many serial-queue jobs, <= limit); p_max_bytes;
-- p_paused_queues / p_paused_tasks text[] or null (the pause table as the engine last
-- read it, control_get.sql: skip these queues, '@parallel' being the jobs without one, and
-- these tasks; a serial queue whose next job is of a paused task waits, in order). Null
-- when nothing is paused: the filters fold away and the plan is the unpaused one.
-- Returns (id, lease, message, task_identifier, cut): message is the job as a JSON array, handed
-- as-is to a child process: [id, lease, task, payload, queue_name, priority, run_at,
-- attempts, max_attempts, key, flags, created_at]; the task lets the engine choose the
-- child without parsing the message; cut (the same on every row) is true when jobs were
-- left for the byte limit, so a short claim does not mean the queue is drained.
-- p_lock_timeout: the lock timeout for the statement's transaction, in milliseconds (text).
--
-- Safe to apply while engines run: a new function; engines of the previous version keep
-- sending the claim as before.

create function {schema}.claim_jobs(
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
        select c.id, c.lease,
               json_build_array(c.id, c.lease, c.task_identifier, c.payload, c.queue_name, c.priority,
                                c.run_at, c.attempts, c.max_attempts, c.key, c.flags,
                                c.created_at)::text,
               c.task_identifier,
               (select count(*) from candidates) > (select count(*) from chosen) as cut
        from claimed c
        order by c.priority, c.run_at, c.id;
end;
$$;

revoke execute on function {schema}.claim_jobs(bigint, integer, integer, bigint, text[], text[],
                                                text[], text[], text[], text) from public;
