-- limit_slot_sweep: free the concurrency slots held by engines that are gone (their row
-- deleted by the rescue, job_rescue.sql, or by a clean stop). Run after every rescue round:
-- the rescue returns the dead engine's jobs to waiting and deletes its row, and this frees
-- their slots, so they run again under their limits. Engine ids are never reused, so a
-- slot whose engine has no row is a leftover, whatever the snapshot.
-- Parameters: none.
-- Returns the number of slots freed; wakes the engines (an empty NOTIFY) when any was.
with freed as (
    update {schema}.limit_slot s
    set job_id = null, lease = null, locked_by = null, locked_at = null
    where s.job_id is not null
      and not exists (select 1 from {schema}.engine e where e.id = s.locked_by)
    returning 1
)
-- pg_notify per row: PostgreSQL sends one notification per distinct payload per transaction.
select count(*) from freed f where pg_notify({channel}, '') is not null;
