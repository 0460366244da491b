-- job_queue_delete: remove every serial-queue row, so that the next repeat of the queues
-- scenario starts without past queues.
--
-- Parameters: none.
-- Returns nothing.
delete from {schema}.job_queue;
