"""The engine observer's log of exhaustions, fed result rows as the completer hands them over
(no database, no processes: the rows and the database's answers are data here)."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import pytest

from skivi.engine import wire
from skivi.engine.observer import (
    NO_HANDLER_LOG_INTERVAL,
    NO_HANDLER_TASKS_MAX,
    EngineObserver,
    NoHandlerLog,
)
from skivi.events import CollectingEmitter, Emitter, EventKind

NAMED = re.compile(r"(\d+) job\(s\) of task '([^']+)' exhausted")
OTHERS = re.compile(r"(\d+) job\(s\) of (over )?(\d+) other tasks without a handler exhausted "
                    r"\(e\.g\. ([^)]*)\)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def no_handler_row(job: int, task: str) -> list[Any]:
    """A failed result row (skivi.engine.wire) of a job whose task has no handler."""
    return wire.failed_row(job_id=job, lease=1, task=task, queue_name=None, run_seconds=0.0,
                              error="no handler", delay=0.0, final="no_handler",
                              wait_seconds=0.0, slot=0, attempt=1)


def flush_unhandled(observer: EngineObserver, jobs: list[tuple[int, str]]) -> None:
    rows = [no_handler_row(job, task) for job, task in jobs]
    observer.flushed([], rows, set(), {(job, 1): "exhausted" for job, _ in jobs},
                     {(job, 1): (1, 25, None, "no_handler") for job, _ in jobs})


def found(pattern: re.Pattern[str], messages: list[str]) -> list[tuple[str | Any, ...]]:
    """The groups of ``pattern`` in each message (each must match)."""
    out = []
    for message in messages:
        match = pattern.search(message)
        assert match is not None, message
        out.append(match.groups())
    return out


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records
           if getattr(r, "action", None) == "job_no_handler"]
    caplog.clear()
    return out


def test_exhaustion_reason_is_the_one_the_database_recorded_when_it_differs_from_the_rows(
        caplog: pytest.LogCaptureFixture) -> None:
    emitter = CollectingEmitter()
    observer = EngineObserver(emitter)
    # The child sent no final reason: the job ran out of attempts because it lost its key
    # while it ran, which only job_fail_many.sql sees.
    row = wire.failed_row(job_id=7, lease=3, task="report", queue_name=None,
                             run_seconds=0.5, error="told to fail", delay=1.0,
                             wait_seconds=0.0, slot=0, attempt=4)
    with caplog.at_level(logging.ERROR):
        observer.flushed([], [row], set(), {(7, 3): "exhausted"},
                         {(7, 3): (5, 5, None, "superseded")})
    [event] = emitter.of(EventKind.JOB_EXHAUSTED)
    assert event["reason"] == "superseded"
    assert "job 7 (report) exhausted after attempt 5 of 5 (superseded): told to fail" in \
        caplog.text


def test_no_handler_lines_are_one_per_task_per_interval_when_a_task_keeps_failing(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    observer = EngineObserver(CollectingEmitter(), no_handler=NoHandlerLog(clock=clock))
    caplog.set_level(logging.ERROR)
    flush_unhandled(observer, [(1, "gone"), (2, "gone")])
    assert found(NAMED, lines(caplog)) == [("2", "gone")]
    clock.now += NO_HANDLER_LOG_INTERVAL / 2
    flush_unhandled(observer, [(3, "gone")])
    assert lines(caplog) == []
    clock.now += NO_HANDLER_LOG_INTERVAL / 2
    # A flush without any no-handler row still logs what waited for its interval.
    observer.flushed([], [], set(), {})
    assert found(NAMED, lines(caplog)) == [("1", "gone")]
    flush_unhandled(observer, [(4, "gone")])
    assert lines(caplog) == []
    observer.report_no_handler(force=True)
    assert found(NAMED, lines(caplog)) == [("1", "gone")]


def test_no_handler_log_stays_bounded_when_thousands_of_task_names_have_no_handler(
        caplog: pytest.LogCaptureFixture) -> None:
    observer = EngineObserver(CollectingEmitter())
    caplog.set_level(logging.ERROR)
    n = 5000
    for i in range(n):
        flush_unhandled(observer, [(i, f"unknown-{i}")])
    observer.report_no_handler(force=True)
    logged = lines(caplog)
    named = [NAMED.search(m) for m in logged]
    others = [o for m in logged if (o := OTHERS.search(m))]
    assert len(logged) <= NO_HANDLER_TASKS_MAX + 2, len(logged)
    assert len([m for m in named if m]) == NO_HANDLER_TASKS_MAX
    assert len(others) == 2  # the first one at once, the rest at shutdown
    assert sum(int(m.group(1)) for m in named if m) + \
        sum(int(m.group(1)) for m in others) == n
    assert others[0].group(4) == "'unknown-100'"
    assert others[1].group(2) == "over " and others[1].group(4).startswith(
        "'unknown-101', 'unknown-102', 'unknown-103'")
    assert observer.no_handler.tracked <= NO_HANDLER_TASKS_MAX
    # Past the interval, tasks with nothing new are forgotten.
    clock = Clock()
    clock.now = time.monotonic() + NO_HANDLER_LOG_INTERVAL
    observer.no_handler.clock = clock
    observer.report_no_handler()
    assert observer.no_handler.tracked == 0
    assert not observer.no_handler


def test_no_handler_others_are_counted_and_named_when_past_the_tracked_tasks(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = NoHandlerLog(max_tasks=2, max_other_names=3, clock=clock)
    caplog.set_level(logging.ERROR)
    for task in ["a", "b", "c", "d", "c", "e", "f"]:
        log.add(task)
    assert log.tracked == 2 + 3
    log.report()
    logged = lines(caplog)
    assert found(NAMED, logged[:2]) == [
        ("1", "b"), ("1", "a")]
    [(count, over, names, examples)] = found(OTHERS, logged[2:])
    assert (count, over, names, examples) == ("5", "over ", "3", "'c', 'd', 'e'")
    assert log.tracked == 2
    # Within the interval nothing more is logged, by name or together.
    log.add("a")
    log.add("z")
    clock.now += NO_HANDLER_LOG_INTERVAL - 1
    log.report()
    assert lines(caplog) == []
    clock.now += 1
    log.report()
    logged = lines(caplog)
    assert found(NAMED, logged[:1]) == [("1", "a")]
    assert found(OTHERS, logged[1:]) == [("1", None, "1", "'z'")]
    # "b" had nothing new for an interval: forgotten, its place free for a new name.
    assert log.tracked == 1
    log.add("y")
    log.report()
    assert found(NAMED, lines(caplog)) == [("1", "y")]


def _completed_rows(n: int) -> list[list[Any]]:
    return [wire.completed_row(job_id=i, lease=1, task="t", queue_name=None, run_seconds=0.0,
                               wait_seconds=0.0, slot=0) for i in range(1, n + 1)]


def test_a_flush_larger_than_the_ring_buffer_leaves_its_last_events_there() -> None:
    """Only the events the buffer keeps are built when nobody subscribes: what it holds
    is exactly what emitting all of them would have left."""
    emitter = Emitter(buffer_size=100)
    rows = _completed_rows(250)
    EngineObserver(emitter, None).flushed(rows, [], {(i, 1) for i in range(1, 251)}, {})
    recent = emitter.recent()
    assert [e["data"]["job_id"] for e in recent] == list(range(151, 251))
    assert {e["type"] for e in recent} == {EventKind.JOB_COMPLETED}


def test_a_subscriber_gets_every_event_of_a_flush_larger_than_the_ring_buffer() -> None:
    emitter = Emitter(buffer_size=100)
    seen: list[int] = []
    emitter.on(EventKind.JOB_COMPLETED, lambda e: seen.append(e["data"]["job_id"]))
    EngineObserver(emitter, None).flushed(_completed_rows(250), [],
                                          {(i, 1) for i in range(1, 251)}, {})
    assert seen == list(range(1, 251))
    assert len(emitter.recent()) == 100


def test_kept_counts_what_an_emit_would_reach() -> None:
    assert Emitter(buffer_size=10).kept(EventKind.JOB_COMPLETED, 50) == 10
    assert Emitter(buffer_size=0).kept(EventKind.JOB_COMPLETED, 50) == 0
    batch = Emitter(buffer_size=10)
    batch.on_batch(lambda events: None)
    assert batch.kept(EventKind.JOB_COMPLETED, 50) == 50
    other = Emitter(buffer_size=10)
    other.on(EventKind.JOB_FAILED, lambda e: None)
    assert other.kept(EventKind.JOB_COMPLETED, 50) == 10
    assert other.kept(EventKind.JOB_FAILED, 50) == 50
