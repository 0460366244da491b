-- lock_timeout_local: bound how long the rest of this transaction waits for any lock.
--
-- Why: the engine's parts share one connection, so a write stuck behind someone else's lock
-- (a long admin transaction, DDL) would hold up the heartbeat too, and a live engine would
-- be declared dead. Transaction-scoped (set_config(..., true)), so nothing outlives the
-- transaction: safe through a transaction-mode pooler.
--
-- Parameters: %(ms)s (milliseconds, as text). Returns the setting.
select set_config('lock_timeout', %(ms)s, true);
