-- schema_comment_get: the comment on a schema, to tell the bench's scratch schema (marked
-- by schema_comment_set) from one the bench must not touch.
--
-- Parameters: %(schema)s (the schema's name).
-- Returns one row if the schema exists: comment (null when it has none); no row otherwise.
select obj_description(oid, 'pg_namespace') as comment
from pg_namespace
where nspname = %(schema)s;
