-- job_result_store_many: keep the results of finished jobs of tasks that keep them, and wake
-- whoever waits for them (skivi.wait_for), one statement per completion flush.
--
-- Run by the completer only when its batch holds such jobs, in the same transaction as the
-- job_complete_many / job_fail_many that finished them, and only for the claims those
-- statements accepted (the caller passes no other), so a stale result stores nothing. A
-- batch without them never runs it: finishing other jobs costs what it did before results.
-- A job that already has a result (retried from history, finished again) gets the new one.
--
-- The notification on {done_channel} (skivi.db.queries.done_channel_name) carries the ids
-- finished, comma-separated (%(notice)s), or '' when they would not fit in a NOTIFY payload:
-- a waiter then looks at its job whatever the ids.
--
-- Parameters: pairwise arrays %(ids)s bigint[], %(tasks)s text[], %(outcomes)s text[]
-- ('completed' or 'exhausted'), %(vals)s text[] (JSON text, or null), %(errors)s text[];
-- %(notice)s text.
-- Returns nothing.
with stored as (
    insert into {schema}.job_result as r (id, task_identifier, outcome, value, error)
    select u.id, u.task, u.outcome, u.val::jsonb, u.error
    from unnest(%(ids)s::bigint[], %(tasks)s::text[], %(outcomes)s::text[],
                %(vals)s::text[], %(errors)s::text[]) as u(id, task, outcome, val, error)
    on conflict (id) do update
        set task_identifier = excluded.task_identifier, outcome = excluded.outcome,
            value = excluded.value, error = excluded.error, finished_at = now()
    returning r.id
)
select pg_notify({done_channel}, %(notice)s::text) from (select count(*) from stored) s;
