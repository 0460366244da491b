"""Cancel (issue 19): ``skivi.cancel_jobs`` / ``cancel_jobs(ids)`` on waiting and running
jobs, against real engines (``python -m skivi.engine``) and the engine's own statements.

The races where a claim ends before its engine learns of the request are driven through
the engine's statements (``FakeEngine``), so each one happens for sure; the rest run real
engines and judge them by the ledger their handlers write and by the history."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import skivi
from skivi import monitoring
from skivi.db import queries
from skivi.db.queries import for_schema
from tests.support.db import connect
from tests.support.engines import TASKS_DIR, EngineProcs, enqueue, log_of
from tests.support.fake_engine import FakeEngine
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for

SCHEMA = "skivi"


@pytest.fixture
def fake_engine(database: str) -> Iterator[Callable[[], FakeEngine]]:
    """Makes engine identities of the test's own (``FakeEngine``), closed at the end."""
    made: list[FakeEngine] = []

    def make() -> FakeEngine:
        made.append(FakeEngine(database, for_schema(SCHEMA)))
        return made[-1]

    try:
        yield make
    finally:
        for engine in made:
            engine.conn.close()


def write_config(path: Path, *, listen: bool = True, **worker: Any) -> str:
    lines = ["[database]", f"listen = {str(listen).lower()}", "[worker]"]
    lines += [f"{k} = {v!r}" for k, v in worker.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def history(database: str, job_id: int) -> dict[str, Any] | None:
    rows = fetch(database, "select to_jsonb(h) from skivi.job_history h where id = %s", job_id)
    return dict(rows[0][0]) if rows else None


def cancelled(database: str, job_id: int) -> dict[str, Any]:
    """The job's history row, once it is there (its engine may be writing it)."""
    row = wait_for(lambda: history(database, job_id), timeout=30,
                   what=f"job {job_id} in the history")
    return row


def events(engines: EngineProcs, job_id: int, event: str) -> list[float]:
    return [r[4] for r in engines.ledger.rows() if r[0] == job_id and r[3] == event]


def started(engines: EngineProcs, job_id: int) -> float:
    return wait_for(lambda: events(engines, job_id, "start"), timeout=30,
                    what=f"job {job_id} to start")[0]


# -- waiting jobs, and what the API refuses ------------------------------------------------------


def test_waiting_job_goes_to_history_at_once_when_no_engine_holds_it(
        system: skivi.System, database: str) -> None:
    [a, b, later] = [j.id for j in skivi.add_jobs(system, [
        {"task": "noop", "queue_name": "serial"}, {"task": "noop", "queue_name": "serial"},
        {"task": "noop", "run_at": dt.datetime(2099, 1, 1, tzinfo=dt.UTC)}])]
    results = skivi.cancel_jobs(system, [a, later, a, 10**12], reason="duplicate order")
    assert [(r.job_id, r.outcome, r.engine) for r in results] == [
        (a, skivi.CancelOutcome.CANCELLED, None), (later, skivi.CancelOutcome.CANCELLED, None),
        (10**12, skivi.CancelOutcome.NOT_FOUND, None)]
    row = history(database, a)
    assert row is not None
    assert (row["outcome"], row["reason"], row["cancelled_by"], row["attempts"]) == (
        "cancelled", "duplicate order", "postgres", 0)
    assert row["cancel_requested_at"] is not None
    assert skivi.get_result(system, a).state == skivi.ResultState.CANCELLED
    # Its serial queue is not held: the other job of the queue is still there to run.
    assert [r[0] for r in fetch(database, "select id from skivi.job_live order by id")] == [b]
    # Asked again: it has finished.
    assert [r.outcome for r in skivi.cancel_jobs(system, [a], cancelled_by="ops")] == [
        skivi.CancelOutcome.FINISHED]
    assert fetch(database, "select count(*) from skivi.job_cancel") == [(0,)]


@pytest.mark.parametrize(("ids", "message"), [
    (["1"], "a job id must be an int (a Job's id), got '1'"),
    ([True], "a job id must be an int (a Job's id), got True"),
    ([0], "job id 0 is out of range"),
    ([2**63], f"job id {2**63} is out of range"),
    ("12", "ids must be an iterable of job ids (ints), got '12'"),
    (7, "ids must be an iterable of job ids (ints), got 7"),
])
def test_cancel_jobs_refuses_what_is_not_a_job_id_and_cancels_nothing_when_given_it(
        ids: Any, message: str, system: skivi.System, database: str) -> None:
    job = skivi.add_job(system, "noop").id
    with pytest.raises(skivi.SkiviError) as err:
        skivi.cancel_jobs(system, [job, *ids] if isinstance(ids, list) else ids)
    assert message in str(err.value)
    assert live_jobs(database) == 1
    assert skivi.cancel_jobs(system, []) == []


def test_cancel_jobs_async_cancels_in_the_callers_transaction_when_given_conn(
        system: skivi.System, database: str) -> None:
    job = skivi.add_job(system, "noop").id

    async def cancel_then_roll_back() -> skivi.CancelResult:
        async with await psycopg.AsyncConnection.connect(database) as conn:
            [result] = await skivi.cancel_jobs_async(system, [job], reason="r", conn=conn)
            assert live_jobs(database) == 1  # not committed yet
            await conn.rollback()
        return result

    assert asyncio.run(cancel_then_roll_back()).outcome == skivi.CancelOutcome.CANCELLED
    assert live_jobs(database) == 1 and history(database, job) is None
    [again] = asyncio.run(skivi.cancel_jobs_async(system, [job]))
    assert again.outcome == skivi.CancelOutcome.CANCELLED and live_jobs(database) == 0


# -- a claim that ends before its engine learns of the request -----------------------------------


def _end_by_failure(engine: FakeEngine, other: FakeEngine, pair: tuple[int, int],
                    admin: psycopg.Connection[Any]) -> None:
    assert engine.fail([pair]) == [pair[0]]


def _end_by_release(engine: FakeEngine, other: FakeEngine, pair: tuple[int, int],
                    admin: psycopg.Connection[Any]) -> None:
    assert engine.release([pair]) == [pair[0]]
    assert other.claim() == []  # waiting for ever: nobody runs it again


def _end_by_rescue(engine: FakeEngine, other: FakeEngine, pair: tuple[int, int],
                   admin: psycopg.Connection[Any]) -> None:
    admin.execute("update skivi.engine set heartbeat_at = now() - interval '1 hour' "
                  "where id = %s", [engine.id])
    engines, retried, exhausted = other.rescue()
    assert (engines, retried, exhausted) == ([engine.id], 0, 1)


def _end_by_completion(engine: FakeEngine, other: FakeEngine, pair: tuple[int, int],
                       admin: psycopg.Connection[Any]) -> None:
    assert engine.complete([pair]) == [pair[0]]


@pytest.mark.parametrize(("end", "outcome", "attempts"), [
    (_end_by_failure, "cancelled", 1),
    (_end_by_release, "cancelled", 0),
    (_end_by_rescue, "cancelled", 1),
    (_end_by_completion, None, None),
], ids=["failed", "released", "engine lost", "completed"])
def test_claimed_job_is_never_run_again_when_its_claim_ends_before_its_engine_acts(
        end: Any, outcome: str | None, attempts: int | None, system: skivi.System,
        database: str, fake_engine: Callable[[], FakeEngine]) -> None:
    q = for_schema(SCHEMA)
    job = skivi.add_job(system, "noop", max_attempts=5).id
    engine, other = fake_engine(), fake_engine()
    with connect(database) as admin:
        [pair] = engine.claim()
        [asked] = skivi.cancel_jobs(system, [job], reason="stop", cancelled_by="ops")
        assert (asked.outcome, asked.engine) == (skivi.CancelOutcome.REQUESTED, engine.id)
        end(engine, other, pair, admin)
        # Any engine's heartbeat sees the stray request, and its sweep settles it.
        beat = queries.engine_heartbeat.run(other.conn, q, engine=other.id, in_flight=0,
                                            stopping=False, running=[])
        assert beat is not None and beat.strays and beat.cancel_ids == []
        assert queries.job_cancel_sweep.run(other.conn, q) == 1
        assert queries.job_cancel_sweep.run(other.conn, q) == 0
    assert live_jobs(database) == 0  # never retried
    assert fetch(database, "select count(*) from skivi.job_cancel") == [(0,)]
    row = history(database, job)
    if outcome is None:  # completed before the request reached it: it stays completed
        assert row is None  # (worker.history off: completed jobs leave no row)
        return
    assert row is not None
    assert (row["outcome"], row["reason"], row["cancelled_by"], row["attempts"]) == (
        outcome, "stop", "ops", attempts)
    assert row["run_at"] != "infinity"


def test_heartbeat_returns_the_requests_of_its_engines_claims_only_when_asked(
        system: skivi.System, database: str, fake_engine: Callable[[], FakeEngine]) -> None:
    q = for_schema(SCHEMA)
    [a, b] = [j.id for j in skivi.add_jobs(system, [{"task": "noop"}, {"task": "noop"}])]
    mine, theirs = fake_engine(), fake_engine()
    [pa] = mine.claim(limit=1)
    [pb] = theirs.claim(limit=1)
    skivi.cancel_jobs(system, [a, b])
    beat = queries.engine_heartbeat.run(mine.conn, q, engine=mine.id, in_flight=1,
                                        stopping=False, running=[pa[0]])
    assert beat is not None
    assert (beat.cancel_ids, beat.cancel_leases, beat.strays) == ([pa[0]], [pa[1]], False)
    done = queries.job_cancel_many.run(mine.conn, q, engine=mine.id, ids=[pa[0], pb[0]],
                                       leases=[pa[1], pb[1]], errors=["CancelledError", None],
                                       tracebacks=[None, None])
    assert [(r.id, r.reason, r.cancelled_by) for r in done] == [(a, None, "postgres")]
    row = history(database, a)
    assert row is not None and (row["outcome"], row["last_error"]) == (
        "cancelled", "CancelledError")
    assert live_jobs(database) == 1  # the other engine's job is its own to cancel


def test_claimed_job_gives_up_its_key_at_once_when_its_cancel_is_requested(
        system: skivi.System, database: str, fake_engine: Callable[[], FakeEngine]) -> None:
    q = for_schema(SCHEMA)
    job = skivi.add_job(system, "noop", job_key="report").id
    engine = fake_engine()
    [(_, lease)] = engine.claim()
    skivi.cancel_jobs(system, [job])
    # The key is free: a new job takes it (a deduplicating enqueue does not get the old one).
    new = skivi.add_job(system, "noop", job_key="report", job_key_mode="unsafe_dedupe")
    assert (new.outcome, new.id != job) == ("inserted", True)
    queries.job_cancel_many.run(engine.conn, q, engine=engine.id, ids=[job], leases=[lease],
                                errors=[None], tracebacks=[None])
    row = history(database, job)
    assert row is not None and (row["outcome"], row["key"]) == ("cancelled", "report")


# -- running jobs, in real engines ---------------------------------------------------------------


@pytest.mark.parametrize("listen", [True, False], ids=["notified", "polled"])
def test_running_async_job_gets_cancelled_error_within_a_second_when_cancelled(
        listen: bool, engines: EngineProcs, system: skivi.System, database: str,
        tmp_path: Path) -> None:
    # Notified: heartbeats too rare to deliver it in time, so only the NOTIFY can. Polled:
    # no LISTEN at all, only the heartbeat (every 0.5 s by default).
    worker = {} if not listen else {"heartbeat_interval": 5.0, "lease_timeout": 15.0}
    config = write_config(tmp_path / "skivi.toml", listen=listen, **worker)
    engine = engines.start("--config", config, processes=1, concurrency=4)
    [job, after] = enqueue(database, [
        {"task": "async_until_cancelled", "queue_name": "serial"},
        {"task": "noop", "queue_name": "serial"}])
    started(engines, job)
    asked_at = time.time()
    [result] = skivi.cancel_jobs(system, [job], reason="too slow")
    assert result.outcome == skivi.CancelOutcome.REQUESTED
    got = wait_for(lambda: events(engines, job, "cancelled"), timeout=5,
                   what=f"job {job}'s handler to get CancelledError")[0]
    assert got - asked_at < 1.0, log_of(engine)
    row = cancelled(database, job)
    assert (row["outcome"], row["reason"], row["last_error"]) == (
        "cancelled", "too slow", "CancelledError")
    # Its serial queue is free again: the next job of the queue runs.
    started(engines, after)
    wait_for(lambda: live_jobs(database) == 0, timeout=30, what="the queue to drain")
    assert len(events(engines, job, "start")) == 1  # never retried
    assert engine.stop(timeout=30) == 0, log_of(engine)


@pytest.mark.parametrize("threads", [1, 2], ids=["on the loop", "in a thread"])
def test_sync_handler_sees_ctx_cancelled_and_its_job_ends_cancelled_when_it_returns(
        threads: int, engines: EngineProcs, system: skivi.System, database: str,
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "skivi.toml", sync_threads=threads)
    engine = engines.start("--config", config, processes=1, concurrency=4)
    [job] = enqueue(database, [{"task": "sync_until_cancelled"}])
    started(engines, job)
    asked_at = time.time()
    skivi.cancel_jobs(system, [job])
    seen = wait_for(lambda: events(engines, job, "cancelled"), timeout=5,
                    what=f"job {job}'s handler to see ctx.cancelled")[0]
    assert seen - asked_at < 1.0
    row = cancelled(database, job)
    # It returned normally once it saw the request: still cancelled, never completed.
    assert (row["outcome"], row["attempts"], row["last_error"]) == ("cancelled", 1, None)
    assert live_jobs(database) == 0 and len(events(engines, job, "start")) == 1
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_handler_that_ignores_its_cancel_is_killed_after_cancel_grace_and_its_siblings_rerun(
        engines: EngineProcs, system: skivi.System, database: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "skivi.toml", cancel_grace=0.5)
    engine = engines.start("--config", config, processes=1, concurrency=4)
    # The sibling waits on the child's loop, which the stubborn sync handler then holds.
    [sibling] = enqueue(database, [{"task": "async_sleep", "payload": {"s": 1.0}}])
    started(engines, sibling)
    [stubborn] = enqueue(database, [{"task": "sync_ignoring_cancel"}])
    started(engines, stubborn)
    asked_at = time.monotonic()
    skivi.cancel_jobs(system, [stubborn])
    row = cancelled(database, stubborn)
    assert time.monotonic() - asked_at >= 0.5
    assert row["outcome"] == "cancelled" and row["attempts"] == 1
    assert "worker.cancel_grace" in row["last_error"] and "killed" in row["last_error"]
    # The sibling went back without losing its attempt, ran again, and completed.
    wait_for(lambda: events(engines, sibling, "end"), timeout=30,
             what=f"job {sibling} to run again to its end")
    runs = [r for r in engines.ledger.starts() if r[0] == sibling]
    assert [r[2] for r in runs] == [1, 1]  # its second run is still attempt 1
    wait_for(lambda: live_jobs(database) == 0, timeout=30, what="the sibling to complete")
    assert history(database, sibling) is None  # completed (history off), not failed
    assert len(events(engines, stubborn, "start")) == 1
    assert "kill_child_cancel" in log_of(engine) or "killing child" in log_of(engine)
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_job_waiting_in_its_child_is_cancelled_unstarted_and_its_busy_sibling_not_killed(
        engines: EngineProcs, system: skivi.System, database: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "skivi.toml", cancel_grace=0.3)
    engine = engines.start("--config", config, processes=1, concurrency=4)
    # The sync job holds the child's loop for 2 s, so the async job handed to the same child
    # meanwhile cannot start: cancelled, it must not get its busy sibling killed.
    [busy] = enqueue(database, [{"task": "sleep", "payload": {"s": 2.0}}])
    started(engines, busy)
    [waiting] = enqueue(database, [{"task": "async_sleep"}])
    with connect(database) as c:
        wait_for(lambda: c.execute("select locked_by from skivi.job_live where id = %s",
                                   [waiting]).fetchone() not in (None, (None,)),
                 timeout=10, what=f"job {waiting} to be claimed")
    skivi.cancel_jobs(system, [waiting])
    row = cancelled(database, waiting)
    assert row["outcome"] == "cancelled"
    assert events(engines, waiting, "start") == []
    assert len(events(engines, busy, "start")) == 1 and events(engines, busy, "end")
    assert "kill_child_cancel" not in log_of(engine) and "killing child" not in log_of(engine)
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_claimed_job_never_starts_when_cancelled_in_its_engines_buffer(
        engines: EngineProcs, system: skivi.System, database: str) -> None:
    engine = engines.start(processes=1, concurrency=1)
    # One async slot: the second async job waits in the fetcher's buffer, claimed.
    [first, second] = enqueue(database, [{"task": "async_until_cancelled"},
                                         {"task": "async_sleep"}])
    started(engines, first)
    with connect(database) as c:
        wait_for(lambda: c.execute("select locked_by from skivi.job_live where id = %s",
                                   [second]).fetchone() not in (None, (None,)),
                 timeout=10, what=f"job {second} to be claimed into the buffer")
    [result] = skivi.cancel_jobs(system, [second])
    assert result.outcome == skivi.CancelOutcome.REQUESTED
    row = cancelled(database, second)
    assert (row["outcome"], row["attempts"]) == ("cancelled", 1)
    assert events(engines, second, "start") == []
    skivi.cancel_jobs(system, [first])
    cancelled(database, first)
    assert engine.stop(timeout=30) == 0, log_of(engine)


def test_cancel_reaches_a_running_job_while_its_engine_drains_after_sigterm(
        engines: EngineProcs, system: skivi.System, database: str) -> None:
    engine = engines.start("--shutdown-timeout", "60", processes=1, concurrency=2)
    [job] = enqueue(database, [{"task": "async_until_cancelled"}])
    started(engines, job)
    engine.send_signal(signal.SIGTERM)
    wait_for(lambda: "received SIGTERM" in log_of(engine), timeout=10,
             what="the engine to start draining")
    asked_at = time.time()
    [result] = skivi.cancel_jobs(system, [job], reason="deploy")
    assert result.outcome == skivi.CancelOutcome.REQUESTED
    got = wait_for(lambda: events(engines, job, "cancelled"), timeout=5,
                   what=f"job {job} to be cancelled during the drain")[0]
    assert got - asked_at < 1.0
    assert engine.wait_or_kill(20) == 0, log_of(engine)  # done draining long before 60 s
    row = history(database, job)
    assert row is not None and (row["outcome"], row["reason"]) == ("cancelled", "deploy")
    assert live_jobs(database) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cancelled_job_emits_job_cancelled_and_is_counted_when_its_engine_records_it(
        database: str) -> None:
    port = _free_port()
    system = skivi.create_system({
        "database": {"connection_string": database},
        "worker": {"task_directory": str(TASKS_DIR), "processes": 1, "concurrency": 4},
        "metrics": {"port": port}})
    seen = monitoring.collecting_emitter()
    monitoring.on(system.emitter, "job/cancelled", lambda ev: seen.replay([ev]))
    try:
        system.start()
        job = skivi.add_job(system, "async_until_cancelled").id
        wait_for(lambda: fetch(database, "select running from skivi.engine")
                 == [([job],)], timeout=30, what=f"job {job} reported running")
        skivi.cancel_jobs(system, [job], reason="r", cancelled_by="ops")
        wait_for(lambda: seen.of("job/cancelled"), timeout=30,
                 what="a job/cancelled event in the application")

        def counted() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                        timeout=5) as response:
                text = response.read().decode()
            return ('skivi_jobs_total{outcome="cancelled",queue="",'
                    'task="async_until_cancelled"} 1.0') in text

        wait_for(counted, timeout=10, what="the cancelled job in skivi_jobs_total")
    finally:
        assert system.stop() == 0
    [data] = seen.of("job/cancelled")
    assert (data["job_id"], data["task"], data["reason"], data["cancelled_by"],
            data["error"]) == (job, "async_until_cancelled", "r", "ops", "CancelledError")
