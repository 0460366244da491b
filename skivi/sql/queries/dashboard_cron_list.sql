-- dashboard_cron_list: every cron entry the schema's schedulers have registered, by
-- identifier, with its last execution (as cron_fire.sql records it). Unlike cron_list.sql
-- it is not limited to the entries of one configuration: the dashboard also shows entries
-- registered by other deployments (or since removed from the configuration).
--
-- Cost: the cron table holds one row per entry ever registered; at most %(limit)s are read,
-- in primary key order.
--
-- Parameters: %(limit)s.
-- Returns: identifier, known_since, last_execution.
select c.identifier, c.known_since, c.last_execution
from {schema}.cron c
order by c.identifier
limit %(limit)s;
