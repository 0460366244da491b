-- relay_bounds_local: bound how long the rest of this transaction waits for any lock, and
-- how long each of its statements may run.
--
-- Why: an engine runs its children's enqueues (skivi.engine.relay) on the connection its
-- heartbeat needs too, so an enqueue stuck behind a lock, or a bulk one that takes seconds,
-- would hold up the heartbeat and get a live engine declared dead. Past the bound the
-- enqueue fails (nothing stored) and the handler is told why. Transaction-scoped
-- (set_config(..., true)), so nothing outlives the transaction: safe through a
-- transaction-mode pooler.
--
-- Parameters: %(ms)s (milliseconds, as text). Returns both settings, comma-separated.
select set_config('lock_timeout', %(ms)s, true) || ','
       || set_config('statement_timeout', %(ms)s, true);
