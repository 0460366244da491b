-- job_queue_prune: remove the job_queue rows of serial queues that have no job left.
--
-- Why: a queue per user or tenant leaves one row per name ever used; nothing else removes
-- them, and a table of dead queue names costs every statement that reads it. The claim does
-- not read them (it finds queues from their jobs), so this is storage hygiene, run by every
-- engine with its history pruning, a bounded batch per round.
--
-- Safety (no serial queue may ever run two jobs at once, and no committed job may be left
-- without its queue row): a row is taken FOR UPDATE SKIP LOCKED, so rows held by an enqueue
-- that has not committed (hold_queues: FOR KEY SHARE), by a claim (FOR NO KEY UPDATE) or by
-- another pruner are skipped; once taken, no enqueue can hold it until this commits, so the
-- "no job in this queue" check cannot be overtaken by a job committed meanwhile (an enqueue
-- that comes after waits, finds the row gone and inserts it again). Rows with a running
-- job (job_id set) are never taken.
--
-- Cost: up to %(batch)s free rows, each checked with one probe of job_queue_claim_idx (the
-- queue's unlocked jobs) and, for locked ones, the primary key of job_queue's holder.
--
-- Parameters: %(batch)s.
-- Returns one row: deleted (rows removed).
with empty as (
    select q.queue_name
    from {schema}.job_queue q
    where q.job_id is null
      and not exists (select 1 from {schema}.job_live j where j.queue_name = q.queue_name)
    limit %(batch)s
    for update of q skip locked
), deleted as (
    delete from {schema}.job_queue q
    using empty e
    where q.queue_name = e.queue_name
    returning 1
)
select count(*) from deleted;
