"""Handlers' enqueues through the engine's parent (``database.child_enqueue = "parent"``).

A handler's ``ctx.add_job`` / ``ctx.add_job_async`` without ``conn=`` costs the server no
connection of its own: the child checks and encodes the jobs as every enqueue does
(``skivi.client._check``: a bad spec raises in the handler before anything is sent), sends
the checked batch up its result pipe (an ENQUEUE frame, ``wire``), and the parent inserts
it on the engine's one shared connection, with the very statements a direct enqueue runs
(``skivi.client._run_async``), and answers down the child's job pipe (ENQUEUED: the stored
Jobs, or why not). An engine then costs the server one connection (plus LISTEN's),
children included, however many processes it has.

Child side (``ChildRelay``, the ``relay`` of the child's ``Client``). Only the loop's
thread writes frames of the relay: a handler on a sync thread hands its request to the
loop (``call_soon_threadsafe``) and blocks on a concurrent future; an async handler awaits
the same future; a sync handler running on the loop's own thread (``worker.sync_threads =
1``) blocks the loop, so it sends the request itself and reads the job pipe itself until
the answer comes (jobs and STOP frames read meanwhile are dispatched as the loop would).

Parent side (``EnqueueRelay``): requests are run one at a time, each in its own
``session()`` of the shared connection and its own transaction, bounded by
``relay_bounds_local.sql``. One at a time, so a heartbeat waiting for the connection never
waits behind more than one relayed enqueue.

Bounds, so that no handler waits for ever and no enqueue holds up the heartbeat:
    start_within   database.connect_timeout: a request the parent could not begin by then
                   (the connection busy, or being re-made) is answered EnqueueTimeout,
                   nothing stored. The child says when (``start_by``, on the host's
                   monotonic clock), so a request read late (a stalled parent) is not run
    statement      half what a heartbeat may be late, (worker.lease_timeout -
                   worker.heartbeat_interval) / 2, as the completer's lock bound: lock
                   waits and each statement; past it the enqueue fails, nothing stored
    answer_within  start_within + statement + ANSWER_MARGIN: a child that has no answer by
                   then (its parent stopped or gone) raises EnqueueTimeout in the handler

What the handler sees: the stored Jobs, as a direct enqueue returns them; PayloadError or
JobSpecError for a spec refused by the checks (in the child, as always); JobSpecError for a
spec the database refused (its message and SQLSTATE); DatabaseUnavailable when the
parent's connection could not be made or was lost; EnqueueTimeout for the bounds above; a
SkiviError naming anything else. A request whose child died meanwhile is still run (it is
its own transaction, as a direct enqueue is) and its answer dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import psycopg

from skivi.client import _Batch, _run_async
from skivi.db import pool as dbpool
from skivi.db.queries import relay_bounds_local
from skivi.engine import wire
from skivi.errors import DatabaseUnavailable, EnqueueTimeout, JobSpecError, SkiviError, shown
from skivi.job import Job

if TYPE_CHECKING:
    from skivi.config import Config
    from skivi.engine.connection import Reconnecting
    from skivi.instance import Instance

__all__ = ["ANSWER_MARGIN", "Bounds", "ChildRelay", "EnqueueRelay", "bounds"]

logger = logging.getLogger(__name__)

ANSWER_MARGIN = 2.0
"""Seconds a child waits beyond the parent's own bounds: pipes and a busy parent loop."""

# Kinds of an ENQUEUED frame's failure, each with its fields.
TIMEOUT = "timeout"  # (message,)
UNAVAILABLE = "unavailable"  # (where, cause, "refused" or "")
REFUSED = "refused"  # (message,)
FAILED = "failed"  # (message,)


class Bounds(NamedTuple):
    start_within: float
    statement: float
    answer_within: float


def bounds(config: Config) -> Bounds:
    """The relay's bounds (see the module docstring), the same in the parent and the child."""
    w = config.worker
    start = config.database.connect_timeout
    statement = max(0.1, (w.lease_timeout - w.heartbeat_interval) / 2)
    return Bounds(start, statement, start + statement + ANSWER_MARGIN)


def describe(batch: _Batch) -> str:
    """'1 job of task 'x'' / '3 jobs of tasks 'a', 'b'': what an error names."""
    tasks = sorted({s if isinstance(s, str) else s.task for s in batch.specs})
    n = len(batch.specs)
    shown_tasks = ", ".join(shown(t) for t in tasks[:3]) + (", ..." if len(tasks) > 3 else "")
    return (f"{n} job{'s' if n != 1 else ''} of task{'s' if len(tasks) != 1 else ''} "
            f"{shown_tasks}")


def error_of(failure: tuple[str, ...]) -> SkiviError:
    """The exception a handler gets for an ENQUEUED frame's failure."""
    kind = failure[0]
    if kind == UNAVAILABLE:
        return DatabaseUnavailable(failure[1], failure[2], refused=failure[3] == "refused")
    if kind == TIMEOUT:
        return EnqueueTimeout(failure[1])
    if kind == REFUSED:
        return JobSpecError(failure[1])
    return SkiviError(failure[1])


# -- child side --------------------------------------------------------------------------

class ChildRelay:
    """A child's end: ``Client.relay`` of its handlers' ``ctx``. Made on the loop's thread;
    ``connect`` gives it the result pipe's writer and the job pipe's reader."""

    # Its enqueues are transactions of the parent's, never the handler's (see
    # skivi.client.Relay).
    joins_transaction = False

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self.bounds = bounds(config)
        self._ids = itertools.count(1)  # next() is atomic: any thread may draw a number
        self._pending: dict[int, concurrent.futures.Future[list[Job]]] = {}
        self._write: Callable[[bytes], None] = _unconnected
        self._pump: Callable[[float], None] = _unconnected_pump
        self.gone = False

    def connect(self, write: Callable[[bytes], None], pump: Callable[[float], None]) -> None:
        """``write``: a frame up the result pipe (on the loop's thread). ``pump``: read and
        dispatch what the job pipe holds, waiting at most the seconds given (on the loop's
        thread, while a handler blocks it)."""
        self._write = write
        self._pump = pump

    def run(self, batch: _Batch) -> list[Job]:
        request = next(self._ids)
        fut: concurrent.futures.Future[list[Job]] = concurrent.futures.Future()
        if threading.get_ident() == self.loop_thread:
            return self._run_blocking_the_loop(request, batch, fut)
        self.loop.call_soon_threadsafe(self._send, request, batch, fut)
        try:
            return fut.result(self.bounds.answer_within)
        except concurrent.futures.TimeoutError:
            if fut.done():  # it is the answer: an EnqueueTimeout from the parent
                raise
            self.loop.call_soon_threadsafe(self._pending.pop, request, None)
            raise self._unanswered(batch) from None

    async def run_async(self, batch: _Batch) -> list[Job]:
        request = next(self._ids)
        fut: concurrent.futures.Future[list[Job]] = concurrent.futures.Future()
        if asyncio.get_running_loop() is self.loop:
            self._send(request, batch, fut)
        else:  # a loop of the handler's own (asyncio.run in a sync handler)
            self.loop.call_soon_threadsafe(self._send, request, batch, fut)
        answer = asyncio.wrap_future(fut)
        try:
            done, _ = await asyncio.wait({answer}, timeout=self.bounds.answer_within)
        finally:
            if not answer.done():  # timed out, or the handler was cancelled
                answer.cancel()
                self.loop.call_soon_threadsafe(self._pending.pop, request, None)
        if not done:
            raise self._unanswered(batch)
        return answer.result()

    def _run_blocking_the_loop(self, request: int, batch: _Batch,
                               fut: concurrent.futures.Future[list[Job]]) -> list[Job]:
        self._send(request, batch, fut)
        deadline = time.monotonic() + self.bounds.answer_within
        while not fut.done():
            left = deadline - time.monotonic()
            if left <= 0:
                self._pending.pop(request, None)
                raise self._unanswered(batch)
            self._pump(left)
        return fut.result()

    def _send(self, request: int, batch: _Batch,
              fut: concurrent.futures.Future[list[Job]]) -> None:
        """On the loop's thread: register the request, then write it."""
        if self.gone:
            fut.set_exception(self._gone())
            return
        self._pending[request] = fut
        try:
            self._write(wire.encode_enqueue(
                request, time.monotonic() + self.bounds.start_within, batch))
        except BaseException as exc:  # noqa: BLE001 - the handler gets it, not the loop
            self._pending.pop(request, None)
            if not fut.done():
                fut.set_exception(exc)

    def answer(self, body: bytes) -> None:
        """An ENQUEUED frame arrived (on the loop's thread)."""
        request, jobs, failure = wire.decode_enqueued(body)
        fut = self._pending.pop(request, None)
        if fut is None or fut.done():  # given up on, or cancelled
            return
        if failure is not None:
            fut.set_exception(error_of(failure))
        else:
            fut.set_result(list(jobs or ()))

    def lost(self) -> None:
        """The parent closed the job pipe (or died): no answer will ever come."""
        self.gone = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self._gone())

    def _unanswered(self, batch: _Batch) -> EnqueueTimeout:
        return EnqueueTimeout(
            f"the enqueue of {describe(batch)} got no answer from the engine within "
            f"{self.bounds.answer_within:g} s (database.child_enqueue = \"parent\"; is the "
            f"engine's parent process stopped?): it was not stored, unless the engine ran "
            f"it just before it stopped answering")

    @staticmethod
    def _gone() -> SkiviError:
        return SkiviError("the engine's parent process is gone: this enqueue cannot be "
                          "answered (database.child_enqueue = \"parent\"); it may have "
                          "been stored if it was sent before")


def _unconnected(frame: bytes) -> None:
    raise SkiviError("the enqueue relay is not connected yet")


def _unconnected_pump(timeout: float) -> None:
    raise SkiviError("the enqueue relay is not connected yet")


# -- parent side -------------------------------------------------------------------------

class EnqueueRelay:
    """The parent's end: runs the children's ENQUEUE requests on the shared connection,
    one at a time, and hands each answer to the ``reply`` given with it."""

    def __init__(self, db: Reconnecting, instance: Instance) -> None:
        self.db = db
        self.q = instance.queries
        self.bounds = bounds(instance.config)
        self._ms = str(max(1, round(self.bounds.statement * 1000)))
        self._queue: deque[tuple[bytes, Callable[[bytes], None]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.relayed = 0  # requests answered with their jobs

    def submit(self, body: bytes, reply: Callable[[bytes], None]) -> None:
        """An ENQUEUE frame's body, and where its answer goes (a frame down the child's job
        pipe; dropped there if the child has died)."""
        self._queue.append((body, reply))
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._work(),
                                                               name="enqueue relay")

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                body, reply = self._queue.popleft()
                try:
                    frame = await self.run(body)
                except asyncio.CancelledError:
                    raise
                except BaseException:  # a bad frame must not end the relay
                    logger.exception("cannot read a child's enqueue request",
                                     extra={"action": "relay_failed"})
                    continue
                reply(frame)

    async def run(self, body: bytes) -> bytes:
        """The ENQUEUED frame answering one ENQUEUE body."""
        request, start_by, batch = wire.decode_enqueue(body)
        outcome = await self._insert(start_by, batch)
        if isinstance(outcome, list):
            self.relayed += 1
            return wire.encode_enqueued(request, jobs=outcome)
        return wire.encode_enqueued(request, failure=outcome)

    async def _insert(self, start_by: float, batch: _Batch) -> list[Job] | tuple[str, ...]:
        what = describe(batch)
        left = start_by - time.monotonic()
        too_late = (TIMEOUT, f"the enqueue of {what} could not start within "
                             f"{self.bounds.start_within:g} s (database.connect_timeout): "
                             f"the engine's database connection was busy or being made "
                             f"again; nothing was stored")
        if left <= 0:
            return too_late
        try:
            async with asyncio.timeout(left) as bound:
                async with self.db.session(retry=False) as conn:
                    bound.reschedule(None)  # from here the server's bounds apply
                    async with conn.transaction():
                        await relay_bounds_local.run_async(conn, self.q, ms=self._ms)
                        return await _run_async(conn, self.q, batch)
        except TimeoutError:
            return too_late
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            return (TIMEOUT, f"the enqueue of {what} took longer than "
                             f"{self.bounds.statement:g} s on the engine's shared connection "
                             f"({_first_line(exc)}); nothing was stored. Enqueue fewer jobs "
                             f"per call, or give handlers connections of their own "
                             f"(database.child_enqueue = \"pool\", or conn=)")
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            unavailable = dbpool.unavailable(self.db.url, exc)
            return (UNAVAILABLE, unavailable.where, unavailable.cause,
                    "refused" if unavailable.refused else "")
        except psycopg.Error as exc:
            return (REFUSED, f"the database refused the enqueue of {what}: "
                             f"{_first_line(exc)} (SQLSTATE {exc.sqlstate})")
        except Exception as exc:
            logger.exception("relayed enqueue of %s failed", what,
                             extra={"action": "relay_failed"})
            return (FAILED, f"the enqueue of {what} failed in the engine: "
                            f"{type(exc).__name__}: {_first_line(exc)}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
