-- floor_test_truncate: empty the floor table after each enqueue repeat.
--
-- Parameters: none.
-- Returns nothing.
truncate {schema}.floor_test;
