-- job_limit_list: the declared limits and how much of them is in use now, for operators
-- (skivi limits). Reads every limit_key row: an operator command.
-- Parameters: none.
-- Returns one row per limit, by name: name, tasks, key_path (null: the task identifier),
-- slots, period (null: concurrency), keys (keys met so far), held (jobs holding a key now,
-- concurrency), recent (starts within the period, rate).
select l.name, l.tasks, l.key_path, l.slots, l.period,
       (select count(*) from {schema}.limit_key r where r.limit_name = l.name) as keys,
       (select coalesce(sum(cardinality(r.held_ids)), 0) from {schema}.limit_key r
        where r.limit_name = l.name)::bigint as held,
       (select count(*) from {schema}.limit_key r cross join unnest(r.starts) as x(at)
        where r.limit_name = l.name and l.period is not null
          and x.at > now() - make_interval(secs => l.period)) as recent
from {schema}.job_limit l
order by l.name;
