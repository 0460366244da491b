"""The claim statement against the real PostgreSQL: one autocommit statement (claim_jobs,
migration 0010) that carries its own lock timeout and generic plans and leaves nothing set
on the session, which a transaction-mode pooler hands to someone else next."""

from __future__ import annotations

import time

import psycopg
import pytest

from skivi.db.queries import CLAIM_ID, for_schema, job_claim
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
        assert blocker.execute(f"select locked_by from {SCHEMA}.job where id = %s",
                               [job]).fetchone() == (1,)
