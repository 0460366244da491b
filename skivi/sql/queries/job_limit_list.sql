-- job_limit_list: the declared limits and how many of their slots are in use now, for
-- operators (skivi limits). Reads every slot row: an operator command.
-- Parameters: none.
-- Returns one row per limit, by name: name, tasks, key_path (null: the task identifier),
-- slots, period (null: concurrency), keys (keys met so far), held (concurrency slots held
-- by running jobs), recent (rate slots used within the period).
select l.name, l.tasks, l.key_path, l.slots, l.period,
       (select count(distinct s.key) from {schema}.limit_slot s where s.limit_name = l.name)
           as keys,
       (select count(*) from {schema}.limit_slot s
        where s.limit_name = l.name and s.job_id is not null) as held,
       (select count(*) from {schema}.limit_slot s
        where s.limit_name = l.name and l.period is not null
          and s.started_at > now() - make_interval(secs => l.period)) as recent
from {schema}.job_limit l
order by l.name;
