-- migration_table_exists: whether the schema has a migration table yet (a fresh database
-- has none). Quoting of the schema name is done by format('%%I'), server-side.
-- Parameters: %(schema)s. Returns one boolean.
select to_regclass(format('%%I.migration', %(schema)s::text)) is not null;
