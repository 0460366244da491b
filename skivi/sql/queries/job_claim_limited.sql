-- job_claim_limited: claim up to %(limit)s runnable jobs WITHOUT a queue, honouring the
-- concurrency and rate limits of job_limit (migration 0008), in one statement.
--
-- Used instead of job_claim.sql's parallel part only by an engine that runs a task under a
-- limit (the engine then claims serial queues with job_claim.sql, the parallel queue
-- excluded); with no limit for its tasks an engine never sends this.
--
-- Why this shape:
--   * cand: the first %(lookahead)s runnable jobs in claim order (priority, run_at, id), by
--     job_claim_idx, locked FOR UPDATE SKIP LOCKED as job_claim.sql locks them, so engines
--     claiming at once take disjoint jobs (those held back are unlocked at commit). The
--     engine passes lookahead = limit while nothing is held back, and deepens it (up to
--     worker.limits_lookahead) while some are, so jobs of other keys behind a saturated
--     key's backlog are found (fairness: the next claim round, not when the backlog
--     drains).
--   * need: one row per (job, limit, key) the job is under (one with no limit for a job
--     under none), the key being the payload field (payload #>> key_path, '' when absent)
--     or the task identifier, with the job's rank among the candidates of that key.
--   * ahead: the first %(limit)s candidates in round-robin order, (priority, turn, run_at,
--     id), turn being the job's rank in its key(s): each waiting key's first job, then each
--     key's second... (jobs under no limit count as one more key); jobs that the snapshot
--     says their key has no room for come last.
--   * room: the limit_key rows of the keys ahead, locked FOR NO KEY UPDATE in key order (as
--     a serial queue's job_queue row: the state is in the locked row, read in its newest
--     version, so two claims never admit past a limit). A job runs when its rank in each
--     of its keys is within what the key still admits: nothing is claimed over a limit (no
--     attempt spent, no retry: it stays waiting, as it was).
--   * The chosen rows are claimed as job_claim.sql claims them (attempt counted, lease
--     bumped), and the keys stamped in the same statement (taken): a concurrency key holds
--     the claim (given back by the flush that finishes it: limit_key_held_many.sql, then
--     limit_key_drop_many.sql), a rate key records the start.
--   * A key met for the first time has no row: it is created here (fresh) and, being
--     invisible to this statement, used by the next claim, which the status row's cut asks
--     for at once.
--
-- Parameters: %(engine)s; %(limit)s; %(lookahead)s (>= limit); %(max_bytes)s; %(tasks)s,
-- %(forbidden)s, %(paused_queues)s, %(paused_tasks)s as in job_claim.sql.
-- Returns job_claim.sql's rows (id, lease, message, task_identifier, cut) for the jobs
-- claimed, plus blocked and wake_at (null on those rows), then ONE status row whose id is
-- null: cut (more may be runnable now: a byte cut,
-- rows lost to another claim, a key new), blocked (candidates were held back by
-- a limit), wake_at (epoch seconds when a rate key of held-back jobs admits again, or
-- null).
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
    for update of j skip locked
), need as materialized (
    -- Every candidate, with its claim columns, once per limit it is under (once, with a
    -- null name and key, when under none: its rank is then its turn among those). Later
    -- steps aggregate this by job instead of joining it back to the candidates: the
    -- planner, which cannot count a CTE's rows, nested such joins (quadratic in the claim's
    -- size: 180 ms for 500 jobs).
    select c.tid, c.id, c.priority, c.run_at, c.bytes, l.name, k.key, l.slots, l.period,
           row_number() over (partition by l.name, k.key
                              order by c.priority, c.run_at, c.id) as rank
    from cand c
    left join {schema}.job_limit l on c.task_identifier = any(l.tasks)
    cross join lateral (
        select case when l.name is null then null
                    else coalesce(case when l.key_path is null then c.task_identifier
                                       else c.payload #>> l.key_path end, '') end as key
    ) k
), keyset as materialized (
    select n.name, n.key, min(n.slots) as slots, min(n.period) as period
    from need n
    where n.name is not null
    group by n.name, n.key
), seen as materialized (
    -- Each key's room as this snapshot sees it (unlocked, so only a guess): a job ranked
    -- past it is likely held back.
    select k.name, k.key,
           k.slots - coalesce(case
               when k.period is null then cardinality(r.held_ids)
               else (select count(*) from unnest(r.starts) as x(at)
                     where x.at > now() - make_interval(secs => k.period)) end, 0) as open
    from keyset k
    left join {schema}.limit_key r on r.limit_name = k.name and r.key = k.key
), turns as materialized (
    -- Round-robin: a job's turn is its rank in its key (the highest, under several
    -- limits); jobs under no limit count as one more key. Jobs likely held back come after
    -- all the others.
    select n.tid, n.id, n.priority, n.run_at, n.bytes,
           coalesce(bool_or(n.rank > m.open), false) as held, max(n.rank) as turn
    from need n
    left join seen m on m.name = n.name and m.key = n.key
    group by n.tid, n.id, n.priority, n.run_at, n.bytes
), ahead as materialized (
    -- The first %(limit)s in claim order: no key can take more this claim.
    select t.* from turns t
    order by t.held, t.priority, t.turn, t.run_at, t.id
    limit %(limit)s
), wanted as materialized (
    select distinct n.name, n.key
    from need n
    join ahead a on a.id = n.id
    where n.name is not null
), fresh as (
    insert into {schema}.limit_key (limit_name, key)
    select w.name, w.key
    from wanted w
    where not exists (select 1 from {schema}.limit_key r
                      where r.limit_name = w.name and r.key = w.key)
    -- In key order, so two claims meeting the same new keys wait for each other in one
    -- order (never a deadlock).
    order by w.name, w.key
    on conflict do nothing
    returning 1
), room as materialized (
    -- The keys' rows, locked in key order: what each may still admit. Waited for, not
    -- skipped: other claims and flushes hold them for the end of a statement, and a claim
    -- that skipped them would have done its work for nothing. In key order, as
    -- limit_key_drop_many.sql locks them, so no two wait for each other in a cycle.
    select r.limit_name as name, r.key,
           k.slots - case
               when k.period is null then cardinality(r.held_ids)
               else (select count(*) from unnest(r.starts) as x(at)
                     where x.at > now() - make_interval(secs => k.period)) end as free,
           (select min(x.at) from unnest(r.starts) as x(at)
            where x.at > now() - make_interval(secs => k.period)) as oldest
    from {schema}.limit_key r
    join keyset k on k.name = r.limit_name and k.key = r.key
    where (r.limit_name, r.key) in (select w.name, w.key from wanted w)
    order by r.limit_name, r.key
    for no key update of r
), verdict as materialized (
    -- Each job ahead, with ok: within what each of its keys admits (always, under no
    -- limit); held: a key of it admits too few (a key with no row yet is not held back:
    -- the claim is only cut).
    select a.tid, a.id, a.priority, a.turn, a.run_at, a.bytes,
           bool_and(n.name is null or n.rank <= coalesce(m.free, 0)) as ok,
           coalesce(bool_or(n.rank > m.free), false) as held
    from need n
    join ahead a on a.id = n.id
    left join room m on m.name = n.name and m.key = n.key
    group by a.tid, a.id, a.priority, a.turn, a.run_at, a.bytes
), admitted as (
    select v.tid, v.id, v.priority, v.turn, v.run_at, v.bytes
    from verdict v
    where v.ok
), candidates as (
    select a.tid,
           sum(a.bytes) over (order by a.priority, a.turn, a.run_at, a.id
                              rows unbounded preceding) - a.bytes as before
    from admitted a
), chosen as (
    select c.tid from candidates c where c.before < %(max_bytes)s
), moved as (
    -- By tuple id (see claim_jobs, migration 0015): the candidates are locked, so their
    -- tids hold. A claimed job moves from job to job_running.
    delete from {schema}.job j
    where j.ctid = any(array(select chosen.tid from chosen))
    returning j.*
), claimed as (
    insert into {schema}.job_running as r (id, task_identifier, queue_name, payload, priority,
        run_at, attempts, max_attempts, last_error, key, flags, locked_by, locked_at, lease,
        created_at, updated_at, created_by)
    select m.id, m.task_identifier, m.queue_name, m.payload, m.priority, m.run_at,
           m.attempts + 1, m.max_attempts, m.last_error, m.key, m.flags, %(engine)s, now(),
           m.lease + 1, m.created_at, m.updated_at, m.created_by
    from moved m
    returning r.id, r.lease, r.task_identifier, r.payload, r.queue_name, r.priority, r.run_at,
              r.attempts, r.max_attempts, r.key, r.flags, r.created_at
), held as materialized (
    -- Narrow (see job_claim.sql's claimed_queued).
    select claimed.id, claimed.lease from claimed
), per_key as materialized (
    select n.name, n.key, min(n.period) as period, array_agg(h.id) as ids,
           array_agg(h.lease) as leases
    from held h
    join need n on n.id = h.id
    where n.name is not null
    group by n.name, n.key
), taken as (
    -- By primary key, not tuple id: a row another transaction changed after this
    -- statement's snapshot is only reached (and its newest version updated) that way.
    update {schema}.limit_key r
    set held_ids = case when t.period is null then r.held_ids || t.ids else r.held_ids end,
        held_leases = case when t.period is null then r.held_leases || t.leases
                           else r.held_leases end,
        held_by = case when t.period is null
                       then r.held_by || array_fill(%(engine)s::bigint,
                                                    array[cardinality(t.ids)])
                       else r.held_by end,
        starts = case when t.period is null then r.starts
                      else array(select x.at from unnest(r.starts) as x(at)
                                 where x.at > now() - make_interval(secs => t.period)
                                 order by x.at)
                           || array_fill(now(), array[cardinality(t.ids)]) end
    from per_key t
    where r.limit_name = t.name and r.key = t.key
    returning 1
), stuck as materialized (
    -- The keys of held-back jobs.
    select distinct n.name, n.key, n.period
    from need n join verdict v on v.id = n.id
    where v.held and n.name is not null
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
           or exists (select 1 from fresh)
           or (select count(*) from wanted) > (select count(*) from room),
       exists (select 1 from stuck),
       -- When a stuck rate key admits again: its oldest start within the period, or (this
       -- claim took its room) a period from now.
       (select extract(epoch from min(coalesce(m.oldest, now())
                                      + make_interval(secs => k.period)))
        from stuck k
        join room m on m.name = k.name and m.key = k.key
        where k.period is not null);
