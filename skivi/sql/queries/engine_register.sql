-- engine_register: give a starting engine its identity.
--
-- Every process start gets a new id (Oban #862: identities reused across restarts meant
-- orphans were never rescued). The row is the engine's lease: heartbeat_at is set by the
-- database's clock here and at every heartbeat (engine_heartbeat.sql), and job_rescue.sql on
-- any engine treats a row whose heartbeat is older than its lease_timeout as dead. Nothing is
-- held by the session (no advisory lock, no LISTEN), so this works per transaction, through a
-- transaction-mode pooler.
--
-- Parameters: %(hostname)s, %(pid)s, %(version)s, %(lease_timeout)s, %(processes)s,
-- %(concurrency)s. Returns (id).
insert into {schema}.engine (hostname, pid, version, lease_timeout, processes, concurrency)
values (%(hostname)s, %(pid)s, %(version)s, %(lease_timeout)s, %(processes)s, %(concurrency)s)
returning id;
