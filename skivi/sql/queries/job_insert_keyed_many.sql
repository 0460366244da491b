-- job_insert_keyed_many: enqueue jobs that carry a job key, with Graphile Worker's job_key
-- semantics (replace / preserve_run_at / unsafe_dedupe), implemented once in the SQL
-- function add_keyed_job (migration 0001) and shared with add_job / add_jobs.
--
-- Specs are taken in key order so concurrent producers lock keyed rows in the same order
-- (no deadlocks between two bulk calls that share keys).
--
-- Parameters: %(specs)s: jsonb array of objects with ord, task, payload, queue_name, run_at,
-- max_attempts, priority, flags, job_key, job_key_mode.
-- Returns: ord, outcome ('inserted' | 'updated' | 'deduplicated') and the job as stored.
with src as materialized (
    select s.*
    from jsonb_to_recordset(%(specs)s::jsonb) as s(
        ord integer, task text, payload jsonb, queue_name text, run_at timestamptz,
        max_attempts integer, priority smallint, flags text[], job_key text, job_key_mode text)
), queues as (
    insert into {schema}.job_queue (queue_name)
    select distinct src.queue_name from src where src.queue_name is not null
    on conflict do nothing
), added as materialized (
    -- The ordered subquery makes the calls themselves run in key order.
    select src.ord, a.*
    from (select * from src order by src.job_key, src.ord) as src,
        lateral {schema}.add_keyed_job(
        src.task, coalesce(src.payload, '{{}}'::jsonb), src.queue_name,
        coalesce(src.run_at, now()), coalesce(src.max_attempts, 25),
        coalesce(src.priority, 0::smallint), src.flags, src.job_key,
        coalesce(src.job_key_mode, 'replace')) as a
), notified as (
    select pg_notify({channel},
                     case when min((added.job).run_at) <= now() then ''
                          else extract(epoch from min((added.job).run_at))::text end)
    from added
    where added.outcome <> 'deduplicated'
    having count(*) > 0
)
select added.ord, added.outcome, (added.job).*
from added left join notified on true
order by added.ord;
