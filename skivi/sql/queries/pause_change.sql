-- pause_change: pause or resume a queue or a task through the SQL functions of migration
-- 0008 (pause_queue, resume_queue, pause_task, resume_task), which also wake the engines.
-- Parameters: %(kind)s ('queue' or 'task'), %(name)s (a queue name, '@parallel' for the jobs
-- without a queue, or a task identifier), %(pause)s (true: pause; false: resume).
-- Returns true when something changed (false: already so).
select case
    when %(kind)s = 'queue' and %(pause)s then {schema}.pause_queue(%(name)s)
    when %(kind)s = 'queue' then {schema}.resume_queue(%(name)s)
    when %(pause)s then {schema}.pause_task(%(name)s)
    else {schema}.resume_task(%(name)s)
end;
