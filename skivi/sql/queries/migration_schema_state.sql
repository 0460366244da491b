-- migration_schema_state: what the instance's schema holds before a migration creates
-- anything in it, so the runner can refuse a schema that belongs to something else
-- (information_schema, public with an application's tables, ...) before touching it.
--
-- A schema is Skivi's when it has a migration table; otherwise it must be empty: no
-- relations (tables, views, sequences, indexes), functions or types of its own. Array types
-- and the row types of relations are not counted (they come with a type or relation that
-- is). Catalog reads only; nothing is locked.
--
-- Parameters: %(schema)s. Returns one row: schema_exists, has_migration_table,
-- object_count (objects that are not Skivi's, 0 when has_migration_table), some_objects
-- (up to 5 of their names, sorted, for the error message).
with s as (
    select n.oid
    from pg_namespace n
    where n.nspname = %(schema)s::text
), migration as (
    select to_regclass(format('%%I.migration', %(schema)s::text)) is not null as yes
), objects as (
    select c.relname::text as name from pg_class c, s where c.relnamespace = s.oid
    union all
    select p.proname::text || '()' from pg_proc p, s where p.pronamespace = s.oid
    union all
    select t.typname::text from pg_type t, s
    where t.typnamespace = s.oid and t.typrelid = 0 and t.typelem = 0
), foreign_objects as (
    select o.name from objects o, migration m where not m.yes
)
select exists (select 1 from s) as schema_exists,
       (select m.yes from migration m) as has_migration_table,
       (select count(*) from foreign_objects) as object_count,
       (select coalesce(array_agg(f.name order by f.name), '{{}}')
        from (select name from foreign_objects order by name limit 5) f) as some_objects;
