-- dashboard_queue_list: every queue's depth, the age of its oldest runnable job (its
-- latency) and, for serial queues, the job holding its lock: the dashboard's queues page and
-- the overview's latency column.
--
-- Why this shape: job_stats.sql's (which see), without its leader check, plus the serial
-- queues' lock rows. Nothing scans the job table: the groups are found by loose index scans
-- (recursive CTEs: one index probe per group) of job_claim_idx (jobs without a queue, one
-- group per priority) and job_queue_claim_idx (one group per serial queue and priority), at
-- most %(max_groups)s of each; per group, waiting (run_at <= now()) and scheduled jobs are
-- counted up to %(cap)s index entries each and the oldest runnable job is the first entry of
-- its range. Claimed jobs come from job_running, up to %(cap)s. The serial queues' lock
-- holders are the job_queue rows with a job_id (one row per serial queue, small).
-- Cost: O(G * (log N + cap)) index entries for G groups, N jobs.
--
-- Parameters: %(cap)s, %(max_groups)s.
-- Returns one row per queue with jobs or a lock (queue_name null = jobs without a queue,
-- first; then by name): queue_name, waiting, scheduled, running, claimed,
-- oldest_runnable_age (float8 seconds, Infinity for a run_at of -infinity, null when nothing
-- is runnable), waiting_capped, scheduled_capped, running_capped (that count reached the
-- cap in some group: it is a lower bound), lock_job (the job
-- holding a serial queue's lock, or null), lock_engine, lock_age (float8 seconds).
with recursive pool_group (priority, n) as (
    (select j.priority, 1
     from {schema}.job j
     where j.locked_by is null and j.queue_name is null
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
    select null::text as queue_name, w.n as waiting, s.n as scheduled, o.run_at as oldest,
           w.n >= %(cap)s as waiting_capped, s.n >= %(cap)s as scheduled_capped
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
    select g.queue_name, w.n as waiting, s.n as scheduled, o.run_at as oldest,
           w.n >= %(cap)s as waiting_capped, s.n >= %(cap)s as scheduled_capped
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
), locked as (
    select j.queue_name,
           exists (select 1 from {schema}.engine e
                   where e.id = j.locked_by and j.id = any(e.running)) as started
    from {schema}.job_running j
    where j.locked_by is not null
    limit %(cap)s
), running as (
    select r.queue_name, count(*) filter (where r.started) as n,
           count(*) filter (where not r.started) as c,
           count(*) >= %(cap)s as saturated
    from locked r
    group by 1
), parts as (
    select p.queue_name, p.waiting, p.scheduled, 0::bigint as running, 0::bigint as claimed,
           p.oldest, p.waiting_capped, p.scheduled_capped, false as running_capped
    from pool_counts p
    union all
    select q.queue_name, q.waiting, q.scheduled, 0, 0, q.oldest, q.waiting_capped,
           q.scheduled_capped, false
    from queue_counts q
    union all
    select r.queue_name, 0, 0, r.n, r.c, null, false, false, r.saturated from running r
    union all
    select q.queue_name, 0, 0, 0, 0, null, false, false, false
    from {schema}.job_queue q
    where q.job_id is not null
)
select p.queue_name,
       sum(p.waiting)::bigint as waiting,
       sum(p.scheduled)::bigint as scheduled,
       sum(p.running)::bigint as running,
       sum(p.claimed)::bigint as claimed,
       -- Epochs subtracted, not timestamps: now() - '-infinity' is an error.
       (extract(epoch from now()) - extract(epoch from min(p.oldest)))::float8
           as oldest_runnable_age,
       bool_or(p.waiting_capped) as waiting_capped,
       bool_or(p.scheduled_capped) as scheduled_capped,
       bool_or(p.running_capped) as running_capped,
       q.job_id as lock_job,
       q.locked_by as lock_engine,
       extract(epoch from now() - q.locked_at)::float8 as lock_age
from parts p
left join {schema}.job_queue q on q.queue_name = p.queue_name and q.job_id is not null
group by p.queue_name, q.job_id, q.locked_by, q.locked_at
order by p.queue_name nulls first;
