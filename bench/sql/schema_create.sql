-- schema_create: the fresh scratch schema each bench run works in.
--
-- Parameters: none.
-- Returns nothing.
create schema {schema};
