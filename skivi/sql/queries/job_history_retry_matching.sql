-- job_history_retry_matching: put every exhausted job of a task and/or a reason back in the
-- queue, runnable now with their attempts reset (`skivi history retry --task T --reason R`),
-- through the SQL function retry_jobs (migration 0001), as job_history_retry_many does for
-- explicit ids.
--
-- Why this shape: the ids are picked first (a materialized CTE: the set to retry is fixed
-- before retry_jobs deletes from the same table), then handed to retry_jobs in one call, so
-- the whole selection moves in one statement; each picked id comes back with what happened.
-- An id picked but not moved was retried by someone else meanwhile. Reads job_history by
-- scan (it has no index on task or reason): an operator command, not one for a hot path.
-- Guard: only outcome 'exhausted' is picked, and retry_jobs moves only those.
--
-- Parameters: %(task)s text (a task identifier, or null for every task), %(reason)s text
-- (max_attempts, no_handler, permanently_failed, superseded; null for every reason). The
-- caller passes at least one.
-- Returns one row per picked id, by id: id, result ('changed', 'not_found').
with picked as materialized (
    select h.id
    from {schema}.job_history h
    where h.outcome = 'exhausted'
      and (%(task)s::text is null or h.task_identifier = %(task)s::text)
      and (%(reason)s::text is null or h.reason = %(reason)s::text)
), moved as materialized (
    select r.id from {schema}.retry_jobs(array(select p.id from picked p)) r
)
select p.id,
       case when m.id is not null then 'changed' else 'not_found' end as result
from picked p
left join moved m on m.id = p.id
order by p.id;
