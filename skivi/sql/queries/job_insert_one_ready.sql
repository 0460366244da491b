-- job_insert_one_ready: can this connection enqueue through job_insert_one.sql? Asked once
-- per client before its first lone enqueue: insert_job exists only from migration 0009 on,
-- and a producer role may run it only once roles.sql has been run again after that
-- migration. Until both hold, a client keeps enqueueing through insert_jobs (0004), so an
-- application upgraded before its schema (or its grants) enqueues as before. Reads only the
-- catalog, which every role may read.
-- Parameters: %(schema)s (the schema's name, as text).
-- Returns: one boolean.
select exists (
    select from pg_catalog.pg_proc p
    join pg_catalog.pg_namespace n on n.oid = p.pronamespace
    where n.nspname = %(schema)s
      and p.proname = 'insert_job'
      and pg_catalog.has_function_privilege(p.oid, 'execute'));
