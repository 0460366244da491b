-- job_remove_many: delete pending jobs by id (`skivi jobs remove`); nothing is recorded in
-- job_history. Running jobs are refused: deleting one would let its engine's result find no
-- row while its handler carries on. Every id asked for comes back with what happened to it.
--
-- Why this shape: one DELETE guarded by locked_by null; the ids it did not delete are told
-- apart by reading the job table in the same statement, whose snapshot predates the delete:
-- still in the table means running (or claimed meanwhile), absent means never found. The
-- serial queue a removed job belonged to keeps its job_queue row (queues are never
-- deleted, and a pending job never holds its queue); its job_traceback row goes with it.
-- Guard: only rows with locked_by null.
--
-- Parameters: %(ids)s bigint[] (distinct, in the operator's order).
-- Returns one row per id, in that order: id, result ('changed', 'running', 'not_found'),
-- locked_by (the engine running a skipped job, or null).
with removed as (
    delete from {schema}.job j
    where j.id = any(%(ids)s::bigint[]) and j.locked_by is null
    returning j.id
), untraced as (
    delete from {schema}.job_traceback t using removed r where t.id = r.id
)
select u.id,
       case when r.id is not null then 'changed'
            when j.id is not null then 'running'
            else 'not_found' end as result,
       case when r.id is null then j.locked_by end as locked_by
from unnest(%(ids)s::bigint[]) with ordinality as u(id, ord)
left join removed r on r.id = u.id
left join {schema}.job_running j on j.id = u.id
order by u.ord;
