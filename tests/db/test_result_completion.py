"""The completer against the real PostgreSQL, its wire traced by libpq (``PQtrace``): a
batch without kept results sends exactly the statements it sent before results existed (its
transaction, the transaction-local lock_timeout, the completion), and one with them adds
job_result_store_many in the same transaction."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import skivi
from skivi.db.queries import CLAIM_ID, CLAIM_LEASE, CLAIM_TASK, engine_register, for_schema
from skivi.db.queries import job_claim as claim
from skivi.engine.completer import Completer
from skivi.engine.connection import Reconnecting
from skivi.engine.wire import completed_row
from tests.support.db import SCHEMA
from tests.support.rows import fetch


def completed(rows: list[Any]) -> list[list[Any]]:
    return [completed_row(job_id=r[CLAIM_ID], lease=r[CLAIM_LEASE], task=r[CLAIM_TASK],
                          queue_name=None, run_seconds=0.0, wait_seconds=0.0, slot=0)
            for r in rows]


async def traced_flushes(url: str, trace: Path, keeping: bool) -> tuple[str, str]:
    """Complete two batches of two jobs each (the first prepares the statement), tracing
    the second: what went over the wire for it, and what for the first."""
    q = for_schema(SCHEMA)
    db = Reconnecting(url, "skivi-complete-test")
    try:
        conn = await db.get()
        engine = await engine_register.run_async(
            conn, q, hostname="test", pid=os.getpid(), version="test",
            lease_timeout=30.0, processes=1, concurrency=4)
        rows = await claim.run_async(conn, q, engine=engine, limit=10, serial_limit=10,
                                     max_bytes=1 << 20)
        assert len(rows) == 4
        completer = Completer(db, q, engine_id=lambda: engine, batch_size=100, interval=0.0,
                              max_buffer=1000, history=False,
                              keeping_results=frozenset({"add"}) if keeping else frozenset())
        texts = []
        for batch in (rows[:2], rows[2:]):
            path = trace.with_suffix(f".{len(texts)}")
            with open(path, "w") as out:
                conn.pgconn.trace(out.fileno())
                if keeping:
                    completer.keep([[r[CLAIM_ID], r[CLAIM_LEASE], "add", '{"n": 1}', None]
                                    for r in batch])
                completer.add(completed(batch))
                await completer.flush()
                conn.pgconn.untrace()
            texts.append(path.read_text())
        return texts[1], texts[0]
    finally:
        await db.close()


def test_a_batch_without_results_sends_only_the_completion_when_nothing_is_kept(
        system: skivi.System, database: str, tmp_path: Path) -> None:
    skivi.add_jobs(system, [{"task": "add"} for _ in range(4)])
    steady, first = asyncio.run(traced_flushes(database, tmp_path / "trace", keeping=False))
    assert "job_result" not in first + steady
    assert "complete_claims(" in first  # the completion statement, parsed on first use
    # Then: the prepared completion alone (bound, not parsed), in autocommit, so one round
    # trip with no BEGIN or COMMIT; the lock timeout is its parameter (migration 0011).
    assert "BEGIN" not in steady and "COMMIT" not in steady, steady
    assert "complete_claims" not in steady and "set_config" not in steady, steady
    assert steady.count("\tBind\t") == 1 and steady.count("\tExecute\t") == 1, steady
    assert "'1500'" in steady, steady
    assert fetch(database, "select count(*) from skivi.job_result") == [(0,)]


def test_a_batch_with_values_stores_them_in_the_same_transaction_when_kept(
        system: skivi.System, database: str, tmp_path: Path) -> None:
    jobs = skivi.add_jobs(system, [{"task": "add"} for _ in range(4)])
    steady, first = asyncio.run(traced_flushes(database, tmp_path / "trace", keeping=True))
    for text in (first, steady):
        assert "BEGIN" in text and "COMMIT" in text and "job_result" in text, text
    rows = fetch(database, "select id, outcome, value from skivi.job_result order by id")
    assert rows == [(j.id, "completed", {"n": 1}) for j in jobs]
    assert fetch(database, "select count(*) from skivi.job_live") == [(0,)]
