-- job_fill: the dashboard benchmark's live jobs, in one statement (insert ... select
-- generate_series: a million jobs in seconds, where add_jobs specs would take minutes).
--
-- The mix, by i: ten tasks (task_0 .. task_9, task_9 rare: 1 in 1000); one job in ten in one
-- of ten serial queues (q_0 .. q_9); one in ten scheduled an hour ahead; one in twenty failed
-- (attempted once, with an error, due again in a minute); every thousandth with a job key;
-- the payload names a user (user_<i mod 5000>) and a number.
--
-- Parameters: %(count)s.
-- Returns nothing.
insert into {schema}.job (task_identifier, queue_name, payload, run_at, attempts,
                          last_error, key)
select case when i %% 1000 = 0 then 'task_9' else 'task_' || (i %% 9) end,
       case when i %% 10 = 3 then 'q_' || (i / 10 %% 10) end,
       jsonb_build_object('user', 'user_' || (i %% 5000), 'n', i, 'note', 'benchmark job'),
       case when i %% 10 = 5 then now() + interval '1 hour'
            when i %% 20 = 7 then now() + interval '1 minute'
            else now() - make_interval(secs => (%(count)s - i) / 100.0) end,
       case when i %% 20 = 7 then 1 else 0 end,
       case when i %% 20 = 7 then 'RuntimeError: benchmark failure ' || i end,
       case when i %% 1000 = 1 then 'key_' || i end
from generate_series(1, %(count)s) as g(i);
