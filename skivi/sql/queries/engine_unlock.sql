-- engine_unlock: let go of an engine's liveness lock without closing its connection.
--
-- Why: engine_register.sql takes a session advisory lock, which a rollback does not free.
-- skivi.testing's drain may register on the caller's own connection (its test
-- transaction), and must leave that session as it found it.
--
-- Parameters: %(schema)s, %(engine)s. Returns whether the lock was held (and is now free).
select pg_advisory_unlock(hashtext(%(schema)s::text), (%(engine)s %% 2147483647)::integer);
