-- job_release_many: give back claimed jobs that never started (prefetched, or queued in a
-- child at shutdown): waiting again at once, their attempt not consumed.
--
-- Guard: only rows still claimed by this engine under the same lease. Found by primary key,
-- never through an index on running jobs (see job_complete_many.sql).
-- Parameters: %(engine)s; %(ids)s bigint[]; %(leases)s bigint[].
-- Returns the ids released.
with released as (
    update {schema}.job j
    set locked_by = null,
        locked_at = null,
        attempts = greatest(j.attempts - 1, 0)
    from unnest(%(ids)s::bigint[], %(leases)s::bigint[]) as u(id, lease)
    where j.id = u.id and j.lease = u.lease
      and j.locked_by is not distinct from %(engine)s
    returning j.id, j.queue_name
), freed as (
    update {schema}.job_queue q
    set job_id = null, locked_by = null, locked_at = null
    from released r
    where r.queue_name is not null and q.queue_name = r.queue_name and q.job_id = r.id
)
select released.id from released;
