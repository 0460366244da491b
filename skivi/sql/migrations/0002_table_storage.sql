-- 0002_table_storage: vacuum and page-fill settings for a queue's churn.
--
-- Why: every job is inserted, updated at claim (and on failure), then deleted; each step
-- leaves a dead row version and dead index entries that claims step over until vacuum
-- removes them. Autovacuum's default trigger (20% of the table dead) is far too late for a
-- queue whose live table is small and whose churn is large, so the job tables are vacuumed
-- early and allowed to work faster, and their pages keep room for updated versions.
-- Safe to apply while engines run: storage parameters take a SHARE UPDATE EXCLUSIVE lock,
-- which enqueues, claims and completions never wait for. Operators may override any of these
-- with their own `alter table ... set (...)` (README, "Vacuum and bloat").

alter table {schema}.job set (
    autovacuum_vacuum_scale_factor = 0.01,  -- vacuum once 1% is dead ...
    autovacuum_vacuum_threshold = 1000,     -- ... plus 1000 rows
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000,    -- 10x the default work per round
    fillfactor = 80                         -- room for a claim's new version on its page
);
alter table {schema}.job_queue set (autovacuum_vacuum_scale_factor = 0.01, fillfactor = 50);
alter table {schema}.engine set (fillfactor = 50);  -- heartbeats stay HOT updates
alter table {schema}.job_history set (autovacuum_vacuum_scale_factor = 0.05);
