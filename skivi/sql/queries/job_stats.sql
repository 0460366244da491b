-- job_stats: queue depth by state, and the age of the oldest runnable job, for the metrics.
--
-- Why this shape: the exporter polls this every few seconds, and the job table can hold
-- millions of rows, so nothing here scans it. Every count walks a claim index over a bounded
-- range:
--   * groups: the distinct priorities of jobs without a queue (job_claim_idx) and the
--     distinct (queue, priority) pairs of serial queues (job_queue_claim_idx) are found by
--     a loose index scan (a recursive CTE: one index probe per group), at most
--     %(max_groups)s of each;
--   * per group, with priority fixed, run_at is a range of the index: waiting
--     (run_at <= now()) and scheduled (run_at > now()) are counted up to %(cap)s index
--     entries each, and the oldest runnable job is the first entry of the range;
--   * claimed (locked) jobs come from job_running: at most what live engines hold
--     (capacity plus prefetch) and what dead ones left for the rescuer; counted up to
--     %(cap)s, as running when their engine's heartbeat reported them started
--     (engine.running, a primary-key probe per job), as claimed otherwise.
-- Cost: O(G * (log N + cap)) index entries for G groups, N jobs; with the defaults (cap
-- 10000) a few milliseconds however large the backlog. Counts are exact below the cap. When
-- a priority of the default pool reaches it, the pool's waiting count becomes an estimate:
-- the claim index's size from the planner statistics (pg_class.reltuples, as of the last
-- autovacuum/analyze) less the scheduled jobs counted; serial queues saturate at the cap per
-- priority. The per-group probes read the heap only for index entries not yet all-visible.
--
-- One engine at a time: only the leader (the live engine with the smallest id: heartbeat
-- fresher than its lease, not stopping) gets rows; every other engine gets none and exports
-- no depth, so the figures are not multiplied by the number of engines, and the others do
-- only the leader check (one read of the small engine table). If the leader dies, the next
-- one takes over once the dead one's heartbeat is stale.
--
-- Parameters: %(engine)s (the asking engine), %(cap)s, %(max_groups)s.
-- Returns, for the leader only, one row per queue (queue_name '' = jobs without a queue,
-- always present) with (queue_name, waiting, scheduled, running, claimed, oldest_runnable_age (float8
-- seconds, null when nothing is runnable), estimated (waiting is an estimate)).
with recursive leader as (
    select coalesce(%(engine)s = (
        select min(e.id)
        from {schema}.engine e
        where not e.stopping
          and e.heartbeat_at > now() - make_interval(secs => e.lease_timeout)
    ), false) as yes
), pool_group (priority, n) as (
    (select j.priority, 1
     from {schema}.job j
     where j.locked_by is null and j.queue_name is null
       and (select l.yes from leader l)
     order by j.priority
     limit 1)
    union all
    select nx.priority, g.n + 1
    from pool_group g
    cross join lateral (
        select j.priority
        from {schema}.job j
        where j.locked_by is null and j.queue_name is null and j.priority > g.priority
        order by j.priority
        limit 1
    ) nx
    where g.n < %(max_groups)s
), queue_group (queue_name, priority, n) as (
    (select j.queue_name, j.priority, 1
     from {schema}.job j
     where j.locked_by is null and j.queue_name is not null
       and (select l.yes from leader l)
     order by j.queue_name, j.priority
     limit 1)
    union all
    select nx.queue_name, nx.priority, g.n + 1
    from queue_group g
    cross join lateral (
        select j.queue_name, j.priority
        from {schema}.job j
        where j.locked_by is null and j.queue_name is not null
          and (j.queue_name, j.priority) > (g.queue_name, g.priority)
        order by j.queue_name, j.priority
        limit 1
    ) nx
    where g.n < %(max_groups)s
), pool_counts as (
    select w.n as waiting, s.n as scheduled, o.run_at as oldest, w.n >= %(cap)s as saturated
    from pool_group g
    cross join lateral (
        select count(*) as n from (
            select 1 from {schema}.job j
            where j.locked_by is null and j.queue_name is null and j.priority = g.priority
              and j.run_at <= now()
            limit %(cap)s) x
    ) w
    cross join lateral (
        select count(*) as n from (
            select 1 from {schema}.job j
            where j.locked_by is null and j.queue_name is null and j.priority = g.priority
              and j.run_at > now()
            limit %(cap)s) x
    ) s
    left join lateral (
        select j.run_at from {schema}.job j
        where j.locked_by is null and j.queue_name is null and j.priority = g.priority
          and j.run_at <= now()
        order by j.run_at
        limit 1
    ) o on true
), queue_counts as (
    select g.queue_name, w.n as waiting, s.n as scheduled, o.run_at as oldest
    from queue_group g
    cross join lateral (
        select count(*) as n from (
            select 1 from {schema}.job j
            where j.locked_by is null and j.queue_name = g.queue_name
              and j.priority = g.priority and j.run_at <= now()
            limit %(cap)s) x
    ) w
    cross join lateral (
        select count(*) as n from (
            select 1 from {schema}.job j
            where j.locked_by is null and j.queue_name = g.queue_name
              and j.priority = g.priority and j.run_at > now()
            limit %(cap)s) x
    ) s
    left join lateral (
        select j.run_at from {schema}.job j
        where j.locked_by is null and j.queue_name = g.queue_name
          and j.priority = g.priority and j.run_at <= now()
        order by j.run_at
        limit 1
    ) o on true
), running as (
    select coalesce(r.queue_name, '') as queue_name,
           count(*) filter (where r.started) as n, count(*) filter (where not r.started) as c
    from (
        select j.queue_name,
               exists (select 1 from {schema}.engine e
                       where e.id = j.locked_by and j.id = any(e.running)) as started
        from {schema}.job_running j
        where j.locked_by is not null
          and (select l.yes from leader l)
        limit %(cap)s
    ) r
    group by 1
), parts as (
    select '' as queue_name, 0::bigint as waiting, 0::bigint as scheduled,
           0::bigint as running, 0::bigint as claimed, null::timestamptz as oldest,
           false as saturated
    from leader l
    where l.yes
    union all
    select '', p.waiting, p.scheduled, 0, 0, p.oldest, p.saturated from pool_counts p
    union all
    select q.queue_name, q.waiting, q.scheduled, 0, 0, q.oldest, false from queue_counts q
    union all
    select r.queue_name, 0, 0, r.n, r.c, null, false from running r
)
select p.queue_name,
       case when bool_or(p.saturated)
            then greatest(sum(p.waiting),
                          (select c.reltuples from pg_class c
                           where c.oid = '{schema}.job_claim_idx'::regclass)::bigint
                          - sum(p.scheduled))
            else sum(p.waiting) end::bigint as waiting,
       sum(p.scheduled)::bigint as scheduled,
       sum(p.running)::bigint as running,
       sum(p.claimed)::bigint as claimed,
       -- Epochs subtracted, not timestamps: now() - '-infinity' is an error (which would
       -- fail every poll), while the epoch of -infinity is -Infinity: an age of Infinity.
       (extract(epoch from now()) - extract(epoch from min(p.oldest)))::float8
           as oldest_runnable_age,
       bool_or(p.saturated) as estimated
from parts p
group by p.queue_name
order by p.queue_name;
