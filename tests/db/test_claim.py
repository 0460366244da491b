"""The claim and the completion against the real PostgreSQL: each one autocommit statement
(claim_jobs, migration 0010; complete_claims, 0011) that carries its own lock timeout and
generic plans and leaves nothing set on the session, which a transaction-mode pooler hands
to someone else next."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg
import pytest

from skivi.db.queries import CLAIM_ID, CLAIM_LEASE, for_schema, job_claim, job_complete_many
from tests.support.db import SCHEMA, connect
from tests.support.engines import enqueue


def test_claim_gives_up_after_its_lock_timeout_and_leaves_the_session_as_it_was(
        database: str) -> None:
    q = for_schema(SCHEMA)
    [job] = enqueue(database, [{"task": "noop"}])
    with connect(database) as claimer, connect(database, autocommit=False) as blocker:
        before = claimer.execute("select current_setting('lock_timeout'), "
                                 "current_setting('plan_cache_mode')").fetchone()
        # A session that holds the job table (DDL, an operator's long transaction): the
        # claim must not wait on it for ever, or the engine's intake stops.
        blocker.execute(f"lock table {SCHEMA}.job in access exclusive mode")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            job_claim.run(claimer, q, engine=1, limit=10, serial_limit=10, max_bytes=1 << 20,
                          lock_timeout="300")
        waited = time.monotonic() - started
        assert 0.25 <= waited < 5.0, f"the claim waited {waited:.2f}s on a 300 ms timeout"
        blocker.rollback()
        rows = job_claim.run(claimer, q, engine=1, limit=10, serial_limit=10,
                             max_bytes=1 << 20, lock_timeout="300")
        assert [r[CLAIM_ID] for r in rows] == [job]
        # Autocommit: the claim committed on its own, and no setting outlived it.
        assert claimer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        after = claimer.execute("select current_setting('lock_timeout'), "
                                "current_setting('plan_cache_mode')").fetchone()
        assert after == before
        assert blocker.execute(f"select locked_by from {SCHEMA}.job_running where id = %s",
                               [job]).fetchone() == (1,)


def test_completion_gives_up_after_its_lock_timeout_and_leaves_the_session_as_it_was(
        database: str) -> None:
    q = for_schema(SCHEMA)
    jobs = enqueue(database, [{"task": "noop"}, {"task": "noop"}])
    with connect(database) as engine, connect(database, autocommit=False) as blocker:
        rows = job_claim.run(engine, q, engine=1, limit=10, serial_limit=10,
                             max_bytes=1 << 20)
        claims = {r[CLAIM_ID]: r[CLAIM_LEASE] for r in rows}
        assert sorted(claims) == sorted(jobs)
        before = engine.execute("select current_setting('lock_timeout'), "
                                "current_setting('plan_cache_mode')").fetchone()
        # An operator's transaction holding one of the rows: the flush must not wait on it
        # for ever (the heartbeat shares the connection); the flush is retried later.
        blocker.execute(f"select 1 from {SCHEMA}.job_running where id = %s for update",
                        [jobs[0]])
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            job_complete_many.run(engine, q, engine=1, ids=_array(claims),
                                  leases=_array(claims.values()), history=True,
                                  lock_timeout="300")
        waited = time.monotonic() - started
        assert 0.25 <= waited < 5.0, f"the completion waited {waited:.2f}s on a 300 ms timeout"
        # Nothing was done: one statement, all or nothing.
        assert engine.execute(f"select count(*) from {SCHEMA}.job_running").fetchone() == (2,)
        blocker.rollback()
        done = job_complete_many.run(engine, q, engine=1, ids=_array(claims),
                                     leases=_array(claims.values()), history=True,
                                     lock_timeout="300")
        assert sorted(d[0] for d in done) == sorted(jobs)
        assert engine.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        after = engine.execute("select current_setting('lock_timeout'), "
                               "current_setting('plan_cache_mode')").fetchone()
        assert after == before
        assert blocker.execute(f"select count(*) from {SCHEMA}.job_history "
                               "where outcome = 'completed'").fetchone() == (2,)


def _array(values: Iterable[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def test_rescue_wakes_listening_engines_only_when_it_puts_jobs_back(database: str) -> None:
    # The rescuer may have no room for what it rescued; the others must not wait for their
    # next poll to find it.
    from skivi.db.queries import channel_name
    from tests.support.fake_engine import FakeEngine

    q = for_schema(SCHEMA)
    enqueue(database, [{"task": "noop"}, {"task": "noop"}])
    dead, rescuer = FakeEngine(database, q), FakeEngine(database, q)
    with connect(database) as listener:
        try:
            assert len(dead.claim()) == 2
            listener.execute(f'listen "{channel_name(SCHEMA)}"')
            assert rescuer.rescue() == ([], 0, 0)  # nobody is dead yet: no wake-up
            assert list(listener.notifies(timeout=0.3)) == []
            dead.conn.execute(f"update {SCHEMA}.engine set heartbeat_at = now() - "
                              "interval '1 hour' where id = %s", [dead.id])
            assert rescuer.rescue() == ([dead.id], 2, 0)
            notes = list(listener.notifies(timeout=2.0, stop_after=1))
            assert [n.payload for n in notes] == [""]
            assert list(listener.notifies(timeout=0.3)) == []  # one for the round, not per job
        finally:
            dead.conn.close()
            rescuer.conn.close()
