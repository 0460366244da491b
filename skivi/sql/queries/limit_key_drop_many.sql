-- limit_key_drop_many: give back concurrency keys: remove exactly the given (id, lease) holds
-- from their key rows. What finishing claims hold (limit_key_held_many.sql, the completer's
-- last statement of a flush), or what claims of engines that are gone hold
-- (limit_key_stale.sql, the rescue round). Exact pairs, so what any snapshot saw does not
-- matter: a hold added meanwhile is never touched. The rows are locked in key order first:
-- two engines giving back never deadlock (claims skip locked rows and never wait for this).
-- Parameters: %(holds)s: JSON text [[limit, key, [ids], [leases]], ...].
-- Returns the number of key rows changed; wakes the engines (NOTIFY 'limits') when one of
-- them was full (a job held back by the limit may run now, on any engine).
with given as (
    select s ->> 0 as name, s ->> 1 as key,
           array(select jsonb_array_elements_text(s -> 2)::bigint) as ids,
           array(select jsonb_array_elements_text(s -> 3)::bigint) as leases
    from jsonb_array_elements(%(holds)s::jsonb) as s
), locked as materialized (
    select r.limit_name, r.key
    from {schema}.limit_key r
    join given g on g.name = r.limit_name and g.key = r.key
    order by r.limit_name, r.key
    for no key update of r
), dropped as (
    update {schema}.limit_key r
    set (held_ids, held_leases, held_by) = (
        select coalesce(array_agg(h.id order by h.o), '{{}}'),
               coalesce(array_agg(h.lease order by h.o), '{{}}'),
               coalesce(array_agg(h.engine order by h.o), '{{}}')
        from unnest(r.held_ids, r.held_leases, r.held_by) with ordinality
            as h(id, lease, engine, o)
        where not exists (select 1 from unnest(g.ids, g.leases) as x(id, lease)
                          where x.id = h.id and x.lease = h.lease))
    from given g, {schema}.job_limit l
    where r.limit_name = g.name and r.key = g.key and l.name = r.limit_name
      and (r.limit_name, r.key) in (select k.limit_name, k.key from locked k)
    returning cardinality(r.held_ids) + cardinality(g.ids) >= l.slots as was_full
)
select n.dropped
from (select count(*) as dropped, bool_or(d.was_full) as wake from dropped d) n
-- One NOTIFY, and only when a full key was given back to.
left join lateral (select pg_notify({channel}, 'limits') where n.wake) notified on true;
