-- job_result_prune: delete one batch of kept results older than worker.result_retention, on
-- one engine at a time.
--
-- The same shape as job_history_prune.sql (read its header for why): a transaction-level
-- advisory lock taken in a materialized CTE gates the scan, the oldest %(batch)s expired rows
-- are found through job_result_finished_at_idx and deleted by ctid. Its lock class
-- (%(lock_class)s, HistoryPruner.RESULT_LOCK_CLASS) is its own, so pruning results never
-- waits for or skips a round of history pruning.
--
-- Parameters: %(lock_class)s integer; %(schema)s (the schema name as text); %(retention)s
-- float8 seconds; %(batch)s.
-- Returns one row: held (whether this round got the lock), deleted (rows deleted).
with lock as materialized (
    select pg_try_advisory_xact_lock(
        (%(lock_class)s::bigint << 32) | (hashtext(%(schema)s::text)::bigint & 4294967295)
    ) as held
), pruned as (
    delete from {schema}.job_result r
    where r.ctid = any(array(
        select x.ctid
        from {schema}.job_result x
        where (select l.held from lock l)
          and x.finished_at < now() - make_interval(secs => %(retention)s::float8)
        order by x.finished_at
        limit %(batch)s))
    returning 1
)
select (select l.held from lock l) as held, (select count(*) from pruned) as deleted;
