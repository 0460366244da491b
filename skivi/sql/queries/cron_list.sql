-- cron_list: where the given cron entries stand (`skivi cron list`): when each was first
-- registered and its last execution (the tick last enqueued, as cron_fire.sql records it).
-- Read-only: unlike cron_known.sql it registers nothing, so listing never makes an entry
-- "known" (which would stop it from being backfilled from its real start).
--
-- Parameters: %(identifiers)s text[].
-- Returns: identifier, known_since, last_execution; identifiers never registered by a
-- scheduler have no row.
select c.identifier, c.known_since, c.last_execution
from {schema}.cron c
where c.identifier = any(%(identifiers)s::text[]);
