"""Pauses with real engines: a paused queue or task is skipped by every engine's claims
within one poll interval (LISTEN off: the poll path), running jobs finish, and resuming
lets the rest run; serial queues and tasks pause alike."""

from __future__ import annotations

import time
from pathlib import Path

import skivi
from tests.support.engines import EngineProcs, enqueue, log_of
from tests.support.rows import fetch
from tests.support.wait import wait_for

POLL = 0.5


def write_config(path: Path, *, listen: bool) -> str:
    path.write_text(f"[database]\nlisten = {str(listen).lower()}\n"
                    f"[worker]\npoll_interval = {POLL}\nbatch_size = 4\n")
    return str(path)


def unclaimed(database: str) -> int:
    """Jobs never claimed (a claim counts an attempt)."""
    return int(fetch(database, "select count(*) from skivi.job_live where attempts = 0")[0][0])


def test_pause_is_honoured_by_three_engines_within_a_poll_interval_when_not_listening(
        engines: EngineProcs, database: str, tmp_path: Path, system: skivi.System) -> None:
    config = write_config(tmp_path / "skivi.toml", listen=False)
    ids = enqueue(database, [{"task": "async_sleep", "payload": {"s": 0.2}}
                             for _ in range(300)])
    procs = [engines.start("--config", config, processes=1, concurrency=4) for _ in range(3)]
    wait_for(lambda: len(engines.ledger.starts()) >= 24, timeout=30,
             what="jobs to run on the engines: " + log_of(procs[0])[-2000:])
    assert skivi.pause_queue(system, skivi.PARALLEL_QUEUE) is True
    assert skivi.pause_queue(system, skivi.PARALLEL_QUEUE) is False  # already paused
    paused_at = time.monotonic()
    # Within one poll interval every engine has read the pause (plus a claim's time).
    time.sleep(POLL + 0.3)
    left = unclaimed(database)
    assert left > 0
    # An absence is only seen by waiting: four more poll intervals, and no claim.
    time.sleep(4 * POLL)
    assert unclaimed(database) == left
    # The jobs claimed before the pause ran to their end; nothing else started.
    wait_for(lambda: not fetch(database, "select 1 from skivi.job_live where locked_by is "
                                         "not null"),
             timeout=30, what="the claimed jobs to finish")
    rows = engines.ledger.rows()
    started = {r[0] for r in rows if r[3] == "start"}
    assert started == {r[0] for r in rows if r[3] == "end"}
    assert len(started) == len(ids) - left
    assert time.monotonic() - paused_at >= 4 * POLL
    assert [p.name for p in skivi.paused(system)] == ["@parallel"]
    assert skivi.resume_queue(system, skivi.PARALLEL_QUEUE) is True
    wait_for(lambda: len(engines.ledger.starts()) == len(ids), timeout=60,
             what="every job to run after the resume")
    assert all(p.poll() is None for p in procs)


def test_paused_task_and_serial_queue_wait_while_others_run(
        engines: EngineProcs, database: str, tmp_path: Path, system: skivi.System) -> None:
    config = write_config(tmp_path / "skivi.toml", listen=True)
    assert skivi.pause_task(system, "noop") is True
    assert skivi.pause_queue(system, "mail") is True
    held = enqueue(database, [{"task": "noop"} for _ in range(5)]
                   + [{"task": "async_sleep", "queue_name": "mail", "payload": {"s": 0}}
                      for _ in range(5)]
                   # A noop job heads serial queue "reports": the queue waits behind it.
                   + [{"task": "noop", "queue_name": "reports"},
                      {"task": "async_sleep", "queue_name": "reports", "payload": {"s": 0}}])
    free = enqueue(database, [{"task": "async_sleep", "payload": {"s": 0}} for _ in range(20)]
                   + [{"task": "async_sleep", "queue_name": "other", "payload": {"s": 0}}])
    engines.start("--config", config, processes=1, concurrency=4)
    engines.start("--config", config, processes=1, concurrency=4)
    wait_for(lambda: set(free) <= engines.ledger.runs_per_job().keys(), timeout=30,
             what="the jobs of running queues and tasks to run")
    time.sleep(3 * POLL)  # an absence is only seen by waiting
    assert not set(held) & engines.ledger.runs_per_job().keys()
    assert skivi.resume_task(system, "noop") is True
    wait_for(lambda: {held[i] for i in (0, 1, 2, 3, 4, 10, 11)}
             <= engines.ledger.runs_per_job().keys(), timeout=30,
             what="the noop jobs and the reports queue to run once the task is resumed")
    assert not set(held[5:10]) & engines.ledger.runs_per_job().keys()
    assert skivi.resume_queue(system, "mail") is True
    wait_for(lambda: set(held) <= engines.ledger.runs_per_job().keys(), timeout=30,
             what="the mail queue to run once resumed")
    assert skivi.paused(system) == []
