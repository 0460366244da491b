-- migration_applied: the migrations recorded in this schema, oldest first.
-- Parameters: none. Returns (id, name).
select id, name from {schema}.migration order by id;
