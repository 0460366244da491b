-- limit_key_held_many: the concurrency keys that finishing claims hold, for
-- limit_key_drop_many.sql to give back. Run by the completer of an engine that claims under
-- limits, in the flush's transaction, BEFORE the statements that finish the claims
-- (job_complete_many deletes the rows this reads); the drop comes last, so the key rows
-- are locked only for the end of the flush (claims skip locked key rows).
--
-- Each claim's keys are those the claim took (job_claim_limited.sql), computed again from
-- the job row, whose payload does not change while it runs: only jobs without a queue (the
-- limited claim's) and concurrency limits. Found by primary key with the claim's lease, so
-- a stale claim (rescued, then claimed again under a new lease) holds nothing here.
-- Parameters: %(ids)s bigint[]; %(leases)s bigint[] (pairwise).
-- Returns JSON text [[limit, key, [ids], [leases]], ...] as limit_key_drop_many.sql takes
-- it, or null when none of the claims holds a key.
with given as (
    select l.name,
           coalesce(case when l.key_path is null then j.task_identifier
                         else j.payload #>> l.key_path end, '') as key,
           array_agg(j.id) as ids, array_agg(j.lease) as leases
    from unnest(%(ids)s::bigint[], %(leases)s::bigint[]) as u(id, lease)
    join {schema}.job_live j on j.id = u.id and j.lease = u.lease
    join {schema}.job_limit l on j.task_identifier = any(l.tasks) and l.period is null
    where j.queue_name is null
    group by 1, 2
)
select json_agg(json_build_array(g.name, g.key, g.ids, g.leases))::text from given g;
