-- job_history_fill: the dashboard benchmark's finished jobs, in one statement: %(count)s
-- rows finished over the last two hours, one in ten exhausted (reason max_attempts), with
-- ids above the live jobs' (%(offset)s + i).
--
-- Parameters: %(count)s, %(offset)s.
-- Returns nothing.
insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority, run_at,
                                  attempts, max_attempts, last_error, key, flags, created_at,
                                  finished_at, outcome, reason)
select %(offset)s + i, 'task_' || (i %% 9), null,
       jsonb_build_object('user', 'user_' || (i %% 5000), 'n', i),
       0, now() - interval '3 hours', case when i %% 10 = 0 then 25 else 1 end, 25,
       case when i %% 10 = 0 then 'RuntimeError: gave up ' || i end, null, null,
       now() - interval '3 hours',
       now() - make_interval(secs => 7200.0 * i / %(count)s),
       case when i %% 10 = 0 then 'exhausted' else 'completed' end,
       case when i %% 10 = 0 then 'max_attempts' end
from generate_series(1, %(count)s) as g(i);
