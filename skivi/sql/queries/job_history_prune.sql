-- job_history_prune: delete one batch of history rows (completed and exhausted jobs) older
-- than the retention, on one engine at a time.
--
-- Why this shape (River's JobCleaner, leader-only): every engine runs a pruner, but deleting
-- the same rows from several engines at once only multiplies the work and the WAL. So the
-- statement first tries a transaction-level advisory lock, and deletes only if it got it;
-- the lock goes with the statement's transaction (autocommit), so no session ever keeps it
-- and a pruner that dies releases it at once. The key is a single bigint: the class
-- %(lock_class)s in the high 32 bits and hashtext(schema) in the low 32. Single-bigint
-- advisory locks live in a different lock space (pg_locks.objsubid = 1) from the two-int4
-- locks of migrations (1936422505, hashtext(schema)) and engine liveness
-- (hashtext(schema), id) (objsubid = 2), so it can never be confused with either; and two
-- schemas in one database prune independently.
--
-- Batches: the oldest %(batch)s expired rows are picked through job_history_finished_at_idx
-- (a range at the start of the index) and deleted by ctid (= any(array(...)), which plans
-- as a TID scan; a join on ctid would hash the whole table), so one round holds its locks and
-- writes its WAL for a bounded time; the caller runs the next round at once while rounds
-- come back full. The lock is taken in a materialized CTE that gates the scan, so a round
-- that does not get it reads no history at all.
--
-- Parameters: %(lock_class)s integer; %(schema)s (the schema name as text); %(retention)s
-- float8 seconds; %(batch)s.
-- Returns one row: held (whether this round got the lock), deleted (rows deleted).
with lock as materialized (
    select pg_try_advisory_xact_lock(
        (%(lock_class)s::bigint << 32) | (hashtext(%(schema)s::text)::bigint & 4294967295)
    ) as held
), pruned as (
    delete from {schema}.job_history h
    where h.ctid = any(array(
        select x.ctid
        from {schema}.job_history x
        where (select l.held from lock l)
          and x.finished_at < now() - make_interval(secs => %(retention)s::float8)
        order by x.finished_at
        limit %(batch)s))
    returning 1
)
select (select l.held from lock l) as held, (select count(*) from pruned) as deleted;
