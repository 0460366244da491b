-- dashboard_job_match: the ids of the live jobs matching the dashboard's jobs filter, oldest
-- first, for a bulk action over "every job matching" (and the count its confirmation
-- shows).
--
-- Why this shape: a bulk action must find every matching job, not only those a page's
-- bounded scan reaches, so this reads the table (the primary key in id order, stopping at
-- %(limit)s matches); it runs once per confirmation and once per action, never on a
-- refresh. The caller hands the ids to the same statements as the single actions
-- (job_retry_many.sql, job_remove_many.sql, ...), so the rules about running jobs hold.
-- Filters and state are those of dashboard_job_list_newest.sql.
--
-- Parameters: %(task)s, %(queue)s, %(key)s, %(search)s, %(state)s text or null; %(limit)s.
-- Returns: id, by id.
select j.id
from {schema}.job_live j
cross join lateral (
    select case
        when j.locked_by is not null then
            case when exists (select 1 from {schema}.engine e
                              where e.id = j.locked_by and j.id = any(e.running))
                 then 'running' else 'claimed' end
        when j.attempts > 0 and j.last_error is not null then 'failed'
        when j.run_at > now() then 'scheduled'
        else 'waiting'
    end as state
) st
where (%(task)s::text is null or j.task_identifier = %(task)s::text)
  and (%(queue)s::text is null or j.queue_name = %(queue)s::text)
  and (%(key)s::text is null or j.key = %(key)s::text)
  and (%(state)s::text is null or st.state = %(state)s::text)
  and (%(search)s::text is null
       or strpos(lower(j.payload::text), lower(%(search)s::text)) > 0)
order by j.id
limit %(limit)s;
