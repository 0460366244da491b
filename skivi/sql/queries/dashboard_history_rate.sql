-- dashboard_history_rate: jobs finished within the last %(window)s seconds, by outcome:
-- the overview's throughput and failure rate.
--
-- Why this shape: job_history_finished_at_idx gives the window as an index range; each
-- outcome is counted up to %(cap)s rows (a LIMIT under the count), so a busy hour costs at
-- most 2 * %(cap)s index entries and heap visits, and a count that reaches the cap is
-- shown as "at least". Completed jobs are here only where worker.history is on; exhausted
-- ones always are.
--
-- Parameters: %(window)s float8 seconds; %(cap)s.
-- Returns one row: completed, exhausted (each at most %(cap)s), history_estimate (the
-- history table's row count in the planner statistics; -1 before the first analyze).
select
    (select count(*) from (
        select 1 from {schema}.job_history h
        where h.finished_at > now() - make_interval(secs => %(window)s::float8)
          and h.outcome = 'completed'
        limit %(cap)s) x) as completed,
    (select count(*) from (
        select 1 from {schema}.job_history h
        where h.finished_at > now() - make_interval(secs => %(window)s::float8)
          and h.outcome = 'exhausted'
        limit %(cap)s) x) as exhausted,
    (select c.reltuples from pg_class c
     where c.oid = '{schema}.job_history'::regclass)::bigint as history_estimate;
