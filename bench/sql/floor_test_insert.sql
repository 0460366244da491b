-- floor_test_insert: one row of the single-insert floor (enqueue scenario).
--
-- Run in autocommit, once per add_job call that was timed: one plain single-row insert
-- transaction each, what a single add_job is compared with.
--
-- Parameters: none.
-- Returns nothing.
insert into {schema}.floor_test (x) values (1);
