-- job_claim_limited: claim up to %(limit)s runnable jobs WITHOUT a queue, honouring the
-- concurrency and rate limits of job_limit (migration 0008), in one statement.
--
-- Used instead of job_claim.sql's parallel part only by an engine that runs a task under a
-- limit (the engine then claims serial queues with job_claim.sql, the parallel queue
-- excluded); with no limit for its tasks an engine never sends this.
--
-- Why this shape:
--   * cand: the first %(lookahead)s runnable jobs in claim order (priority, run_at, id), by
--     job_claim_idx, not locked: most of them may be held back by their limits, and locking
--     rows only to pass them would be a write each. The engine passes lookahead = limit
--     while nothing is held back, and deepens it (up to worker.limits_lookahead) while some
--     are, so jobs of other keys behind a saturated key's backlog are found (fairness: the
--     next claim round, not when the backlog drains).
--   * need: one row per (job, limit, key) the job is under, the key being the payload field
--     (payload #>> key_path, '' when absent) or the task identifier, with the job's rank
--     among the candidates of that key.
--   * free: for each key, up to as many of its free slots as it has candidates (at most
--     %(limit)s), locked FOR NO KEY UPDATE SKIP LOCKED (the serial queues' discipline: the
--     state is in the locked row, rechecked on its newest version, so two claims never take
--     one slot, and a slot another claim holds is skipped, not waited for). A job runs when
--     every limit it is under has a free slot for its rank: nothing is claimed over a limit
--     (no attempt spent, no retry: it stays waiting, as it was).
--   * Round-robin: the admitted jobs are taken by (priority, turn, run_at, id), turn being
--     the job's rank in its key(s): each waiting key's first job, then each key's second...
--     Jobs under no limit count as one more key.
--   * The chosen rows are locked FOR UPDATE SKIP LOCKED (a row another engine claims
--     meanwhile is skipped: no wait, no deadlock), claimed as job_claim.sql claims (attempt
--     counted, lease bumped), and the slots stamped in the same statement: concurrency
--     slots with the claim (freed by limit_slot_free_many.sql when it finishes), rate slots
--     with started_at = now().
--   * A key met for the first time has no slot rows: they are created here (fresh) and,
--     being invisible to this statement, used by the next claim, which the status row's cut
--     asks for at once.
--
-- Parameters: %(engine)s; %(limit)s; %(lookahead)s (>= limit); %(max_bytes)s; %(tasks)s,
-- %(forbidden)s, %(paused_queues)s, %(paused_tasks)s as in job_claim.sql.
-- Returns job_claim.sql's rows (id, lease, message, task_identifier, cut) for the jobs
-- claimed, plus blocked and wake_at (null on those rows), then ONE status row whose id is
-- null: cut (more may be runnable now: a byte or row cut, rows lost to another claim, or
-- fresh slots), blocked (candidates were held back by a limit), wake_at (epoch seconds when
-- a rate slot of a key with held-back jobs frees up, or null).
with cand as materialized (
    select j.ctid as tid, j.id, j.priority, j.run_at, j.task_identifier, j.payload,
           case when pg_column_compression(j.payload) is null then pg_column_size(j.payload)
                else octet_length(j.payload::text) end as bytes
    from {schema}.job j
    where j.locked_by is null
      and j.queue_name is null
      and j.run_at <= now()
      and (%(tasks)s::text[] is null or j.task_identifier = any(%(tasks)s::text[]))
      and (%(forbidden)s::text[] is null or not coalesce(j.flags && %(forbidden)s::text[], false))
      and not coalesce('@parallel' = any(%(paused_queues)s::text[]), false)
      and (%(paused_tasks)s::text[] is null
           or j.task_identifier <> all(%(paused_tasks)s::text[]))
    order by j.priority, j.run_at, j.id
    limit %(lookahead)s
), need as materialized (
    select c.id, l.name, k.key, l.slots, l.period,
           row_number() over (partition by l.name, k.key
                              order by c.priority, c.run_at, c.id) as rank
    from cand c
    join {schema}.job_limit l on c.task_identifier = any(l.tasks)
    cross join lateral (
        select coalesce(case when l.key_path is null then c.task_identifier
                             else c.payload #>> l.key_path end, '') as key
    ) k
), wanted as materialized (
    select n.name, n.key, min(n.slots) as slots, min(n.period) as period,
           least(count(*), %(limit)s) as n
    from need n
    group by n.name, n.key
), fresh as (
    insert into {schema}.limit_slot (limit_name, key, slot)
    select w.name, w.key, g.slot
    from wanted w
    cross join generate_series(1, w.slots) as g(slot)
    where not exists (select 1 from {schema}.limit_slot s
                      where s.limit_name = w.name and s.key = w.key and s.slot = w.slots)
    -- In key order, so two claims meeting the same new keys wait for each other in one
    -- order (never a deadlock).
    order by w.name, w.key, g.slot
    on conflict do nothing
    returning 1
), free as materialized (
    select w.name, w.key, f.slot,
           row_number() over (partition by w.name, w.key order by f.slot) as rank
    from wanted w
    cross join lateral (
        select s.slot
        from {schema}.limit_slot s
        where s.limit_name = w.name and s.key = w.key
          and s.slot <= w.slots
          and s.job_id is null
          and (w.period is null or s.started_at is null
               or s.started_at <= now() - make_interval(secs => w.period))
        order by s.slot
        limit w.n
        for no key update of s skip locked
    ) f
), verdict as materialized (
    select n.id, bool_and(f.slot is not null) as ok, max(n.rank) as turn
    from need n
    left join free f on f.name = n.name and f.key = n.key and f.rank = n.rank
    group by n.id
), admitted as (
    select c.tid, c.id, c.priority, c.run_at, c.bytes,
           coalesce(v.turn, row_number() over (partition by v.id is null
                                               order by c.priority, c.run_at, c.id)) as turn
    from cand c
    left join verdict v on v.id = c.id
    where coalesce(v.ok, true)
), candidates as (
    select a.tid,
           sum(a.bytes) over (order by a.priority, a.turn, a.run_at, a.id
                              rows unbounded preceding) - a.bytes as before
    from admitted a
    order by a.priority, a.turn, a.run_at, a.id
    limit %(limit)s
), chosen as (
    select c.tid from candidates c where c.before < %(max_bytes)s
), locked as materialized (
    select j.ctid as tid
    from {schema}.job j
    where j.ctid = any(array(select chosen.tid from chosen)) and j.locked_by is null
    for update of j skip locked
), claimed as (
    update {schema}.job j
    set locked_by = %(engine)s,
        locked_at = now(),
        attempts = j.attempts + 1,
        lease = j.lease + 1
    where j.ctid = any(array(select locked.tid from locked)) and j.locked_by is null
    returning j.id, j.lease, j.task_identifier, j.payload, j.queue_name, j.priority, j.run_at,
              j.attempts, j.max_attempts, j.key, j.flags, j.created_at
), held as materialized (
    -- Narrow (see job_claim.sql's claimed_queued).
    select claimed.id, claimed.lease from claimed
), taken as (
    update {schema}.limit_slot s
    set started_at = now(),
        job_id = case when n.period is null then h.id end,
        lease = case when n.period is null then h.lease end,
        locked_by = case when n.period is null then %(engine)s::bigint end,
        locked_at = case when n.period is null then now() end
    from held h
    join need n on n.id = h.id
    join free f on f.name = n.name and f.key = n.key and f.rank = n.rank
    where s.limit_name = f.name and s.key = f.key and s.slot = f.slot
    returning n.name, n.key, n.period
), stuck as materialized (
    -- The keys of held-back jobs.
    select distinct n.name, n.key, n.period
    from need n join verdict v on v.id = n.id
    where not v.ok
)
(select c.id, c.lease,
        json_build_array(c.id, c.lease, c.task_identifier, c.payload, c.queue_name, c.priority,
                         c.run_at, c.attempts, c.max_attempts, c.key, c.flags,
                         c.created_at)::text,
        c.task_identifier, false, null::boolean, null::float8
 from claimed c
 order by c.priority, c.run_at, c.id)
union all
select null, null, null, null,
       (select count(*) from admitted) > (select count(*) from claimed)
           or exists (select 1 from fresh),
       exists (select 1 from stuck),
       -- When a rate slot of a stuck key frees up: the oldest start within its period, or
       -- one of this claim's, a period from now.
       (select extract(epoch from min(t.at))
        from (select s.started_at + make_interval(secs => k.period) as at
              from stuck k
              join {schema}.limit_slot s on s.limit_name = k.name and s.key = k.key
              where k.period is not null
                and s.started_at > now() - make_interval(secs => k.period)
              union all
              select now() + make_interval(secs => t.period)
              from taken t
              join stuck k on k.name = t.name and k.key = t.key
              where t.period is not null) t);
