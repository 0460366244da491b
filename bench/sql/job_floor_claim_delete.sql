-- job_floor_claim_delete: the raw SQL floor of a drain: claim a batch of runnable jobs and
-- delete them, in one statement, as PostgreSQL can do it with no engine.
--
-- Why this shape: the same selection and order as the engine's claim (unlocked, not in a
-- serial queue, due, by priority, run_at, id; SKIP LOCKED), so the floor reads the same
-- index the engine does; one statement and one transaction per batch, where the engine
-- needs a claim and a completion. The bench runs it in autocommit until it deletes nothing.
--
-- Parameters: %(limit)s (the batch, the engine's claim batch).
-- Returns nothing; the row count is the number of jobs deleted.
delete from {schema}.job
where id in (
    select id
    from {schema}.job
    where locked_by is null and queue_name is null and run_at <= now()
    order by priority, run_at, id
    limit %(limit)s
    for update skip locked
);
