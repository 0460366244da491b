-- migration_record: record a migration as applied. Run first in the migration's own
-- transaction (as Graphile Worker does): a concurrent starter that got past the lock by
-- mistake fails on the primary key instead of applying the migration twice.
-- Parameters: %(id)s, %(name)s. Returns nothing.
insert into {schema}.migration (id, name) values (%(id)s, %(name)s);
