-- schema_drop: drop the scratch schema and everything in it: a leftover from an earlier
-- run (only one schema_comment_set marked), or this run's at the end (unless --keep).
--
-- Parameters: none.
-- Returns nothing.
drop schema if exists {schema} cascade;
