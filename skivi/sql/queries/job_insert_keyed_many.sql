-- job_insert_keyed_many: enqueue jobs that carry a job key, with Graphile Worker's job_key
-- semantics (replace / preserve_run_at / unsafe_dedupe), through add_jobs (migration 0004):
-- the same checks, key order (concurrent producers lock keyed rows in the same order, so two
-- bulk calls that share keys cannot deadlock), NOTIFY and privacy rules as from SQL. A
-- deduplicated job comes back without its payload and last error, an updated one with the
-- caller's payload (null when an array was appended to the stored one).
--
-- Parameters: %(specs)s: jsonb array of objects with task, payload, queue_name, run_at,
-- max_attempts, priority, flags, job_key, job_key_mode.
-- Returns: ord (0-based position in specs), outcome ('inserted' | 'updated' |
-- 'deduplicated') and the job as returned by add_jobs, in spec order.
select a.ord - 1, a.outcome, a.id, a.task_identifier, a.queue_name, a.payload, a.priority,
       a.run_at, a.attempts, a.max_attempts, a.last_error, a.key, a.flags, a.locked_by,
       a.locked_at, a.lease, a.created_at, a.updated_at
from {schema}.add_jobs(%(specs)s::jsonb) as a
order by a.ord;
