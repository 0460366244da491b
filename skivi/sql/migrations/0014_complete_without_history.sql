-- 0014_complete_without_history: a completion without history no longer carries the
-- deleted rows whole. Same signature, same rows returned, same effects.
--
-- Why: the completion's `delete ... returning j.*` kept every deleted row, payload and all,
-- for the history insert, which with history off (the default) inserts nothing; and the
-- history insert and the traceback rows it reads were part of every flush's plan. Without
-- history the delete now returns only what its other statements read (id, lease, queue).
-- Measured here (completions of 200 jobs after claims of 2,000 on a scratch schema, 3
-- rounds, the completing backend's CPU from /proc): 4.75 us a job against 5.0-5.5.
-- Two statements, one per branch, share their delete's text: one statement carrying the
-- row only with history (`case when p_history then j end`, its fields read back for the
-- insert) costs the same without history but 11.3-12.3 us a job with it, against
-- 10.7-11.3 for the whole row (same measurement, history on).
--
-- Safe to apply while engines run: the same function, replaced in one transaction; a flush
-- running meanwhile finishes with the old text.

create or replace function {schema}.complete_claims(
    p_engine bigint, p_ids bigint[], p_leases bigint[], p_history boolean,
    p_lock_timeout text, out id bigint, out lease bigint)
returns setof record
language plpgsql
set plan_cache_mode = force_generic_plan
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    perform set_config('lock_timeout', p_lock_timeout, true);
    if not p_history then
        -- Without history nothing reads the deleted rows but their ids, leases and queues.
        return query
            with done as (
                delete from {schema}.job j
                where j.id = any(p_ids::bigint[])
                  and coalesce((j.id, j.lease) in (select u.id, u.lease
                                                   from unnest(p_ids::bigint[], p_leases::bigint[])
                                                        as u(id, lease)), false)
                  and j.locked_by is not distinct from p_engine
                returning j.id, j.lease, j.queue_name
            ), queued as materialized (
                select done.id, done.queue_name from done where done.queue_name is not null
            ), freed as (
                update {schema}.job_queue q
                set job_id = null, locked_by = null, locked_at = null
                from queued
                where q.queue_name = queued.queue_name and q.job_id = queued.id
            ), traced as (
                delete from {schema}.job_traceback t
                where t.id = any(array(select done.id from done))
                  and exists (select from {schema}.job_traceback)
            )
            select done.id, done.lease from done;
        return;
    end if;
    return query
        with done as (
            delete from {schema}.job j
            where j.id = any(p_ids::bigint[])
              and coalesce((j.id, j.lease) in (select u.id, u.lease
                                               from unnest(p_ids::bigint[], p_leases::bigint[])
                                                    as u(id, lease)), false)
              and j.locked_by is not distinct from p_engine
            returning j.*
        ), queued as materialized (
            select done.id, done.queue_name from done where done.queue_name is not null
        ), freed as (
            update {schema}.job_queue q
            set job_id = null, locked_by = null, locked_at = null
            from queued
            where q.queue_name = queued.queue_name and q.job_id = queued.id
        ), traced as (
            delete from {schema}.job_traceback t
            where t.id = any(array(select done.id from done))
              and exists (select from {schema}.job_traceback)
            returning t.id, t.traceback
        ), recorded as (
            insert into {schema}.job_history (id, task_identifier, queue_name, payload, priority,
                run_at, attempts, max_attempts, last_error, key, flags, created_at, outcome,
                last_error_traceback)
            select d.id, d.task_identifier, d.queue_name, d.payload, d.priority, d.run_at,
                   d.attempts, d.max_attempts, d.last_error, d.key, d.flags, d.created_at,
                   'completed', (select t.traceback from traced t where t.id = d.id)
            from done d
            where p_history
            on conflict (id) do nothing
        )
        select done.id, done.lease from done;
end;
$$;

revoke execute on function {schema}.complete_claims(bigint, bigint[], bigint[], boolean, text)
    from public;
