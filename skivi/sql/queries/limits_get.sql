-- limits_get: the database-side limits (migration 0004), read before limits_set so that a
-- role without UPDATE on the table (the worker role) writes only when they differ.
-- Parameters: none.
-- Returns one row: max_payload_bytes.
select l.max_payload_bytes from {schema}.limits l;
