-- engine_heartbeat: prove this engine is alive and report its load.
-- The heartbeat covers what the liveness lock cannot see (a half-open connection, a frozen
-- host): an engine whose heartbeat is older than its lease_timeout is rescued like a dead one.
-- Parameters: %(engine)s, %(in_flight)s, %(stopping)s.
-- Returns the engine's id, or no row if it was declared dead (its jobs were rescued).
update {schema}.engine
set heartbeat_at = now(), in_flight = %(in_flight)s, stopping = %(stopping)s
where id = %(engine)s
returning id;
