-- server_statements_exec_time: how long the server has spent executing the statements of
-- this database, by pg_stat_statements, in milliseconds.
--
-- Why: when the server is not on the bench's machine, its processes' CPU cannot be read
-- from /proc. The bench then reads this at the start and at the end of a drain's window
-- and reports the difference per job. It is execution time (planning aside), not CPU time:
-- it counts the waits inside a statement too, and nothing outside statements (commits'
-- flushes by the WAL writer, autovacuum, connection start-up). It counts every session of
-- this database, the bench's own reads of it included. Fails when pg_stat_statements is
-- not installed in a schema on the search_path or not loaded (shared_preload_libraries):
-- the bench probes it once and does without.
--
-- Parameters: none.
-- Returns one row: exec_ms (float8).
select coalesce(sum(total_exec_time), 0)::float8 as exec_ms
from pg_stat_statements
where dbid = (select oid from pg_database where datname = current_database());
