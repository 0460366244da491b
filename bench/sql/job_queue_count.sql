-- job_queue_count: the serial-queue rows (queues scenario: how many of the past queues the
-- engine left after a drain; it prunes the empty ones).
--
-- Parameters: none.
-- Returns one row: count.
select count(*) from {schema}.job_queue;
