-- limit_key_stale: the concurrency holds of claims whose engines are gone (their row deleted
-- by the rescue, job_rescue.sql, or by a stop), for limit_key_drop_many.sql to give back. Run
-- after a rescue round that rescued engines (and on the orphan rounds): their jobs wait
-- again (or were exhausted) and run under their limits once the keys are free.
-- Two statements, not one: an engine row never comes back, so a hold whose engine this
-- snapshot does not see is a leftover, and removing exactly the holds found cannot touch
-- one that a live engine (perhaps registered after this snapshot) added meanwhile.
-- Parameters: none.
-- Returns JSON text [[limit, key, [ids], [leases]], ...], or null when nothing is stale.
with stale as (
    select r.limit_name, r.key, array_agg(h.id) as ids, array_agg(h.lease) as leases
    from {schema}.limit_key r
    cross join lateral unnest(r.held_ids, r.held_leases, r.held_by) as h(id, lease, engine)
    where cardinality(r.held_by) > 0
      and not exists (select 1 from {schema}.engine e where e.id = h.engine)
    group by r.limit_name, r.key
)
select json_agg(json_build_array(s.limit_name, s.key, s.ids, s.leases))::text from stale s;
