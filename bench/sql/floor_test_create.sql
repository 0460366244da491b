-- floor_test_create: the table of the enqueue scenario's single-insert floor.
--
-- Why this shape: the cheapest table a one-row insert transaction can go to, an identity
-- primary key and one integer, so the floor measures the commit, not the row.
--
-- Parameters: none.
-- Returns nothing.
create table {schema}.floor_test (
    id bigint generated always as identity primary key,
    x integer not null
);
