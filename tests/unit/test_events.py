"""The emitter (subscribe, unsubscribe, "all", failing handlers, ring buffer, batches), the
pipe that carries events from the engine process to the application, and the events the
engine's observer emits for a completion flush."""

from __future__ import annotations

import logging
import os
from typing import Any

import orjson
import pytest

from skivi import monitoring
from skivi.engine import wire
from skivi.engine.observer import EngineObserver
from skivi.events import (
    ALL,
    CollectingEmitter,
    Emitter,
    Event,
    EventForwarder,
    EventKind,
    EventReceiver,
)
from tests.support.wait import wait_for

COMPLETED = EventKind.JOB_COMPLETED
FAILED = EventKind.JOB_FAILED


def test_handler_gets_only_its_kind_when_subscribed_to_one_kind() -> None:
    emitter = Emitter()
    seen: list[Event] = []
    emitter.on("job/completed", seen.append)
    emitter.emit(COMPLETED, {"job_id": 1})
    emitter.emit(FAILED, {"job_id": 2})
    assert [(e["type"], e["data"]) for e in seen] == [("job/completed", {"job_id": 1})]
    assert isinstance(seen[0]["ts"], float)


def test_all_handler_gets_every_kind_when_subscribed_to_all() -> None:
    emitter = Emitter()
    seen: list[str] = []
    monitoring.on(emitter, ALL, lambda ev: seen.append(ev["type"]))
    for kind in EventKind:
        emitter.emit(kind, {})
    assert seen == [k.value for k in EventKind]


def test_unsubscribe_stops_delivery_when_called_and_is_idempotent() -> None:
    emitter = Emitter()
    seen: list[Event] = []
    unsubscribe = emitter.on("job/failed", seen.append)
    unsubscribe_all = emitter.on(ALL, seen.append)
    emitter.emit(FAILED, {})
    unsubscribe()
    unsubscribe()
    unsubscribe_all()
    emitter.emit(FAILED, {})
    assert len(seen) == 2
    assert emitter.subscribers() == 0


def test_same_handler_twice_is_called_twice_and_unsubscribed_once_when_registered_twice(
) -> None:
    emitter = Emitter()
    seen: list[Event] = []
    first = emitter.on("job/failed", seen.append)
    emitter.on("job/failed", seen.append)
    emitter.emit(FAILED, {})
    first()
    emitter.emit(FAILED, {})
    assert len(seen) == 3


def test_unknown_kind_is_refused_when_subscribing() -> None:
    with pytest.raises(ValueError, match="job/complete'"):
        Emitter().on("job/complete", print)


def test_raising_handler_is_counted_and_logged_and_others_still_run_when_it_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    emitter = Emitter()
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    emitter.on("job/completed", broken)
    emitter.on(ALL, seen.append)
    emitter.on_batch(lambda events: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="skivi.events"):
        emitter.emit(COMPLETED, {"job_id": 1})
        emitter.emit_many(COMPLETED, [{"job_id": 2}, {"job_id": 3}])
    assert [e["data"]["job_id"] for e in seen] == [1, 2, 3]
    assert emitter.handler_errors == 5  # 3 events x broken + 2 batches
    # Logged, but at most once a second: a failing handler cannot flood the log.
    failures = [r for r in caplog.records if getattr(r, "action", "") == "event_handler_failed"]
    assert len(failures) == 1
    assert "handler bug" in caplog.text


def test_ring_buffer_keeps_the_last_events_in_order_when_more_are_emitted() -> None:
    emitter = Emitter(buffer_size=3)
    for i in range(5):
        emitter.emit(COMPLETED, {"job_id": i})
    emitter.emit_many(FAILED, [{"job_id": 5}])
    assert [e["data"]["job_id"] for e in emitter.recent()] == [3, 4, 5]
    assert [e["type"] for e in emitter.recent()] == ["job/completed", "job/completed",
                                                     "job/failed"]


def test_ring_buffer_keeps_nothing_when_its_size_is_zero() -> None:
    emitter = Emitter(buffer_size=0)
    emitter.emit(COMPLETED, {})
    assert emitter.recent() == []


def test_emit_many_gives_one_event_per_item_with_one_timestamp_when_batched() -> None:
    emitter = Emitter()
    seen: list[Event] = []
    batches: list[int] = []
    emitter.on("job/completed", seen.append)
    emitter.on_batch(lambda events: batches.append(len(events)))
    emitter.emit_many(COMPLETED, [{"job_id": i} for i in range(4)])
    emitter.emit_many(COMPLETED, [])
    assert [e["data"]["job_id"] for e in seen] == [0, 1, 2, 3]
    assert len({e["ts"] for e in seen}) == 1
    assert batches == [4]


def test_collecting_emitter_keeps_every_event_when_more_than_its_buffer() -> None:
    emitter = monitoring.collecting_emitter(buffer_size=2)
    emitter.emit(EventKind.POOL_START, {"engine_id": 1})
    emitter.emit_many(COMPLETED, [{"job_id": 1}, {"job_id": 2}])
    assert emitter.types() == ["pool/start", "job/completed", "job/completed"]
    assert emitter.of("job/completed") == [{"job_id": 1}, {"job_id": 2}]
    assert len(emitter.recent()) == 2
    assert monitoring.recent(emitter) == emitter.events[1:]


def test_replay_keeps_type_and_timestamp_when_events_come_from_elsewhere() -> None:
    emitter = CollectingEmitter()
    failed: list[Event] = []
    emitter.on("job/failed", failed.append)
    events: list[Event] = [
        {"type": "job/completed", "data": {"job_id": 1}, "ts": 1.5},
        {"type": "job/failed", "data": {"job_id": 2}, "ts": 2.5},
        {"type": "job/someday", "data": {}, "ts": 3.5},
    ]
    emitter.replay(events)
    assert emitter.events == events
    assert failed == [events[1]]


# -- forwarding between processes ------------------------------------------------------

def test_events_cross_the_pipe_in_order_when_forwarded() -> None:
    read_fd, write_fd = os.pipe()
    app = CollectingEmitter()
    receiver = EventReceiver(read_fd, app)
    receiver.start()
    engine = Emitter()
    forwarder = EventForwarder(write_fd)
    engine.on_batch(forwarder)
    engine.emit(EventKind.POOL_START, {"engine_id": 7})
    engine.emit_many(COMPLETED, [{"job_id": i, "error": "x" * 1000} for i in range(300)])
    forwarder.close()
    assert receiver.join(10)
    assert app.types() == ["pool/start"] + ["job/completed"] * 300
    assert [d["job_id"] for d in app.of("job/completed")] == list(range(300))
    assert forwarder.dropped == 0


def test_forwarded_events_reach_the_parent_when_emitted_in_a_forked_process() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits here
        code = 1
        try:
            os.close(read_fd)
            engine = Emitter()
            forwarder = EventForwarder(write_fd)
            engine.on_batch(forwarder)
            engine.emit(EventKind.POOL_STOP, {"engine_id": 3, "pid": os.getpid()})
            forwarder.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    app = CollectingEmitter()
    receiver = EventReceiver(read_fd, app)
    receiver.start()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert receiver.join(10)
    assert app.of("pool/stop") == [{"engine_id": 3, "pid": pid}]


def test_forwarder_drops_whole_batches_and_never_blocks_when_nobody_reads() -> None:
    read_fd, write_fd = os.pipe()
    forwarder = EventForwarder(write_fd, max_pending=10_000)
    emitter = Emitter(buffer_size=0)
    emitter.on_batch(forwarder)
    batch = [{"job_id": i, "error": "y" * 500} for i in range(100)]
    for _ in range(200):  # ~10 MB: far more than the pipe holds
        emitter.emit_many(FAILED, batch)
    assert forwarder.dropped > 0
    assert forwarder.dropped % len(batch) == 0
    # What was kept is whole frames: a reader that starts late decodes every one of them.
    app = CollectingEmitter(buffer_size=0)
    receiver = EventReceiver(read_fd, app)
    receiver.start()
    forwarder.close(timeout=10)
    assert receiver.join(10)
    assert len(app.events) == 200 * len(batch) - forwarder.dropped
    assert len(app.events) > 0


def test_forwarder_stops_quietly_when_the_reader_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    forwarder = EventForwarder(write_fd)
    emitter = Emitter()
    emitter.on_batch(forwarder)
    emitter.emit(COMPLETED, {"job_id": 1})
    emitter.emit(COMPLETED, {"job_id": 2})
    assert forwarder.closed
    assert emitter.handler_errors == 0
    forwarder.close()


def test_unencodable_values_are_sent_as_text_when_forwarded() -> None:
    read_fd, write_fd = os.pipe()
    app = CollectingEmitter()
    receiver = EventReceiver(read_fd, app)
    receiver.start()
    forwarder = EventForwarder(write_fd)
    forwarder([{"type": "cron/fired", "data": {"identifier": "x", "odd": {1, 2}.__class__},
                "ts": 1.0}])
    forwarder.close()
    assert receiver.join(10)
    assert app.of("cron/fired") == [{"identifier": "x", "odd": "<class 'set'>"}]


# -- the observer's job events -------------------------------------------------------

def _row(job_id: int, code: int, task: str = "t", queue: str | None = None,
         payload: str | None = None, final: str | None = None,
         wait: float | None = 0.25) -> list[Any]:
    if code == wire.RESULT_COMPLETED:
        return wire.completed_row(job_id=job_id, lease=1, task=task, queue_name=queue,
                                     run_seconds=0.5, wait_seconds=wait, slot=0)
    return wire.failed_row(job_id=job_id, lease=1, task=task, queue_name=queue,
                              run_seconds=0.5, error=f"boom {job_id}", delay=2.0, final=final,
                              payload=payload, wait_seconds=wait, slot=0, attempt=1)


def test_flush_emits_one_event_per_accepted_result_when_the_observer_sees_it() -> None:
    emitter = CollectingEmitter()
    observer = EngineObserver(emitter)
    completed = [_row(1, wire.RESULT_COMPLETED, queue="mail"),
                 _row(2, wire.RESULT_COMPLETED, wait=None),
                 _row(3, wire.RESULT_COMPLETED)]  # refused: rescued meanwhile
    failed = [_row(4, wire.RESULT_FAILED),
              _row(5, wire.RESULT_FAILED, payload="[1]"),
              _row(6, wire.RESULT_FAILED, payload="[2]"),
              _row(7, wire.RESULT_FAILED, final="no_handler"),
              _row(8, wire.RESULT_FAILED)]  # refused
    observer.flushed(completed, failed, {(1, 1), (2, 1)},
                     {(4, 1): "failed", (5, 1): "failed", (6, 1): "exhausted",
                      (7, 1): "exhausted"})
    assert emitter.types() == ["job/completed"] * 2 + ["job/failed", "job/partial-success"] \
        + ["job/exhausted"] * 2
    assert emitter.of("job/completed") == [
        {"job_id": 1, "task": "t", "queue_name": "mail", "run_seconds": 0.5,
         "wait_seconds": 0.25},
        {"job_id": 2, "task": "t", "queue_name": None, "run_seconds": 0.5,
         "wait_seconds": None}]
    assert emitter.of("job/failed") == [
        {"job_id": 4, "task": "t", "queue_name": None, "run_seconds": 0.5,
         "wait_seconds": 0.25, "error": "boom 4", "retry_delay": 2.0}]
    assert emitter.of("job/partial-success")[0]["job_id"] == 5
    assert [(d["job_id"], d["reason"]) for d in emitter.of("job/exhausted")] == [
        (6, "max_attempts"), (7, "no_handler")]


def test_observer_events_are_catalogued_when_every_method_is_called() -> None:
    emitter = CollectingEmitter()
    observer = EngineObserver(emitter)
    observer.pool_start(1, 2, 4, 8)
    observer.child_replaced(0, 123, "killed by SIGKILL", 3)
    observer.rescued([5], 2, 1)
    observer.connection_lost("skivi-claim", OSError("gone"))
    observer.connection_lost("skivi-claim", OSError("still gone"))  # no second event
    observer.connection_regained("skivi-claim")
    observer.connection_regained("skivi-claim")  # was not lost: no event
    observer.cron_fired({"type": "cron/fired", "data": {
        "identifier": "daily", "task": "report", "ts": "2026-01-01T02:00:00Z",
        "backfilled": False, "skipped": False, "reason": "fired", "job_id": 9}})
    observer.claimed(3)
    observer.dispatched(3)
    observer.set_gauges(1, 8, 2)
    observer.pool_stop(1, {"completed": 3})
    assert emitter.types() == ["pool/start", "child/replaced", "job/rescued",
                               "db/connection-lost", "db/connection-regained", "cron/fired",
                               "pool/stop"]
    assert emitter.of("db/connection-lost") == [{"connection": "skivi-claim",
                                                 "error": "gone"}]
    assert emitter.of("pool/stop")[0]["completed"] == 3
    assert emitter.of("cron/fired")[0]["reason"] == "fired"
    # Every event survives a trip through JSON (the forwarding pipe).
    assert orjson.loads(orjson.dumps(emitter.events)) == emitter.events


def test_events_of_other_threads_are_delivered_when_replayed_by_the_receiver() -> None:
    read_fd, write_fd = os.pipe()
    app = Emitter()
    seen: list[int] = []
    app.on("job/completed", lambda ev: seen.append(ev["data"]["job_id"]))
    receiver = EventReceiver(read_fd, app)
    receiver.start()
    forwarder = EventForwarder(write_fd)
    forwarder([{"type": "job/completed", "data": {"job_id": 1}, "ts": 1.0}])
    wait_for(lambda: seen == [1], what="the event to be replayed")
    forwarder.close()
    assert receiver.join(10)
