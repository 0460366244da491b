-- dashboard_history_match: the ids of the exhausted jobs in history matching the
-- dashboard's history filter, oldest id first, for "retry every exhausted job matching"
-- (and the count its confirmation shows). The caller hands them to
-- job_history_retry_many.sql, as a single retry does.
--
-- Why this shape: as dashboard_job_match.sql: a bulk action must find every match, so this
-- reads the history in id order and stops at %(limit)s matches; it runs once per
-- confirmation and once per action, never on a refresh. Completed jobs cannot be retried,
-- so only outcome 'exhausted' is picked.
--
-- Parameters: %(task)s, %(reason)s, %(search)s text or null; %(limit)s.
-- Returns: id, by id.
select h.id
from {schema}.job_history h
where h.outcome = 'exhausted'
  and (%(task)s::text is null or h.task_identifier = %(task)s::text)
  and (%(reason)s::text is null or h.reason = %(reason)s::text)
  and (%(search)s::text is null
       or strpos(lower(h.payload::text), lower(%(search)s::text)) > 0)
order by h.id
limit %(limit)s;
