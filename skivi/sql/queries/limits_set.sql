-- limits_set: make the database-side payload limit (limits.max_payload_bytes, migration
-- 0004) that of the configuration that migrates, so the SQL enqueue functions refuse what
-- Python's validation.max_payload_bytes refuses. Run after migrating, as the migrating role;
-- writes only when the value changes (no dead row on every start).
-- Parameters: %(max_payload_bytes)s.
-- Returns nothing.
update {schema}.limits
set max_payload_bytes = %(max_payload_bytes)s
where max_payload_bytes is distinct from %(max_payload_bytes)s;
