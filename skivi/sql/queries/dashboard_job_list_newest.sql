-- dashboard_job_list_newest: one page of the dashboard's jobs list, newest (highest id) first,
-- from a keyset cursor (%(before)s: the id the previous page ended on).
--
-- Why this shape: every page costs at most %(scan)s index entries and heap rows, however
-- large the table and whatever the filters. The scan walks the primary key from the cursor
-- and stops after %(scan)s rows; the filters no index serves (task, queue, state, payload
-- text) are applied to the rows scanned, and the page is the first %(limit)s that match. The
-- filters an index serves are applied inside the scan: %(key)s (job_key_idx: at most one
-- row) and %(locked)s (true for the running and claimed states: job_running, a few rows
-- per engine slot; false for the others). The statement is sent unprepared, so the planner
-- sees the parameters and folds each "is null" test away. Unless the page fills, the last
-- row scanned comes back too, flagged boundary (whether or not it matched): where the next
-- search goes on from, so a filter matching nothing in the scanned rows says how far it
-- looked instead of reading the whole table. An index for task would make those filters
-- exact but tax every enqueue and completion on the hot table; this keeps the hot path as
-- it is. The state is job_list.sql's; the payload search compares the payload's JSON text
-- with %(search)s, case-insensitively (strpos: no LIKE pattern to escape).
--
-- Parameters: %(before)s bigint or null (the first page); %(task)s, %(queue)s, %(key)s,
-- %(search)s text or null; %(state)s text or null (running, claimed, failed, scheduled,
-- waiting); %(locked)s bool or null; %(scan)s; %(limit)s.
-- Returns up to %(limit)s rows, by id desc: id, task_identifier, queue_name, state, priority,
-- run_at, attempts, max_attempts, last_error (its first 300 characters), key, locked_by,
-- created_at, payload_preview (the payload's JSON text, its first 200 characters), matched
-- (false only for the boundary row), boundary (the last row the scan read).
with scanned as (
    select j.id, j.task_identifier, j.queue_name, j.priority, j.run_at, j.attempts,
           j.max_attempts, j.last_error, j.key, j.locked_by, j.created_at, j.payload,
           row_number() over (order by j.id desc) as n
    from (
        select j.*
        from {schema}.job_live j
        where (%(before)s::bigint is null or j.id < %(before)s::bigint)
          and (%(key)s::text is null or j.key = %(key)s::text)
          and (%(locked)s::boolean is null
               or (j.locked_by is not null) = %(locked)s::boolean)
        order by j.id desc
        limit %(scan)s
    ) j
), judged as (
    select s.*, st.state,
           ((%(task)s::text is null or s.task_identifier = %(task)s::text)
            and (%(queue)s::text is null or s.queue_name = %(queue)s::text)
            and (%(state)s::text is null or st.state = %(state)s::text)
            and (%(search)s::text is null
                 or strpos(lower(s.payload::text), lower(%(search)s::text)) > 0)) as matched
    from scanned s
    cross join lateral (
        select case
            when s.locked_by is not null then
                case when exists (select 1 from {schema}.engine e
                                  where e.id = s.locked_by and s.id = any(e.running))
                     then 'running' else 'claimed' end
            when s.attempts > 0 and s.last_error is not null then 'failed'
            when s.run_at > now() then 'scheduled'
            else 'waiting'
        end as state
    ) st
)
select d.id, d.task_identifier, d.queue_name, d.state, d.priority, d.run_at, d.attempts,
       d.max_attempts, left(d.last_error, 300) as last_error, d.key, d.locked_by,
       d.created_at, left(d.payload::text, 200) as payload_preview, d.matched,
       d.n = %(scan)s as boundary
from judged d
where d.matched or d.n = %(scan)s
order by d.id desc
limit %(limit)s;
