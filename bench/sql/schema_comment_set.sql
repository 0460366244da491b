-- schema_comment_set: mark the scratch schema as the bench's, so that a later run may drop
-- it and no run drops a schema it did not make.
--
-- Why a {{marker}} literal, not a parameter: COMMENT is a utility statement and takes no
-- bind parameters; the loader composes the marker in with psycopg.sql.Literal.
--
-- Parameters: none.
-- Returns nothing.
comment on schema {schema} is {marker};
