"""Events: what happened in the engine, as plain dicts, delivered to handlers that ask.

Subscribe with ``skivi.monitoring.on(system.emitter, kind, handler)`` (or
``emitter.on(kind, handler)``); ``kind`` is one of the types below or ``"all"``. Both return
a callable that unsubscribes. An event is a dict::

    {"type": "job/completed", "data": {"job_id": 42, ...}, "ts": 1767225600.123}

``ts`` is the wall-clock time (``time.time()``) at which the event was emitted, in the
process that emitted it. ``data`` fields are snake_case; durations are float seconds.

Catalogue (every event type, its moment and its data fields)
------------------------------------------------------------

==========================  ==========================================================
type                        when, and its data fields
==========================  ==========================================================
``child/replaced``          a child process died while the engine ran; its jobs were
                            failed as crashes and a new child was forked in its place.
                            ``index`` (child slot), ``pid`` (the dead child),
                            ``status`` (e.g. "killed by SIGKILL"), ``jobs_failed``
``cron/fired``              the cron process sent one tick of an entry to the database
                            (``skivi.engine.scheduler``). ``identifier``, ``task``, ``ts``
                            (the tick, ISO 8601 UTC), ``backfilled`` (a missed tick fired
                            late, within the entry's backfill window), ``skipped``,
                            ``reason`` ("fired": a job was enqueued; "already_fired": another
                            engine's scheduler had fired it; "previous_run_active": the
                            previous run's job still holds the entry's job key), ``job_id``
                            (the job enqueued, or the previous run's; None if already_fired)
``db/connection-lost``      one of the engine parent's database connections broke or
                            cannot be opened. ``connection`` (its name, e.g.
                            "skivi-engine"), ``error`` (the error text)
``db/connection-regained``  that connection works again. ``connection``,
                            ``down_seconds`` (since it was lost)
``job/cancelled``           a job whose cancel was requested while an engine held it
                            ended and is in the history table as cancelled
                            (``skivi.cancel_jobs``). The job/completed fields, plus
                            ``error`` (how its attempt ended: the handler's exception,
                            its killed process; None if it never started), ``reason`` and
                            ``cancelled_by`` (the request's). A job cancelled while it
                            waited never reached an engine: it has no event
``job/completed``           a successful attempt was written. ``job_id``, ``task``,
                            ``queue_name`` (None: no queue), ``run_seconds``,
                            ``wait_seconds`` (run_at to start; None if unknown)
``job/exhausted``           a failed attempt ended the job for good: it is in the history
                            table as exhausted. The job/completed fields, plus ``error``
                            (the failure text) and ``reason``, the history row's:
                            "max_attempts", "superseded" (it lost its job key while it
                            ran), or the child's reason such as "no_handler"
``job/failed``              a failed attempt; the job waits for its retry. The
                            job/completed fields, plus ``error`` and ``retry_delay``
                            (seconds until it is runnable again)
``job/partial-success``     a batch job's attempt where some items failed: only those
                            stay in its payload, to be retried. The job/failed fields
``job/rescued``             the jobs of dead engines were made runnable again (or
                            exhausted, when on their last attempt). ``engines`` (their
                            ids), ``retried``, ``exhausted`` (job counts)
``pool/start``              the engine forked its children and starts claiming.
                            ``engine_id``, ``pid``, ``processes``, ``concurrency``
``pool/stop``               the engine finished its shutdown. ``engine_id``, ``pid`` and
                            its totals: ``claimed``, ``completed``, ``failed``,
                            ``exhausted``, ``stale``, ``child_crashes``, ``rescued``,
                            ``cancelled``
==========================  ==========================================================

Every finished attempt produces exactly one of job/completed, job/failed,
job/partial-success, job/exhausted and job/cancelled, emitted once its result is written to
the database (in batches: one ``emit_many`` per completion flush). A result the database
refused (the job was rescued from this engine meanwhile) produces none.

Rules (STYLE.md §8.6, habit 7):
    * emitting never blocks and never raises: no I/O, cost proportional to the number of
      subscribers; a handler that raises is logged (at most once per second) and counted in
      ``Emitter.handler_errors``, and the other handlers still run;
    * handlers run synchronously in the emitting thread: in the engine that is its event
      loop, so a handler must be quick (hand slow work to a queue or a thread of your own);
    * the emitter keeps the last ``events.buffer_size`` events (``Emitter.recent()``).

Processes. Job events are produced in the engine's parent process, from the result rows its
completer wrote. When ``System.start()`` forks the engine from an application, the engine
process starts with a fresh emitter whose only subscriber is an :class:`EventForwarder`
writing every batch of events to a pipe; in the application an :class:`EventReceiver` thread
("skivi-events") reads them and replays them into ``system.emitter``. So an application's
handlers run in the application, exactly once, whenever they were registered, on that
thread. The pipe never blocks the engine: when the application does not keep up, whole
batches are dropped and counted (``EventForwarder.dropped``). With ``python -m skivi.engine``
there is no application: handlers on that system's emitter run in the engine's parent. The
Prometheus exporter does not depend on subscribers: the engine's observer feeds it directly
(``skivi.engine.observer``, ``skivi.metrics``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Final, TypedDict

import orjson

from skivi.framing import FrameReader, encode_frame

__all__ = [
    "ALL",
    "BUFFER_SIZE_DEFAULT",
    "CollectingEmitter",
    "Emitter",
    "Event",
    "EventForwarder",
    "EventKind",
    "EventReceiver",
    "Handler",
]

logger = logging.getLogger(__name__)

ALL: Final = "all"
"""Subscribe to every event type."""

BUFFER_SIZE_DEFAULT = 1000
ERROR_LOG_INTERVAL = 1.0
"""Seconds between two log lines about failing handlers (every failure is counted)."""
FORWARD_MAX_PENDING = 8 << 20
"""Bytes of encoded events an EventForwarder holds back while the pipe is full; beyond
this, new batches are dropped."""
FORWARD_PIPE_SIZE = 1 << 20
"""Capacity asked for the forwarding pipe (Linux F_SETPIPE_SZ); the default is 64 KiB."""

_F_SETPIPE_SZ = 1031
EVENTS_FRAME = b"E"


class EventKind(StrEnum):
    """Every event type; the catalogue in this module's docstring documents each one."""

    CHILD_REPLACED = "child/replaced"
    CRON_FIRED = "cron/fired"
    DB_CONNECTION_LOST = "db/connection-lost"
    DB_CONNECTION_REGAINED = "db/connection-regained"
    JOB_CANCELLED = "job/cancelled"
    JOB_COMPLETED = "job/completed"
    JOB_EXHAUSTED = "job/exhausted"
    JOB_FAILED = "job/failed"
    JOB_PARTIAL_SUCCESS = "job/partial-success"
    JOB_RESCUED = "job/rescued"
    POOL_START = "pool/start"
    POOL_STOP = "pool/stop"


class Event(TypedDict):
    """One event: ``type`` (an :class:`EventKind` value), ``data``, ``ts`` (epoch seconds)."""

    type: str
    data: dict[str, Any]
    ts: float


Handler = Callable[[Event], object]
"""Called with each event of the kind it subscribed to."""

BatchHandler = Callable[[list[Event]], object]
"""Called with every event, one list per ``emit``/``emit_many``/``replay`` call."""

_KINDS = frozenset(k.value for k in EventKind)


class Emitter:
    """Delivers events to their subscribers and keeps the most recent ones.

    Thread-safe: subscribing swaps immutable tuples under a lock, emitting reads them
    without one. Handlers run in the emitting thread.
    """

    def __init__(self, buffer_size: int = BUFFER_SIZE_DEFAULT) -> None:
        self.buffer_size = buffer_size
        self.handler_errors = 0
        """Handler calls that raised, since this emitter was made."""
        self._lock = threading.Lock()
        self._by_kind: dict[str, tuple[Handler, ...]] = {}
        self._all: tuple[Handler, ...] = ()
        self._batch: tuple[BatchHandler, ...] = ()
        self._buffer: deque[Event] | None = deque(maxlen=buffer_size) if buffer_size else None
        self._last_error_log = float("-inf")

    # -- subscribing -----------------------------------------------------------------
    def on(self, kind: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` for every event of ``kind`` (an :class:`EventKind` value,
        or ``"all"``). Returns a callable that unsubscribes (idempotent)."""
        kind = str(kind)
        if kind != ALL and kind not in _KINDS:
            raise ValueError(f"unknown event type {kind!r}; expected 'all' or one of "
                             f"{', '.join(sorted(_KINDS))}")
        with self._lock:
            if kind == ALL:
                self._all = (*self._all, handler)
            else:
                self._by_kind[kind] = (*self._by_kind.get(kind, ()), handler)

        def unsubscribe() -> None:
            with self._lock:
                if kind == ALL:
                    self._all = _without(self._all, handler)
                else:
                    rest = _without(self._by_kind.get(kind, ()), handler)
                    if rest:
                        self._by_kind[kind] = rest
                    else:
                        self._by_kind.pop(kind, None)

        return unsubscribe

    def on_batch(self, handler: BatchHandler) -> Callable[[], None]:
        """Call ``handler(events)`` with every event, one list per emit call (what a
        forwarder or an exporter wants: one call per completion flush, not per job).
        Returns a callable that unsubscribes."""
        with self._lock:
            self._batch = (*self._batch, handler)

        def unsubscribe() -> None:
            with self._lock:
                self._batch = _without(self._batch, handler)

        return unsubscribe

    # -- emitting --------------------------------------------------------------------
    def emit(self, kind: EventKind, data: dict[str, Any]) -> None:
        """Emit one event. Never raises, never blocks (beyond what handlers do)."""
        event: Event = {"type": kind, "data": data, "ts": time.time()}
        if self._buffer is not None:
            self._buffer.append(event)
        for handler in (*self._by_kind.get(kind, ()), *self._all):
            try:
                handler(event)
            except Exception:  # noqa: BLE001 - a handler never breaks the emitter
                self._handler_failed(handler, event)
        if self._batch:
            self._to_batch_handlers([event])

    def kept(self, kind: EventKind, n: int) -> int:
        """How many of ``n`` events of ``kind`` emitted at once would reach anything: all
        of them when some handler takes them, else the last ones the ring buffer keeps. A
        caller building a batch of events per completion flush builds only those (most
        engines have no subscriber, and the buffer keeps 1,000 of a flush of any size)."""
        if self._batch or self._all or self._by_kind.get(kind):
            return n
        return min(n, self.buffer_size) if self._buffer is not None else 0

    def emit_many(self, kind: EventKind, data: Sequence[dict[str, Any]]) -> None:
        """Emit one event of ``kind`` per item of ``data``, all with the same timestamp."""
        if not data:
            return
        ts = time.time()
        events: list[Event] = [{"type": kind, "data": d, "ts": ts} for d in data]
        self._deliver(events, (*self._by_kind.get(kind, ()), *self._all))

    def replay(self, events: Sequence[Event]) -> None:
        """Deliver events emitted elsewhere (the engine process), keeping their type and
        timestamp. Events of an unknown type are delivered to ``"all"`` handlers only."""
        if not events:
            return
        by_kind = self._by_kind
        everyone = self._all
        if len(by_kind) == 0 or all(e["type"] == events[0]["type"] for e in events):
            self._deliver(list(events), (*by_kind.get(events[0]["type"], ()), *everyone))
            return
        if self._buffer is not None:
            self._buffer.extend(events)
        for event in events:
            for handler in (*by_kind.get(event["type"], ()), *everyone):
                try:
                    handler(event)
                except Exception:  # noqa: BLE001 - a handler never breaks the emitter
                    self._handler_failed(handler, event)
        if self._batch:
            self._to_batch_handlers(list(events))

    def _deliver(self, events: list[Event], handlers: tuple[Handler, ...]) -> None:
        if self._buffer is not None:
            self._buffer.extend(events)
        for handler in handlers:
            for event in events:
                try:
                    handler(event)
                except Exception:  # noqa: BLE001 - a handler never breaks the emitter
                    self._handler_failed(handler, event)
        if self._batch:
            self._to_batch_handlers(events)

    def _to_batch_handlers(self, events: list[Event]) -> None:
        for handler in self._batch:
            try:
                handler(events)
            except Exception:  # noqa: BLE001 - a handler never breaks the emitter
                self._handler_failed(handler, events[0])

    def _handler_failed(self, handler: object, event: Event) -> None:
        """Count a handler failure; log it (with its traceback) at most once a second.
        Called from an ``except`` block."""
        self.handler_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_INTERVAL:
            self._last_error_log = now
            logger.exception("event handler %r failed on %s (%d handler failures so far)",
                             handler, event["type"], self.handler_errors,
                             extra={"action": "event_handler_failed"})

    # -- reading ---------------------------------------------------------------------
    def recent(self) -> list[Event]:
        """The most recent events, oldest first (at most ``buffer_size``)."""
        return list(self._buffer) if self._buffer is not None else []

    def subscribers(self) -> int:
        """How many handlers are subscribed, of every kind."""
        return (sum(len(h) for h in self._by_kind.values()) + len(self._all)
                + len(self._batch))


def _without(handlers: tuple[Any, ...], handler: object) -> tuple[Any, ...]:
    """``handlers`` less the first occurrence of ``handler``."""
    for i, h in enumerate(handlers):
        if h is handler or h == handler:
            return handlers[:i] + handlers[i + 1:]
    return handlers


class CollectingEmitter(Emitter):
    """An emitter that also keeps every event it emits in ``events`` (for tests)."""

    def __init__(self, buffer_size: int = BUFFER_SIZE_DEFAULT) -> None:
        super().__init__(buffer_size)
        self.events: list[Event] = []
        self.on_batch(self.events.extend)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The data of every collected event of ``kind``, in order."""
        return [e["data"] for e in self.events if e["type"] == kind]

    def types(self) -> list[str]:
        """The type of every collected event, in order."""
        return [e["type"] for e in self.events]


class EventForwarder:
    """A batch subscriber that writes events to a pipe, for the process at its other end.

    Each batch is one frame (``skivi.framing``, kind EVENTS_FRAME) holding an orjson array
    of events. The pipe is
    non-blocking: a frame the pipe cannot take at once is kept (``pending``) and written
    ahead of the next batch; while more than ``max_pending`` bytes wait, new batches are
    dropped whole (``dropped`` counts their events), so framing is never broken and the
    emitting process never waits for the reader.
    """

    def __init__(self, fd: int, max_pending: int = FORWARD_MAX_PENDING) -> None:
        self.fd = fd
        self.max_pending = max_pending
        self.pending = bytearray()
        self.dropped = 0
        self.closed = False
        self._last_drop_log = float("-inf")
        os.set_blocking(fd, False)
        try:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, FORWARD_PIPE_SIZE)
        except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
            pass

    def __call__(self, events: list[Event]) -> None:
        if self.closed:
            return
        if len(self.pending) > self.max_pending:
            self._drop(len(events), "the reader is not keeping up")
            self._write()
            return
        try:
            body = orjson.dumps(events, default=str, option=orjson.OPT_NON_STR_KEYS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            self._drop(len(events), f"cannot encode them: {exc}")
            return
        self.pending += encode_frame(EVENTS_FRAME, body)
        self._write()

    def _write(self) -> None:
        while self.pending:
            try:
                n = os.write(self.fd, self.pending)
            except BlockingIOError:
                return
            except OSError as exc:
                # EPIPE: the reader is gone (the application exited); stop forwarding.
                if exc.errno != errno.EPIPE:
                    logger.warning("event forwarding failed: %s", exc,
                                   extra={"action": "forward_events_failed"})
                self.closed = True
                self.pending.clear()
                return
            del self.pending[:n]

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= ERROR_LOG_INTERVAL:
            self._last_drop_log = now
            logger.warning("dropped %d events (%d so far): %s", n, self.dropped, why,
                           extra={"action": "drop_events"})

    def close(self, timeout: float = 1.0) -> None:
        """Write what is pending (waiting up to ``timeout`` seconds for the reader), then
        close the pipe. Idempotent."""
        deadline = time.monotonic() + timeout
        while self.pending and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([], [self.fd], [], remaining)
            self._write()
        if self.pending:
            self._drop(0, f"{len(self.pending)} bytes of events unsent at close")
        self.closed = True
        try:
            os.close(self.fd)
        except OSError:
            pass


class EventReceiver:
    """Reads an :class:`EventForwarder`'s pipe on a daemon thread and replays every batch
    into ``emitter``. The thread ends when the other end is closed (the engine exited)."""

    def __init__(self, fd: int, emitter: Emitter, name: str = "skivi-events") -> None:
        self.fd = fd
        self.emitter = emitter
        self.received = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it did."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        reader = FrameReader()
        try:
            while True:
                try:
                    data = os.read(self.fd, 1 << 16)
                except InterruptedError:  # pragma: no cover - retried by Python since 3.5
                    continue
                except OSError as exc:
                    logger.warning("event pipe read failed: %s", exc,
                                   extra={"action": "receive_events_failed"})
                    return
                if not data:
                    return
                for kind, body in reader.feed(data):
                    if kind == EVENTS_FRAME:
                        self._replay(body)
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _replay(self, body: bytes) -> None:
        try:
            events = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            logger.warning("undecodable event batch dropped: %s", exc,
                           extra={"action": "receive_events_failed"})
            return
        self.received += len(events)
        self.emitter.replay(events)
