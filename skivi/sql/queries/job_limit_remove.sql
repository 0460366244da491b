-- job_limit_remove: forget a declared limit and its slots (skivi limits remove). An engine
-- whose configuration still declares it records it again when it starts.
-- Parameters: %(name)s.
-- Returns true when the limit existed.
with removed as (
    delete from {schema}.job_limit l where l.name = %(name)s returning 1
)
select exists (select 1 from removed);
