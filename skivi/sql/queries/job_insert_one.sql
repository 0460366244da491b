-- job_insert_one: enqueue ONE job without a job key (a single add_job), in one statement.
--
-- Why not job_insert_many with one spec: insert_job (migration 0009) takes the spec's
-- fields as arguments, so the server parses no JSON array and runs none of a batch's
-- steps; the commonest enqueue costs the server about a fifth less (see the migration).
-- The NOTIFY that wakes engines is delivered at commit, so a rolled-back enqueue wakes
-- nobody.
--
-- Parameters: %(task)s, %(payload)s (jsonb text), %(queue_name)s, %(run_at)s,
-- %(max_attempts)s, %(priority)s, %(flags)s; null takes the table default.
-- Returns: one row (id, now()).
select i.id, i.inserted_at
from {schema}.insert_job(%(task)s, %(payload)s::jsonb, %(queue_name)s,
                         %(run_at)s::timestamptz, %(max_attempts)s::integer,
                         %(priority)s::smallint, %(flags)s::text[]) as i;
