-- job_limit_upsert_many: record the limits an engine's configuration declares ([[limits]]
-- and typed tasks' limits=), so every engine enforces them (job_claim_limited.sql reads
-- job_limit). Run by each engine at start, like cron_known.sql for cron entries; writes
-- only what changed (no dead row on every start). A limit no configuration declares any
-- more stays until removed (skivi limits remove); a changed one takes effect at once (a
-- key holding more than a lowered concurrency admits nothing until it is under it; one
-- whose tasks, key or kind changed forgets what it counted: its running jobs are not
-- counted under the new rule).
-- Parameters: %(names)s text[]; %(tasks)s text[] (each limit's tasks as one JSON array
-- text, pairwise with names); %(key_paths)s text[] (a JSON array text of the path, or null
-- for the task identifier); %(slots)s int[]; %(periods)s float8[] (null: concurrency).
-- Returns the names of the limits inserted or changed.
with given as (
    select u.name, array(select jsonb_array_elements_text(u.tasks::jsonb)) as tasks,
           case when u.key_path is null then null
                else array(select jsonb_array_elements_text(u.key_path::jsonb)) end
               as key_path,
           u.slots, u.period
    from unnest(%(names)s::text[], %(tasks)s::text[], %(key_paths)s::text[],
                %(slots)s::int[], %(periods)s::float8[])
        as u(name, tasks, key_path, slots, period)
), before as (
    -- The limits as they were (this statement's snapshot: before the upsert).
    select l.name, l.tasks, l.key_path, l.period from {schema}.job_limit l
    where l.name = any(%(names)s::text[])
), upserted as (
    insert into {schema}.job_limit as l (name, tasks, key_path, slots, period)
    select g.name, g.tasks, g.key_path, g.slots, g.period from given g
    order by g.name
    on conflict (name) do update set
        tasks = excluded.tasks, key_path = excluded.key_path, slots = excluded.slots,
        period = excluded.period, updated_at = now()
    where (l.tasks, l.key_path, l.slots, l.period)
          is distinct from (excluded.tasks, excluded.key_path, excluded.slots, excluded.period)
    returning l.name
), reset as (
    -- A limit whose tasks, key or kind changed starts afresh: its key rows (what runs, the
    -- recent starts) were counted under the old rule, and a finishing job's keys are
    -- computed with the new one.
    delete from {schema}.limit_key k
    using before b, given g
    where k.limit_name = b.name and g.name = b.name
      and (b.tasks, b.key_path, b.period is null)
          is distinct from (g.tasks, g.key_path, g.period is null)
)
select u.name from upserted u order by u.name;
