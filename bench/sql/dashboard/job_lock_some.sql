-- job_lock_some: mark %(count)s of the oldest waiting jobs claimed by engine %(engine)s, as
-- an engine's in-flight jobs look (no engine row: the dashboard shows them as claimed).
--
-- Parameters: %(count)s, %(engine)s.
-- Returns nothing.
update {schema}.job j set locked_by = %(engine)s, locked_at = now(), lease = 1
where j.id in (select id from {schema}.job where locked_by is null and attempts = 0
               order by id limit %(count)s);
