-- 0003_engine_running: which claimed jobs an engine has actually started.
--
-- Why: an engine claims more jobs than it runs at once (its children's free slots plus one
-- claim batch, Graphile Worker's localQueue), so locked_by alone cannot tell a job that runs
-- from one waiting in the engine's buffer or behind a hung job of its child. Each heartbeat
-- now reports the ids of the jobs whose handlers have started, and operators' views
-- (`skivi jobs list`, `skivi queues`, the metrics) call a locked job `running` only when its
-- engine reported it, `claimed` otherwise. Reported per heartbeat (worker.heartbeat_interval),
-- never per job, so the hot path is unchanged: a job that started since the last heartbeat
-- shows as claimed until the next one.
-- Safe to apply while engines run: adding a column with a constant default rewrites nothing.

alter table {schema}.engine add column running bigint[] not null default array[]::bigint[];
