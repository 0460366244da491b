-- job_retry_many: make pending jobs runnable now (`skivi jobs retry`), keeping their
-- attempts, through the SQL function reschedule_jobs (migration 0001), which skips running
-- jobs. Every id asked for comes back with what happened to it, in one statement.
--
-- Why this shape: the function returns only the jobs it changed; the ids it skipped are told
-- apart by reading the job table in the same statement. The statement's snapshot predates
-- the function's own writes (they run under later command ids), so a skipped id that is in
-- the table is one that was running (or was claimed meanwhile), and one that is not there
-- was never found.
-- Guard: reschedule_jobs touches only jobs with locked_by null.
--
-- Parameters: %(ids)s bigint[] (distinct, in the operator's order).
-- Returns one row per id, in that order: id, result ('changed', 'running', 'not_found'),
-- locked_by (the engine running a skipped job, or null).
with changed as materialized (
    select r.id from {schema}.reschedule_jobs(%(ids)s::bigint[], run_at => now()) r
)
select u.id,
       case when c.id is not null then 'changed'
            when j.id is not null then 'running'
            else 'not_found' end as result,
       case when c.id is null then j.locked_by end as locked_by
from unnest(%(ids)s::bigint[]) with ordinality as u(id, ord)
left join changed c on c.id = u.id
left join {schema}.job_running j on j.id = u.id
order by u.ord;
