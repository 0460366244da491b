-- job_history_retry_many: put exhausted jobs from history back in the queue, runnable now
-- with their attempts reset (`skivi history retry`), through the SQL function retry_jobs
-- (migration 0001). Every id asked for comes back with what happened to it.
--
-- Why this shape: retry_jobs returns only the jobs it moved; the others are told apart by
-- reading job_history in the same statement, whose snapshot predates the function's writes:
-- a history row with outcome 'completed' cannot be retried (it succeeded); any other id was
-- not found in history (never existed, not finished yet, or retried meanwhile).
-- Guard: retry_jobs moves only rows with outcome 'exhausted'.
--
-- Parameters: %(ids)s bigint[] (distinct, in the operator's order).
-- Returns one row per id, in that order: id, result ('changed', 'completed', 'not_found').
with moved as materialized (
    select r.id from {schema}.retry_jobs(%(ids)s::bigint[]) r
)
select u.id,
       case when m.id is not null then 'changed'
            when h.outcome = 'completed' then 'completed'
            else 'not_found' end as result
from unnest(%(ids)s::bigint[]) with ordinality as u(id, ord)
left join moved m on m.id = u.id
left join {schema}.job_history h on h.id = u.id
order by u.ord;
