-- job_permanently_fail_many: give up on pending jobs (`skivi jobs fail`): they leave the
-- queue and are recorded in job_history as exhausted (reason permanently_failed), through
-- the SQL function permanently_fail_jobs (migration 0005: attempts = max_attempts, as in
-- Graphile Worker), which skips running jobs. Every
-- id asked for comes back with what happened to it, in one statement.
--
-- Why this shape: as job_retry_many.sql. The statement's snapshot predates the function's
-- writes (the rows it deletes are still visible here), so a skipped id still in the table
-- was running (or claimed meanwhile), and one not there was never found.
-- Guard: permanently_fail_jobs touches only jobs with locked_by null.
--
-- Parameters: %(ids)s bigint[] (distinct, in the operator's order); %(reason)s text or null
-- (recorded as last_error; the function's default message when null).
-- Returns one row per id, in that order: id, result ('changed', 'running', 'not_found'),
-- locked_by (the engine running a skipped job, or null).
with changed as materialized (
    select r.id
    from {schema}.permanently_fail_jobs(%(ids)s::bigint[], %(reason)s::text) r
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
