-- roles.sql: the privileges of Skivi's worker and producer roles on one Skivi schema.
--
-- A reference script, not loaded by Skivi itself (docs/operations.md, "Database roles").
-- Three roles, created beforehand by an administrator:
--   owner     owns the schema and everything in it; runs the migrations. Needs CREATE on the
--             database (the migration runner issues CREATE SCHEMA IF NOT EXISTS, which
--             PostgreSQL checks even when the schema exists). Not a superuser.
--   worker    what the engines connect as: reads and writes the schema's tables, uses its
--             sequences, runs its functions; no DDL. Engines run with --no-migrate.
--   producer  what applications that only enqueue connect as: add_job / add_jobs from SQL,
--             skivi.add_job / skivi.add_jobs from Python; it can neither read payloads nor
--             change or delete jobs.
--
-- Run it as the owner after every migration (it is idempotent; a migration that replaces
-- add_jobs or add_keyed_job resets them to SECURITY INVOKER, and producers then fail with
-- "permission denied" until this runs again):
--
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -v schema=skivi -v owner=skivi_owner \
--        -v worker=skivi_worker -v producer=skivi_producer -f skivi/sql/roles.sql
--
-- Why the enqueue functions become SECURITY DEFINER: add_jobs returns the jobs it inserts
-- (RETURNING *), which needs SELECT on every column of job, and a job key replaces or
-- deduplicates a pending job (UPDATE and SELECT on job). Run as the caller, a producer would
-- need all of that. Run as the owner, with search_path pinned (every table they touch is
-- schema-qualified) and EXECUTE granted to the worker and producer only, they give producers
-- exactly what enqueueing does. Python's unkeyed enqueue (job_insert_many.sql) inserts
-- directly and reads back the ids and run_at of its own rows: INSERT on job and job_queue,
-- SELECT on job (id, run_at) and the job id sequence.

begin;

-- Nothing of the schema for PUBLIC: no usage, and no EXECUTE on its functions (PostgreSQL
-- grants EXECUTE to PUBLIC on every new function unless told otherwise).
revoke all on schema :"schema" from public;
revoke execute on all functions in schema :"schema" from public;
alter default privileges for role :"owner" revoke execute on functions from public;

-- worker: everything the engine does, no DDL. The migration table is read-only to it.
grant usage on schema :"schema" to :"worker";
grant select, insert, update, delete on all tables in schema :"schema" to :"worker";
revoke insert, update, delete, truncate on :"schema".migration from :"worker";
grant usage on all sequences in schema :"schema" to :"worker";
grant execute on all functions in schema :"schema" to :"worker";
-- and the same on what later migrations create
alter default privileges for role :"owner" in schema :"schema"
    grant select, insert, update, delete on tables to :"worker";
alter default privileges for role :"owner" in schema :"schema"
    grant usage on sequences to :"worker";
alter default privileges for role :"owner" in schema :"schema"
    grant execute on functions to :"worker";

-- producer: enqueue only.
grant usage on schema :"schema" to :"producer";
grant insert on :"schema".job, :"schema".job_queue to :"producer";
grant select (id, run_at) on :"schema".job to :"producer";
grant usage on sequence :"schema".job_id_seq to :"producer";
grant execute on function
    :"schema".add_job(text, jsonb, text, timestamptz, integer, text, integer, text[], text),
    :"schema".add_jobs(jsonb),
    :"schema".add_keyed_job(text, jsonb, text, timestamptz, integer, smallint, text[], text,
                            text)
    to :"producer";
alter function :"schema".add_jobs(jsonb)
    security definer set search_path = pg_catalog, pg_temp;
alter function :"schema".add_keyed_job(text, jsonb, text, timestamptz, integer, smallint,
                                       text[], text, text)
    security definer set search_path = pg_catalog, pg_temp;

commit;
