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
--             skivi.add_job / skivi.add_jobs from Python. It has no privilege on any table:
--             only EXECUTE on the enqueue functions, which run as the owner (SECURITY
--             DEFINER, search_path pinned, since migration 0004) and check every column
--             they write. It can neither read payloads nor change or delete jobs, and what
--             an enqueue returns never carries a payload it did not write.
--
-- Run it as the owner after every migration (it is idempotent):
--
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -v schema=skivi -v owner=skivi_owner \
--        -v worker=skivi_worker -v producer=skivi_producer -f skivi/sql/roles.sql
--
-- (`skivi roles --print` prints this file from an installed package.)

begin;

-- Nothing of the schema for PUBLIC: no usage, and no EXECUTE on its functions (PostgreSQL
-- grants EXECUTE to PUBLIC on every new function unless told otherwise).
revoke all on schema :"schema" from public;
revoke execute on all functions in schema :"schema" from public;
alter default privileges for role :"owner" revoke execute on functions from public;

-- worker: everything the engine does, no DDL. The migration table is read-only to it.
grant usage on schema :"schema" to :"worker";
grant select, insert, update, delete on all tables in schema :"schema" to :"worker";
revoke insert, update, delete, truncate on :"schema".migration, :"schema".limits
    from :"worker";
grant usage on all sequences in schema :"schema" to :"worker";
grant execute on all functions in schema :"schema" to :"worker";
-- and the same on what later migrations create
alter default privileges for role :"owner" in schema :"schema"
    grant select, insert, update, delete on tables to :"worker";
alter default privileges for role :"owner" in schema :"schema"
    grant usage on sequences to :"worker";
alter default privileges for role :"owner" in schema :"schema"
    grant execute on functions to :"worker";

-- producer: enqueue only, through the functions. The revokes undo the table privileges
-- that this script granted before migration 0004.
grant usage on schema :"schema" to :"producer";
revoke all on all tables in schema :"schema" from :"producer";
revoke all on all sequences in schema :"schema" from :"producer";
revoke execute on all functions in schema :"schema" from :"producer";
grant execute on function
    :"schema".add_job(text, jsonb, text, timestamptz, integer, text, integer, text[], text),
    :"schema".add_jobs(jsonb),
    :"schema".insert_jobs(jsonb),
    :"schema".insert_job(text, jsonb, text, timestamptz, integer, smallint, text[])
    to :"producer";

commit;
