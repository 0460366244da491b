-- cron_known: register cron entries when a scheduler starts, and read where each one stands.
--
-- Why: backfill after downtime walks from an entry's last_execution, and a new entry must
-- never be backfilled. So a new identifier is recorded with known_since = the scheduler's
-- clock and no last_execution; cron_fire.sql refuses any tick at or before known_since.
-- Existing rows are left as they are (ON CONFLICT DO NOTHING): however many engines start
-- at once, the first registration of an identifier wins.
--
-- The second SELECT reads the statement's snapshot, which does not contain the rows this
-- statement inserts, so each identifier comes back at most once. An identifier registered
-- by a concurrent engine after that snapshot is in neither part; the caller treats a missing
-- identifier as new (known since its own clock), which the guard in cron_fire.sql makes safe.
--
-- Parameters: %(identifiers)s text[]; %(now)s timestamptz (the scheduler's clock).
-- Returns: identifier, known_since, last_execution, created (true if registered now).
with registered as (
    insert into {schema}.cron (identifier, known_since)
    select i.identifier, %(now)s::timestamptz
    from unnest(%(identifiers)s::text[]) as i(identifier)
    order by i.identifier
    on conflict (identifier) do nothing
    returning identifier, known_since, last_execution
)
select r.identifier, r.known_since, r.last_execution, true as created
from registered r
union all
select c.identifier, c.known_since, c.last_execution, false as created
from {schema}.cron c
where c.identifier = any(%(identifiers)s::text[]);
