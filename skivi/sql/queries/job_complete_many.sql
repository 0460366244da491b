-- job_complete_many: finish successful jobs, one statement per batch, through complete_claims
-- (migration 0011, where the completion's SQL and its reasons are): run in autocommit, it is
-- its own transaction and one round trip, and the function carries the lock timeout and the
-- generic plan that the completion used to need a transaction of its own for. Inside a
-- flush's transaction (one that also fails, releases or cancels jobs) it is one statement of
-- several.
--
-- Guard: only rows still claimed by this engine under the same lease are touched, so a late
-- completion from an attempt that was rescued (and perhaps claimed again elsewhere) changes
-- nothing. With history on (%(history)s) completed jobs are also recorded in job_history.
--
-- Parameters: %(engine)s; %(ids)s bigint[]; %(leases)s bigint[] (pairwise); %(history)s bool;
-- %(lock_timeout)s the lock timeout in milliseconds, as text.
-- Returns (id, lease) of the rows actually completed (a missing pair was stale: rescued or
-- already finished). The lease tells apart two claims of one job in the same batch.
select c.id, c.lease
from {schema}.complete_claims(%(engine)s, %(ids)s::bigint[], %(leases)s::bigint[], %(history)s,
                            %(lock_timeout)s) as c;
