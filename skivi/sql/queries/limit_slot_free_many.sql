-- limit_slot_free_many: free the concurrency slots of finished claims: completed, failed
-- (retried or exhausted) and released ones. Run by the completer in the transaction that
-- writes them (job_complete_many, job_fail_many, job_release_many), and only by an engine
-- that claims with job_claim_limited.sql, so a slot is never held by a job that is not
-- running, and other engines' flushes send nothing more.
--
-- Guard: (job_id, lease) pairs, so a stale claim (rescued, then claimed again under a new
-- lease) frees nothing of the new claim's. Found by limit_slot_job_idx.
-- Wakes the engines (an empty NOTIFY) when it freed a slot: a job held back by the limit
-- may run now, on any engine.
-- Parameters: %(ids)s bigint[]; %(leases)s bigint[] (pairwise).
-- Returns the number of slots freed.
with freed as (
    update {schema}.limit_slot s
    set job_id = null, lease = null, locked_by = null, locked_at = null
    from unnest(%(ids)s::bigint[], %(leases)s::bigint[]) as u(id, lease)
    where s.job_id = u.id and s.lease = u.lease
    returning 1
)
-- pg_notify per row: PostgreSQL sends one notification per distinct payload per transaction.
select count(*) from freed f where pg_notify({channel}, '') is not null;
