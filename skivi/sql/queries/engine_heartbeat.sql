-- engine_heartbeat: prove this engine is alive and report its load.
-- The heartbeat covers what the liveness lock cannot see (a half-open connection, a frozen
-- host): an engine whose heartbeat is older than its lease_timeout is rescued like a dead one.
-- It also reports which claimed jobs have started (see 0003_engine_running.sql).
-- Parameters: %(engine)s, %(in_flight)s, %(stopping)s, %(running)s (bigint[]: ids of the
-- jobs whose handlers have started).
-- Returns the engine's id, or no row if it was declared dead (its jobs were rescued).
update {schema}.engine
set heartbeat_at = now(), in_flight = %(in_flight)s, stopping = %(stopping)s,
    running = %(running)s::bigint[]
where id = %(engine)s
returning id;
