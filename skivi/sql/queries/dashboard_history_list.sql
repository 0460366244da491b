-- dashboard_history_list: one page of the dashboard's history (finished jobs), most
-- recently finished first, from a keyset cursor (%(before_at)s, %(before_id)s: the row the
-- previous page ended on).
--
-- Why this shape: as dashboard_job_list_newest.sql, over job_history_finished_at_idx: the
-- scan walks the index backwards from the cursor (ties on finished_at broken by id, an
-- incremental sort of each tie only) and stops after %(scan)s rows; the filters (task,
-- outcome, reason, payload text) are applied to the rows scanned, and unless the page fills
-- the last row scanned comes back flagged boundary, where the next search goes on from.
--
-- Parameters: %(before_at)s timestamptz and %(before_id)s bigint, or both null (the first
-- page); %(task)s, %(outcome)s, %(reason)s, %(search)s text or null; %(scan)s; %(limit)s.
-- Returns up to %(limit)s rows: id, task_identifier, queue_name, outcome, reason, attempts,
-- max_attempts, last_error (its first 300 characters), key, run_at, created_at,
-- finished_at, payload_preview (first 200 characters of its JSON text), matched, boundary.
with scanned as (
    select h.id, h.task_identifier, h.queue_name, h.outcome, h.reason, h.attempts,
           h.max_attempts, h.last_error, h.key, h.run_at, h.created_at, h.finished_at,
           h.payload,
           row_number() over (order by h.finished_at desc, h.id desc) as n
    from (
        select h.*
        from {schema}.job_history h
        where %(before_at)s::timestamptz is null
           or (h.finished_at <= %(before_at)s::timestamptz
               and (h.finished_at, h.id) < (%(before_at)s::timestamptz, %(before_id)s::bigint))
        order by h.finished_at desc, h.id desc
        limit %(scan)s
    ) h
), judged as (
    select s.*,
           ((%(task)s::text is null or s.task_identifier = %(task)s::text)
            and (%(outcome)s::text is null or s.outcome = %(outcome)s::text)
            and (%(reason)s::text is null or s.reason = %(reason)s::text)
            and (%(search)s::text is null
                 or strpos(lower(s.payload::text), lower(%(search)s::text)) > 0)) as matched
    from scanned s
)
select d.id, d.task_identifier, d.queue_name, d.outcome, d.reason, d.attempts,
       d.max_attempts, left(d.last_error, 300) as last_error, d.key, d.run_at, d.created_at,
       d.finished_at, left(d.payload::text, 200) as payload_preview, d.matched,
       d.n = %(scan)s as boundary
from judged d
where d.matched or d.n = %(scan)s
order by d.finished_at desc, d.id desc
limit %(limit)s;
