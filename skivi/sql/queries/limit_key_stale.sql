-- limit_key_stale: the concurrency holds of claims that are over: their job is no longer
-- running under that claim (rescued, finished or removed by some way that is not the
-- engine's completer), or their engine is gone (its row deleted by the rescue,
-- job_rescue.sql, or by a stop), for limit_key_drop_many.sql to give back. Run after a
-- rescue round that rescued engines, and on the orphan rounds (a safety net: the completer
-- gives keys back in the transaction that finishes the job, so a hold and its running
-- claim are always seen together).
-- Two statements, not one: a claim stamps its keys in the transaction that claims the job,
-- so any snapshot that sees a hold sees its claim; a hold that this snapshot sees without a
-- running claim (or without its engine, whose row never comes back) is over, and removing
-- exactly the holds found cannot touch one added after this snapshot.
-- Parameters: none.
-- Returns JSON text [[limit, key, [ids], [leases]], ...], or null when nothing is stale.
with stale as (
    select r.limit_name, r.key, array_agg(h.id) as ids, array_agg(h.lease) as leases
    from {schema}.limit_key r
    cross join lateral unnest(r.held_ids, r.held_leases, r.held_by) as h(id, lease, engine)
    where cardinality(r.held_by) > 0
      and (not exists (select 1 from {schema}.engine e where e.id = h.engine)
           or not exists (select 1 from {schema}.job_running j
                          where j.id = h.id and j.lease = h.lease
                            and j.locked_by is not null))
    group by r.limit_name, r.key
)
select json_agg(json_build_array(s.limit_name, s.key, s.ids, s.leases))::text from stale s;
