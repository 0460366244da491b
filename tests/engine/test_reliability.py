"""Targeted reliability tests: each asserts one rule of README.md's "Guarantees" under one
fault (reliability research §5.3). The SQL-level ones drive the engine's own statements
(skivi.db.queries) on a real database; the others run ``python -m skivi.engine``."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from skivi.config import SYNC_PREFETCH_DEFAULT
from skivi.db import queries
from skivi.db.queries import for_schema
from skivi.engine.process import children_of
from tests.support.db import connect
from tests.support.engines import EngineProcs, engine_id, enqueue, log_of, runs_a_job_then_stops
from tests.support.fake_engine import FakeEngine
from tests.support.rows import fetch, live_jobs
from tests.support.servers import PrivateServer
from tests.support.wait import wait_for

SCHEMA = "skivi"


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Show a measurement in pytest's output, passing or not."""
    with capsys.disabled():
        print(f"\n  {text}")


def write_config(path: Path, **worker: Any) -> str:
    lines = ["[worker]"] + [f"{k} = {v!r}" for k, v in worker.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# -- the claim guard, driven through the engine's own statements ----------------------------------


def _connection_closed(a: FakeEngine, admin: psycopg.Connection[Any]) -> None:
    # A closed connection alone is no death (nothing is held by the session): the engine
    # stops heartbeating, and its lease runs out.
    a.conn.close()
    _heartbeat_stale(a, admin)


def _heartbeat_stale(a: FakeEngine, admin: psycopg.Connection[Any]) -> None:
    admin.execute("update skivi.engine set heartbeat_at = now() - interval '1 hour' "
                  "where id = %s", [a.id])


def _row_removed(a: FakeEngine, admin: psycopg.Connection[Any]) -> None:
    admin.execute("delete from skivi.engine where id = %s", [a.id])


LOSSES: dict[str, Callable[[FakeEngine, psycopg.Connection[Any]], None]] = {
    "connection closed": _connection_closed,
    "heartbeat stale": _heartbeat_stale,
    "engine row removed": _row_removed,
}
LATE_WRITES: dict[str, Callable[[FakeEngine, list[tuple[int, int]]], list[int]]] = {
    "complete": FakeEngine.complete,
    "fail": FakeEngine.fail,
    "exhaust": lambda engine, pairs: engine.fail(pairs, final="no_handler"),
    "release": FakeEngine.release,
}


@pytest.fixture
def late_writer(database: str) -> Iterator[Callable[[], FakeEngine]]:
    """Makes FakeEngines that write with A's engine id after A was rescued (its connection
    may be gone: the late write then comes from a new connection, as after a reconnect)."""
    made: list[FakeEngine] = []

    def make() -> FakeEngine:
        made.append(FakeEngine(database, for_schema(SCHEMA)))
        return made[-1]

    yield make
    for e in made:
        e.conn.close()


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("write", LATE_WRITES)
def test_late_write_changes_nothing_when_the_job_was_rescued_and_claimed_again(
        database: str, late_writer: Callable[[], FakeEngine], loss: str, write: str) -> None:
    with connect(database) as admin:
        [(job,)] = admin.execute("select id from skivi.add_job('t')").fetchall()
        a, b = late_writer(), late_writer()
        [(claimed, lease_a)] = a.claim()
        assert (claimed, lease_a) == (job, 1)
        LOSSES[loss](a, admin)
        rescued = wait_for(lambda: [r for r in [b.rescue()] if r[0]], what="A to be rescued")
        assert rescued == [([a.id], 1, 0)]
        assert b.claim() == [(job, 2)]
        if a.conn.closed:  # the late write arrives on a new connection, as after a reconnect
            a.conn = connect(database)
        assert LATE_WRITES[write](a, [(job, lease_a)]) == []
        assert admin.execute("select locked_by, lease, attempts from "
                             "skivi.job_live").fetchall() == [
            (b.id, 2, 2)]
        assert admin.execute("select count(*) from skivi.job_history").fetchone() == (0,)
        # The current claim still finishes normally.
        assert b.complete([(job, 2)]) == [job]


@pytest.mark.parametrize("write", ["complete", "fail"])
def test_a_batch_holding_two_claims_of_one_job_reports_only_the_current_one(
        database: str, late_writer: Callable[[], FakeEngine], write: str) -> None:
    """The same engine lost a job to a rescuer and claimed it again: both runs' results can
    land in one batch. The statements say which (id, lease) they accepted, so the engine
    counts (and emits) one outcome, not two."""
    with connect(database) as admin:
        [(job,)] = admin.execute("select id from skivi.add_job('t')").fetchall()
        a = late_writer()
        assert a.claim() == [(job, 1)]
        # A rescue: the claimed row moves back to job, waiting.
        admin.execute("with m as (delete from skivi.job_running returning *) "
                      "insert into skivi.job select id, task_identifier, queue_name, payload, "
                      "priority, run_at, attempts, max_attempts, last_error, key, flags, null, "
                      "null, lease, created_at, updated_at, created_by from m")
        assert a.claim() == [(job, 2)]
        pairs = [(job, 1), (job, 2)]
        if write == "complete":
            done = queries.job_complete_many.run(
                a.conn, a.q, engine=a.id, ids=[p[0] for p in pairs],
                leases=[p[1] for p in pairs], history=False)
            assert done == [(job, 2)]
        else:
            failed = queries.job_fail_many.run(
                a.conn, a.q, engine=a.id, ids=[job, job], leases=[1, 2], errors=["x", "y"],
                delays=[0.0, 0.0], finals=[None, None], payloads=[None, None],
                attempts=[None, None], tracebacks=[None, None])
            assert [r[:5] for r in failed] == [(job, "failed", 2, 2, 25)]


# -- graceful stop in the middle of a prefetched batch --------------------------------------------


def test_unstarted_jobs_go_back_with_their_attempt_unused_when_stopped_mid_batch(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.3}} for _ in range(30)])
    engine = engines.start("--shutdown-timeout", "10", processes=1, concurrency=1)
    # One claim takes the whole batch (room = free slots + one claim batch), one job runs.
    wait_for(lambda: fetch(database, "select count(*) from skivi.job_live where locked_by "
                                     "is not null"
                                     )[0][0] == len(ids), what="the whole batch claimed")
    wait_for(lambda: engines.ledger.starts(), what="the first job to start")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=20) == 0, log_of(engine)
    started = {r[0] for r in engines.ledger.starts()}
    assert 1 <= len(started) <= 2, started
    rows = fetch(database, "select id, attempts, locked_by, last_error from "
                           "skivi.job_live order by id")
    assert {r[0] for r in rows} == set(ids) - started, "a started job was not finished"
    assert all(r[1:] == (0, None, None) for r in rows), rows


# -- completion writes failing --------------------------------------------------------------------


def test_results_are_retried_and_land_when_the_completion_connection_is_killed_repeatedly(
        engines: EngineProcs, database: str) -> None:
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.004}} for _ in range(1500)])
    engine = engines.start(processes=2, concurrency=4)
    wait_for(lambda: engines.ledger.starts(), what="the first job to start")
    kills = 0

    def kill_engine_connection_then_check() -> bool:
        nonlocal kills
        kills += len(fetch(database, "select pg_terminate_backend(pid) from pg_stat_activity "
                                     "where application_name = 'skivi-engine'"))
        return live_jobs(database) == 0

    wait_for(kill_engine_connection_then_check, timeout=90, what="every job to finish")
    assert kills >= 5, f"the engine's connection was killed only {kills} times"
    assert "completion flush failed" in log_of(engine)
    runs = engines.ledger.runs_per_job()
    assert set(runs) == set(ids), "a job never ran"
    assert max(runs.values()) == 1, "a job ran twice although no process was killed"
    assert fetch(database, "select count(*) from skivi.job_history")[0][0] == 0
    assert engine.poll() is None, log_of(engine)


def test_the_parent_holds_about_batch_max_bytes_of_unstarted_payload_whatever_the_backlog(
        engines: EngineProcs, database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pad, limit, n = 100_000, 300_000, 40
    ids = enqueue(database, [{"task": "sleep", "payload": {"s": 0.3, "pad": "x" * pad}}
                             for _ in range(n)])
    config = write_config(tmp_path / "skivi.toml", batch_max_bytes=limit)
    engines.start("--config", config, processes=1, concurrency=1)
    # One child of two slots (the tasks are sync and async), one slow sync job at a time:
    # the rest of what is claimed waits in the parent, at most the byte limit of it plus the
    # job that crosses it (a claim always takes one), i.e. 4 of these jobs.
    capacity, most_buffered = 2, limit // pad + 1
    most = 0

    def claimed() -> int:
        return int(fetch(database, "select count(*) from skivi.job_live "
                                   "where locked_by is not null")[0][0])

    def watch() -> bool:
        nonlocal most
        most = max(most, claimed())
        assert most <= capacity + most_buffered, \
            f"{most} jobs of {pad:,} bytes claimed with worker.batch_max_bytes = {limit:,}"
        return len(engines.ledger.starts()) >= 6

    wait_for(watch, timeout=30, what="six jobs to start")
    report(capsys, f"claimed at most {most} jobs of {pad:,} payload bytes with "
                   f"batch_max_bytes {limit:,} ({n} waiting)")
    assert most >= 2 and live_jobs(database) > 0 and set(ids)


def test_claiming_pauses_when_the_result_buffer_is_full(
        engines: EngineProcs, database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    concurrency, batch, buffer = 2, 10, 20
    # The test registry has sync and async tasks, so a child has both lanes: `concurrency`
    # async slots and max(sync_threads, concurrency, sync_prefetch) sync slots
    # (sync_threads is 1 here).
    capacity = concurrency + max(1, concurrency, SYNC_PREFETCH_DEFAULT)
    config = write_config(tmp_path / "skivi.toml", max_result_buffer=buffer, batch_size=batch,
                          poll_interval=0.1)
    engine = engines.start("--config", config, processes=1, concurrency=concurrency)
    engine_id(database, engine.pid)
    # Completion and failure statements write job_history, claims do not: with the history
    # table locked, every result waits in the engine while claims could go on.
    with connect(database, autocommit=False) as blocker:
        blocker.execute("lock table skivi.job_history in access exclusive mode")
        ids = enqueue(database, [{"task": "noop"} for _ in range(300)])
        wait_for(lambda: len(engines.ledger.starts()) >= buffer, timeout=20,
                 what="the result buffer to fill")

        def claimed() -> int:
            return int(fetch(database, "select count(*) from skivi.job_live "
                                       "where locked_by is not null")[0][0])

        most = 0
        # Watch for 20 poll intervals, long enough for claims to have gone on many times.
        until = time.monotonic() + 2.0

        def bounded_until_the_end() -> bool:
            nonlocal most
            most = max(most, claimed())
            assert most <= capacity + batch + buffer, \
                f"{most} jobs claimed while {buffer} results could not be written"
            return time.monotonic() >= until

        wait_for(bounded_until_the_end, timeout=10, what="the observation window to end")
        report(capsys, f"claimed while completions were blocked: at most {most} "
                       f"(capacity {capacity} + batch {batch} + buffer {buffer})")
        blocker.rollback()
    wait_for(lambda: live_jobs(database) == 0, timeout=30, what="every result to land")
    runs = engines.ledger.runs_per_job()
    assert set(runs) == set(ids) and max(runs.values()) == 1
    assert engine.poll() is None, log_of(engine)


# -- LISTEN / NOTIFY ------------------------------------------------------------------------------


def listener(url: str) -> int | None:
    # The claim connection LISTENs between claims (no listen_url here).
    rows = fetch(url, "select pid from pg_stat_activity where application_name = 'skivi-claim'")
    return int(rows[0][0]) if rows else None


def start_latency(engines: EngineProcs, start: Callable[[], int]) -> float:
    """Seconds from calling ``start`` (which enqueues one job) to the job starting."""
    at = time.time()
    job = start()
    found = wait_for(lambda: [r for r in engines.ledger.starts() if r[0] == job], timeout=30,
                     what=f"job {job} to start")
    return found[0][4] - at


def test_wakeups_resume_when_the_listen_connection_is_killed(
        engines: EngineProcs, database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    poll = 5.0
    engines.start("--config", write_config(tmp_path / "skivi.toml", poll_interval=poll),
                  processes=1, concurrency=2)
    old = wait_for(lambda: listener(database), what="the engine to LISTEN")
    fetch(database, "select pg_terminate_backend(%s)", old)
    wait_for(lambda: listener(database) not in (None, old), timeout=10,
             what="a new LISTEN connection")
    latencies = [start_latency(engines, lambda: enqueue(database, [{"task": "noop"}])[0])
                 for _ in range(3)]
    report(capsys, f"enqueue-to-start after LISTEN came back: "
                   f"{[round(x, 3) for x in latencies]} s (poll interval {poll} s)")
    assert max(latencies) < 1.0, latencies


def test_jobs_are_found_by_polling_within_the_poll_interval_when_notify_is_lost(
        engines: EngineProcs, database: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    poll = 1.0
    engines.start("--config", write_config(tmp_path / "skivi.toml", poll_interval=poll),
                  processes=1, concurrency=2)
    wait_for(lambda: listener(database), what="the engine to LISTEN")

    def insert_without_notify() -> int:
        return int(fetch(database, "insert into skivi.job (task_identifier) values ('noop') "
                                   "returning id")[0][0])

    latencies = [start_latency(engines, insert_without_notify) for _ in range(3)]
    report(capsys, f"enqueue-to-start without NOTIFY: {[round(x, 3) for x in latencies]} s "
                   f"(poll interval {poll} s)")
    assert max(latencies) < poll + 0.5, latencies


# -- a long transaction elsewhere -----------------------------------------------------------------


def drain_rate(engines: EngineProcs, database: str, n: int) -> float:
    """Jobs per second for an engine run with --once to drain ``n`` jobs, first start to last."""
    before = len(engines.ledger.starts())
    enqueue(database, [{"task": "noop"} for _ in range(n)])
    engine = engines.start("--once", processes=2, concurrency=16)
    assert engine.wait(timeout=120) == 0, log_of(engine)
    starts = sorted(r[4] for r in engines.ledger.starts()[before:])
    assert len(starts) == n and live_jobs(database) == 0
    return n / max(starts[-1] - starts[0], 1e-3)


def test_processing_slows_but_goes_on_when_a_long_transaction_holds_back_vacuum(
        engines: EngineProcs, database: str, capsys: pytest.CaptureFixture[str]) -> None:
    n = 8000
    baseline = drain_rate(engines, database, n)
    with connect(database, autocommit=False) as holder:
        holder.execute("set transaction isolation level repeatable read")
        holder.execute("select count(*) from skivi.job_live")  # takes the snapshot, holds xmin
        held = [drain_rate(engines, database, n) for _ in range(2)]
        horizon = fetch(database, "select count(*) from pg_stat_activity where backend_xmin "
                                  "is not null and application_name = 'skivi-test' "
                                  "and state like 'idle in transaction%%'")[0][0]
        holder.rollback()
    report(capsys, f"drain of {n} jobs: {baseline:.0f} jobs/s; with a REPEATABLE READ "
                   f"transaction held open: {held[0]:.0f} then {held[1]:.0f} jobs/s "
                   f"(throughput {100 * (held[1] / baseline - 1):+.0f}%)")
    assert horizon >= 1, "the long transaction did not hold a snapshot"
    assert min(held) > 0


# -- identifiers past 2^31 ------------------------------------------------------------------------


def test_jobs_run_complete_and_are_rescued_when_ids_are_past_2_pow_31(
        engines: EngineProcs, database: str) -> None:
    start = 3_000_000_000
    with connect(database) as c:
        c.execute(f"alter sequence skivi.job_id_seq restart with {start}")
        c.execute(f"alter table skivi.engine alter column id restart with {start}")
    quick = enqueue(database, [{"task": "noop"} for _ in range(20)])
    slow = enqueue(database, [{"task": "sleep", "payload": {"s": 0.5}} for _ in range(8)])
    assert min(quick) >= start
    victim = engines.start(processes=1, concurrency=2)
    victim_id = engine_id(database, victim.pid)
    assert victim_id >= start
    victim_pids = {victim.pid, *children_of(victim.pid)}
    wait_for(lambda: set(quick) <= set(engines.ledger.runs_per_job()) and
             any(r[0] in slow and r[1] in victim_pids for r in engines.ledger.starts()),
             what="the quick jobs done and a slow one running")
    victim.kill()
    victim.wait()
    survivor = engines.start(processes=1, concurrency=2)
    survivor_id = engine_id(database, survivor.pid)
    wait_for(lambda: live_jobs(database) == 0, timeout=30, what="every job to finish")
    assert f"rescued the jobs of dead engines [{victim_id}]" in log_of(survivor)
    assert set(engines.ledger.runs_per_job()) == set(quick) | set(slow)
    with connect(database) as c:
        workers = queries.engine_list.run(c, for_schema(SCHEMA))
    assert [(w.id, w.alive) for w in workers] == [(survivor_id, True)], workers
    assert survivor.poll() is None, log_of(survivor)


# -- the database going away while an engine starts ------------------------------------------


def registering(url: str) -> list[int]:
    """Backends of engines waiting to register (blocked on the engine table's lock)."""
    return [r[0] for r in fetch(
        url, "select pid from pg_stat_activity where application_name = 'skivi-engine' "
             "and wait_event_type = 'Lock'")]


def test_an_engine_whose_registration_fails_retries_and_then_runs_jobs(
        engines: EngineProcs, database: str) -> None:
    with connect(database, autocommit=False) as holder:
        holder.execute("lock table skivi.engine in access exclusive mode")
        engine = engines.start(processes=1, concurrency=2)
        first = wait_for(lambda: registering(database), timeout=30,
                         what="the engine to wait for the engine table")[0]
        # Its statement fails (as at a server restart): it must not die, but try again.
        fetch(database, "select pg_terminate_backend(%s)", first)
        wait_for(lambda: [p for p in registering(database) if p != first], timeout=30,
                 what="the engine to try registering again")
        assert engine.poll() is None, log_of(engine)
        holder.rollback()
    runs_a_job_then_stops(engines, database, engine)
    assert "cannot register the engine" in log_of(engine)


def test_sigterm_stops_an_engine_still_waiting_to_register_with_exit_0(
        engines: EngineProcs, database: str) -> None:
    with connect(database, autocommit=False) as holder:
        holder.execute("lock table skivi.engine in access exclusive mode")
        engine = engines.start(processes=1, concurrency=2)
        wait_for(lambda: registering(database), timeout=30,
                 what="the engine to wait for the engine table")
        engine.send_signal(signal.SIGTERM)
        # While the table is still locked: the stop must not wait for the registration.
        assert engine.wait(timeout=15) == 0, log_of(engine)
        holder.rollback()
    assert "stopped before the engine could register" in log_of(engine)
    assert fetch(database, "select count(*) from skivi.engine")[0][0] == 0


def test_an_engine_started_while_the_database_is_down_waits_for_it_and_runs(
        private_server: PrivateServer, private_engines: EngineProcs) -> None:
    url = private_server.url
    procs = private_engines
    private_server.stop()
    engine = procs.start(processes=1, concurrency=2)
    wait_for(lambda: "cannot reach the database" in log_of(engine), timeout=30,
             what="the engine to report the database unreachable")
    assert engine.poll() is None, log_of(engine)
    private_server.start()
    runs_a_job_then_stops(procs, url, engine)


# -- one job claimed twice by the same engine ---------------------------------------------------


def test_a_job_rescued_while_it_runs_and_claimed_again_by_the_same_engine_frees_both_slots(
        engines: EngineProcs, database: str) -> None:
    """An engine can hold two claims of one job: it ran the job, lost it (declared dead, the
    job rescued) and claimed it again while the first run went on. Each run must give back
    its own slot: were the slots keyed by job id, the first run's result would free the
    second run's slot and the first slot would be lost for good."""
    engine = engines.start(processes=1, concurrency=2)
    job = enqueue(database, [{"task": "async_sleep", "payload": {"s": 1.5}}])[0]
    wait_for(lambda: [r for r in engines.ledger.starts() if r[0] == job], timeout=30,
             what=f"job {job} to start")
    # What a rescuer does to the jobs of an engine it found dead.
    fetch(database, "with m as (delete from skivi.job_running where id = %s returning *) "
                    "insert into skivi.job select id, task_identifier, queue_name, payload, "
                    "priority, run_at, attempts, max_attempts, last_error, key, flags, null, "
                    "null, lease, created_at, updated_at, created_by from m returning id", job)
    wait_for(lambda: len([r for r in engines.ledger.starts() if r[0] == job]) == 2,
             timeout=30, what=f"job {job} to be claimed and started again")
    wait_for(lambda: live_jobs(database) == 0, timeout=30, what="the job to complete")
    pair = enqueue(database, [{"task": "async_sleep", "payload": {"s": 1.0}}
                              for _ in range(2)])
    wait_for(lambda: len([r for r in engines.ledger.starts() if r[0] in pair]) == 2,
             timeout=30, what="both jobs to start")
    starts = sorted(r[4] for r in engines.ledger.starts() if r[0] in pair)
    assert starts[1] - starts[0] < 0.5, \
        f"the two jobs ran one after the other ({starts}): a slot was lost"
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)
