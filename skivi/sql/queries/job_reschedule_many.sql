-- job_reschedule_many: change when and how pending jobs run (`skivi jobs reschedule`),
-- through the SQL function reschedule_jobs (migration 0001), which skips running jobs; a
-- null option leaves that field as it is. Every id asked for comes back with what happened
-- to it, in one statement.
--
-- Why this shape: as job_retry_many.sql. The statement's snapshot predates the function's
-- writes, so a skipped id still in the table was running (or claimed meanwhile), and one
-- not there was never found.
-- Guard: reschedule_jobs touches only jobs with locked_by null.
--
-- Parameters: %(ids)s bigint[] (distinct, in the operator's order); %(run_at)s timestamptz,
-- %(priority)s integer, %(attempts)s integer, %(max_attempts)s integer: each null to keep.
-- Returns one row per id, in that order: id, result ('changed', 'running', 'not_found'),
-- locked_by (the engine running a skipped job, or null).
with changed as materialized (
    select r.id
    from {schema}.reschedule_jobs(%(ids)s::bigint[], %(run_at)s::timestamptz,
                                  %(priority)s::integer, %(attempts)s::integer,
                                  %(max_attempts)s::integer) r
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
