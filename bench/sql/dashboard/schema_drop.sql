-- schema_drop: drop the benchmark's scratch schema and everything in it.
--
-- Parameters: none.
-- Returns nothing.
drop schema if exists {schema} cascade;
