"""A child process: runs handlers, reports results. Never writes job state to the database.

Lifecycle: the parent forks the child through ``skivi.engine.process.fork`` (so lambdas
and closures in the task registry just work, and the child holds none of the parent's
sockets), the child ignores SIGINT/SIGTERM (the parent drives shutdown), starts a fresh
uvloop event loop, says READY and then:

    running    JOBS frames arrive; each job starts at once: async handlers as tasks on the
               loop (many at a time), sync handlers one at a time on the loop, or on a
               thread pool when worker.sync_threads > 1. The parent never sends more jobs
               than the child's concurrency, so nothing queues here for long.
    stopping   on STOP: jobs not yet started go back as RESULT_RELEASED, running ones
               finish, the last results are flushed, and the child exits 0.

Cancel (a CANCEL frame, in either state): a job not yet started goes back as
RESULT_RELEASED when its turn comes; a running async handler's task is cancelled (the
handler gets asyncio.CancelledError); a running sync handler sees ``ctx.cancelled`` become
true (read from a sync handler that holds the loop, it reads the job pipe itself, so the
news gets in). Whatever row the job then reports, the parent records it as cancelled; one
that does not end within worker.cancel_grace is killed with its child by the parent.

Results are batched: they are flushed when no job is running or waiting, or every
RESULT_FLUSH_SIZE results, so a busy child sends one frame per handful of jobs.

Return values. A job of a task that keeps results (its ``store_result``, or
``worker.store_results``) has its return value encoded here, by the rules of payloads
(``skivi.payload.encode``: JSON, no NaN, no U+0000, at most validation.max_payload_bytes), and
sent in a VALUES frame just before the RESULTS frame with its row. A value that cannot be
encoded does not fail the job: it completes, and its result records why the value was not
kept. Jobs of other tasks send nothing more, and their rows are unchanged.

What a handler's outcome becomes:
    return                      completed
    raise (any BaseException)   failed, retried after the task's backoff; sys.exit and
                                KeyboardInterrupt inside a handler are failures too
    list payload, list result   a batch job: entries that are exceptions stay in the
    with exceptions             payload and are retried; the rest are done (partial success)
    no handler for the task     exhausted at once, reason "no_handler"
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import inspect
import logging
import mmap
import os
import select
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from skivi.engine import wire
from skivi.engine.wire import (
    JOB_ATTEMPTS,
    JOB_CREATED_AT,
    JOB_FLAGS,
    JOB_ID,
    JOB_KEY,
    JOB_LEASE,
    JOB_MAX_ATTEMPTS,
    JOB_PAYLOAD,
    JOB_PRIORITY,
    JOB_QUEUE_NAME,
    JOB_RUN_AT,
    JOB_SLOT,
    JOB_TASK,
    RESULT_CODE,
    RESULT_COMPLETED,
    RESULT_ID,
    RESULT_LEASE,
    RESULT_SLOT,
    VALUE_JSON,
    completed_row,
    failed_row,
    released_row,
)
from skivi.errors import PayloadError
from skivi.job import Job, JobSpec
from skivi.payload import encode as encode_json

if TYPE_CHECKING:
    from skivi.client import Client
    from skivi.engine.relay import ChildRelay
    from skivi.instance import Instance
    from skivi.registry import Task, TaskRegistry

__all__ = ["JobContext", "JobInfo", "child_main", "error_message", "error_traceback",
           "failure_row", "no_handler_row", "outcome_row", "queue_wait", "timeout_text"]

logger = logging.getLogger(__name__)

RESULT_FLUSH_SIZE = 256
READ_SIZE = 1 << 20  # of the job pipe, when a blocked loop's handler reads it (see _JobPipe)
ERROR_TEXT_MAX = 64 * 1024


class JobInfo:
    """What a handler sees of its job (``ctx.job``): read-only views of its claim message.

    Built per job on the hot path, so nothing is decoded until a handler asks for it: most
    handlers read the payload and never the times (parsing both cost a fifth of the child's
    work per job). A time that cannot be decoded raises when it is read, inside the
    handler, so the job fails with the reason in last_error."""

    __slots__ = ("_m",)

    def __init__(self, message: Sequence[Any]) -> None:
        self._m = message

    @property
    def id(self) -> int:
        return self._m[JOB_ID]  # type: ignore[no-any-return]

    @property
    def task_identifier(self) -> str:
        return self._m[JOB_TASK]  # type: ignore[no-any-return]

    @property
    def payload(self) -> Any:
        # A JSON null payload (a row written by SQL: insert ... payload = 'null') means no
        # payload, which every enqueue function stores as {}: the handler sees {} for both.
        payload = self._m[JOB_PAYLOAD]
        return {} if payload is None else payload

    @property
    def queue_name(self) -> str | None:
        return self._m[JOB_QUEUE_NAME]  # type: ignore[no-any-return]

    @property
    def priority(self) -> int:
        return self._m[JOB_PRIORITY]  # type: ignore[no-any-return]

    @property
    def run_at(self) -> dt.datetime:
        return _parse_time(self._m[JOB_RUN_AT])

    @property
    def attempts(self) -> int:
        return self._m[JOB_ATTEMPTS]  # type: ignore[no-any-return]

    @property
    def max_attempts(self) -> int:
        return self._m[JOB_MAX_ATTEMPTS]  # type: ignore[no-any-return]

    @property
    def key(self) -> str | None:
        return self._m[JOB_KEY]  # type: ignore[no-any-return]

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(self._m[JOB_FLAGS] or ())

    @property
    def created_at(self) -> dt.datetime:
        return _parse_time(self._m[JOB_CREATED_AT])

    def __repr__(self) -> str:
        return (f"JobInfo(id={self.id!r}, task_identifier={self.task_identifier!r}, "
                f"queue_name={self.queue_name!r}, attempts={self.attempts!r}/"
                f"{self.max_attempts!r})")


class _JobLogger(logging.LoggerAdapter[logging.Logger]):
    """Prefixes each message with its job, whatever format the application's handlers use,
    and keeps the job's fields as record attributes too."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"job {extra.get('job_id')} ({extra.get('task')}): {msg}", kwargs


class _Cancels:
    """The jobs of this process whose cancel came (a CANCEL frame), by claim, for
    ``ctx.cancelled``; and how a sync handler that holds the loop reads the job pipe."""

    __slots__ = ("claims", "loop_thread", "probe")

    def __init__(self) -> None:
        self.claims: set[tuple[int, int]] = set()
        self.probe: Callable[[], None] | None = None
        self.loop_thread = 0


# One per process: a child runs one _Runner (outside a child, as in skivi.testing, it
# stays empty and ctx.cancelled is False).
_cancels = _Cancels()


class JobContext:
    """The argument every handler receives: ``ctx.job``, ``ctx.logger``, ``ctx.add_job``,
    ``ctx.cancelled``."""

    __slots__ = ("_client", "_logger", "job")

    def __init__(self, job: JobInfo, client: Client) -> None:
        self.job = job
        self._client = client
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger bound to this job (built on first use: most handlers never log): its
        lines start with ``job <id> (<task>):`` and carry job_id, task and attempt as
        record attributes."""
        if self._logger is None:
            job = self.job
            self._logger = _JobLogger(
                logging.getLogger(f"skivi.task.{job.task_identifier}"),
                {"job_id": job.id, "task": job.task_identifier, "attempt": job.attempts},
            )
        return self._logger

    @property
    def cancelled(self) -> bool:
        """True once this job's cancel was requested (``skivi.cancel_jobs``, ``skivi jobs
        cancel``) and reached its process. A sync handler with a long loop should check it
        and return (or raise): the job then ends as cancelled whatever it does, and one that
        has not ended worker.cancel_grace seconds after the request is killed with its
        process. An async handler gets ``asyncio.CancelledError`` instead (this is true
        too). Cheap to read often: a set lookup, and from a sync handler that holds the
        event loop one non-blocking look at the job pipe."""
        m = self.job._m
        claim = (m[JOB_ID], m[JOB_LEASE])
        cancels = _cancels
        if claim in cancels.claims:
            return True
        if (cancels.probe is not None and threading.get_ident() == cancels.loop_thread
                and asyncio.current_task() is None):
            # A sync handler on the loop's own thread: the loop cannot read the pipe now.
            cancels.probe()
        return claim in cancels.claims

    def add_job(self, task: str, payload: Any = None, **options: Any) -> Job:
        """Enqueue a follow-up job (its own transaction; in the handler's transaction with
        ``conn=``). Without ``conn=`` it goes through the engine's parent by default
        (database.child_enqueue, ``skivi.engine.relay``)."""
        from skivi.client import add_job

        return add_job(self._client, task, payload, **options)

    async def add_job_async(self, task: str, payload: Any = None, **options: Any) -> Job:
        """Enqueue a follow-up job from an async handler."""
        from skivi.client import add_job_async

        return await add_job_async(self._client, task, payload, **options)

    def add_jobs(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        """Enqueue follow-up jobs in one statement (their own transaction), as
        ``skivi.add_jobs`` does."""
        from skivi.client import add_jobs

        return add_jobs(self._client, specs)

    async def add_jobs_async(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        """The async twin of ``add_jobs``."""
        from skivi.client import add_jobs_async

        return await add_jobs_async(self._client, specs)


# What a handler sees for a time Python cannot hold: a row written from SQL may have
# run_at = '-infinity' (runnable before anything else) or 'infinity', or a year outside
# 1..9999. Clamped to the nearest datetime Python has, in UTC.
TIME_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
TIME_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)


def _parse_time(value: str) -> dt.datetime:
    """A timestamptz as json_build_array spells it (the claim, migration 0010), clamped when
    Python cannot hold it: ``-infinity`` and BC dates become TIME_MIN, ``infinity`` and years
    past 9999 TIME_MAX."""
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        if value == "-infinity" or value.endswith(" BC"):
            return TIME_MIN
        if value == "infinity" or value[:5].isdigit():
            return TIME_MAX
        raise


def queue_wait(m: Sequence[Any]) -> float:
    """Seconds from the job's run_at to now: its queue wait, for metrics. 0 when run_at is
    not a time Python holds (a -infinity run_at would count as 2,000 years of waiting).
    Never raises: it runs outside the handler's guard, where an exception would leave the
    job's slot held (a handler that reads an undecodable time fails its own job instead)."""
    epoch = _run_at_epoch(m[JOB_RUN_AT])
    return 0.0 if epoch is None else max(0.0, time.time() - epoch)


@functools.lru_cache(maxsize=1024)
def _run_at_epoch(text: str) -> float | None:
    """The epoch of a claim message's run_at, None when Python cannot hold it. Cached: the
    jobs of one bulk enqueue, or of one schedule, share their run_at."""
    try:
        when = _parse_time(text)
        if when in (TIME_MIN, TIME_MAX):
            return None
        return when.timestamp()
    except (ValueError, OverflowError, TypeError):  # an unknown spelling, a platform's limits
        return None


def error_message(exc: BaseException) -> str:
    """The text stored as a job's last error: the exception's message, as Graphile Worker
    stores it (``TEST_ERROR`` for ``raise Exception("TEST_ERROR")``). An exception without
    a message (``raise KeyError()``, ``sys.exit()``) gives its class name instead, so the
    error always says something; so do the exceptions that are not errors of the handler's
    own (``SystemExit``, ``KeyboardInterrupt``: ``sys.exit(3)`` is stored as
    ``SystemExit: 3``, not a bare ``3``). Made safe for PostgreSQL text and capped, even
    when ``__str__`` raises."""
    name = type(exc).__qualname__
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the failure
        text = f"{name}: <exception text unavailable>"
    if not text.strip():
        text = name
    elif not isinstance(exc, Exception):
        text = f"{name}: {text}"
    return _safe_text(text)


def error_traceback(exc: BaseException) -> str:
    """The exception's traceback as Python prints it (type and message last), kept beside
    the message (job_traceback / job_history.last_error_traceback); same safety and cap."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the failure
        text = f"{type(exc).__qualname__}: <exception text unavailable>"
    return _safe_text(text)


def _safe_text(text: str) -> str:
    """No NUL, no lone surrogates (PostgreSQL text holds neither), at most ERROR_TEXT_MAX."""
    if len(text) > ERROR_TEXT_MAX:
        half = ERROR_TEXT_MAX // 2
        text = text[:half] + "\n... [truncated] ...\n" + text[-half:]
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _released(m: Sequence[Any]) -> list[Any]:
    """The row of a job handed back unstarted (the child is stopping)."""
    return released_row(job_id=m[JOB_ID], lease=m[JOB_LEASE], task=m[JOB_TASK],
                        queue_name=m[JOB_QUEUE_NAME], slot=m[JOB_SLOT])


def failure_row(task: Task, m: list[Any], exc: BaseException, took: float, wait: float,
                text: str | None = None) -> list[Any]:
    """The result row of a failed attempt of job message ``m`` (its slot appended): retried
    after the task's backoff, or exhausted by the database when its attempts ran out. A
    timeout's ``text`` replaces the message; the traceback says where the job was."""
    attempt = m[JOB_ATTEMPTS]
    return failed_row(job_id=m[JOB_ID], lease=m[JOB_LEASE], task=m[JOB_TASK],
                      queue_name=m[JOB_QUEUE_NAME], run_seconds=took,
                      error=text or error_message(exc),
                      delay=task.backoff.delay(attempt), wait_seconds=wait,
                      slot=m[JOB_SLOT], attempt=attempt, traceback=error_traceback(exc))


def outcome_row(task: Task, m: list[Any], outcome: object, took: float,
                wait: float) -> list[Any]:
    """The result row of a handler that returned ``outcome``: completed, or for a list
    payload and a list result holding exceptions, a partial success (or a failure when
    every item failed). Shared with ``skivi.testing``, so its drain decides as the engine."""
    payload = m[JOB_PAYLOAD]
    if (isinstance(payload, list) and isinstance(outcome, list)
            and len(outcome) == len(payload)
            and any(isinstance(x, BaseException) for x in outcome)):
        # Each failed item keeps its position in the payload the handler was given, so
        # the error names the items the operator can see there.
        failed = [(i, item, exc)
                  for i, (item, exc) in enumerate(zip(payload, outcome, strict=True))
                  if isinstance(exc, BaseException)]
        if len(failed) < len(payload):
            shown = failed[:10]
            errors = "\n".join(f"item {i}: {error_message(e)}" for i, _, e in shown)
            tracebacks = "\n".join(f"item {i}: {error_traceback(e)}" for i, _, e in shown)
            remaining = orjson.dumps([item for _, item, _ in failed]).decode()
            attempt = m[JOB_ATTEMPTS]
            return failed_row(
                job_id=m[JOB_ID], lease=m[JOB_LEASE], task=m[JOB_TASK],
                queue_name=m[JOB_QUEUE_NAME], run_seconds=took,
                error=f"partial success: {len(failed)} of {len(payload)} items failed\n"
                + errors, delay=task.backoff.delay(attempt), payload=remaining,
                wait_seconds=wait, slot=m[JOB_SLOT], attempt=attempt,
                traceback=_safe_text(tracebacks))
        return failure_row(task, m, failed[0][2], took, wait)
    return completed_row(job_id=m[JOB_ID], lease=m[JOB_LEASE], task=m[JOB_TASK],
                         queue_name=m[JOB_QUEUE_NAME], run_seconds=took,
                         wait_seconds=wait, slot=m[JOB_SLOT])


def no_handler_row(m: list[Any]) -> list[Any]:
    """The result row of a job whose task this engine has no handler for: exhausted at once
    (a configuration error, not a transient failure)."""
    return failed_row(job_id=m[JOB_ID], lease=m[JOB_LEASE], task=m[JOB_TASK],
                      queue_name=m[JOB_QUEUE_NAME], run_seconds=0.0,
                      error=f"no handler for task {m[JOB_TASK]!r} in this engine", delay=0.0,
                      final="no_handler", wait_seconds=queue_wait(m), slot=m[JOB_SLOT],
                      attempt=m[JOB_ATTEMPTS])


def timeout_text(timeout: float | None) -> str:
    """The error of an attempt that overran its timeout."""
    return f"timeout: the job ran longer than {timeout} s"


class _Runner:
    """Runs jobs and reports results to the parent.

    A success is batched (its slot's state byte says DONE at once, see ``wire``); a
    failure is written to the pipe before anything else runs. Either way a result the
    handler produced survives whatever the child does next."""

    def __init__(self, registry: TaskRegistry, client: Client, result_fd: int,
                 sync_threads: int, started: mmap.mmap,
                 default_timeout: float | None = None, *,
                 keeping_results: frozenset[str] = frozenset(),
                 max_value_bytes: int = 1024 * 1024) -> None:
        self.started = started  # slot states shared with the parent (see wire)
        self.keeping_results = keeping_results
        self.max_value_bytes = max_value_bytes
        # Values waiting for the next flush; appended from sync threads too (deque: atomic).
        self.values: deque[list[Any]] = deque()
        self.default_timeout = default_timeout
        self.registry = registry
        self.client = client  # this child's own: ctx.add_job's relay, or its pools
        self.result_fd = result_fd
        self.pid = os.getpid()
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.results: list[list[Any]] = []
        self.sync_queue: deque[tuple[Task, list[Any]]] = deque()
        # The running async jobs' tasks, by slot, for a CANCEL frame.
        self.async_tasks: dict[int, asyncio.Task[None]] = {}
        self.cancels = _cancels
        _cancels.loop_thread = self.loop_thread
        self.running = 0
        self.stopping = False
        self.done = asyncio.Event()
        self.flush_scheduled = False
        self.sync_pump_scheduled = False
        # Sync threads write failures themselves (see _in_thread): one writer at a time, so
        # frames never interleave.
        self._write_lock = threading.Lock()
        self.threads = (concurrent.futures.ThreadPoolExecutor(sync_threads, "skivi-sync")
                        if sync_threads > 1 else None)

    # -- results ---------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        view = memoryview(frame)
        with self._write_lock:
            while view:
                try:
                    written = os.write(self.result_fd, view)
                except BrokenPipeError:
                    # The parent is gone (a SIGKILL; this process dies with it a moment
                    # later): nobody can take results any more, and its jobs are rescued
                    # elsewhere.
                    self.stopping = True
                    self.loop.call_soon_threadsafe(self.done.set)
                    return
                view = view[written:]

    def write_on_loop(self, frame: bytes) -> None:
        """A relay request (``skivi.engine.relay``): written on the loop's thread only."""
        assert threading.get_ident() == self.loop_thread
        self._write(frame)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.values:
            # Before the rows: the parent must hold a job's value when its row is written.
            values = self.values
            batch_values = [values.popleft() for _ in range(len(values))]
            self._write(wire.encode_values(batch_values))
        if self.results:
            batch, self.results = self.results, []
            self._write(wire.encode_results(batch))
        if self.stopping and self.running == 0 and not self.sync_queue:
            self.done.set()

    def _report(self, result: list[Any]) -> None:
        if self.cancels.claims:
            self.cancels.claims.discard((result[RESULT_ID], result[RESULT_LEASE]))
        self.results.append(result)
        if result[RESULT_CODE] != RESULT_COMPLETED or len(self.results) >= RESULT_FLUSH_SIZE:
            # Only a success is remembered by its slot's state byte; anything else must be
            # in the pipe before the next handler can kill this process.
            self.flush()
        elif not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def _done(self, row: list[Any]) -> list[Any]:
        """Mark a success in its slot's state byte (before anything else can run)."""
        if row[RESULT_CODE] == RESULT_COMPLETED:
            self.started[row[RESULT_SLOT]] = wire.SLOT_DONE
        return row

    def _still_ours(self) -> None:
        """Right after a handler returns: a handler that forked and returned in both copies
        must not let the copy act as this engine's child. The copy leaves at once."""
        if os.getpid() != self.pid:
            os._exit(0)

    # -- jobs ------------------------------------------------------------------------
    def accept(self, slots: list[int], messages: list[list[Any]]) -> None:
        for m, slot in zip(messages, slots, strict=True):
            m.append(slot)  # m[JOB_SLOT]
            task = self.registry.get(m[JOB_TASK])
            if self.stopping:
                self._report(_released(m))
            elif task is None:
                self._report(no_handler_row(m))
            elif task.is_async:
                self.running += 1
                self.async_tasks[slot] = self.loop.create_task(self._run_async(task, m))
            else:
                self.sync_queue.append((task, m))
        if self.sync_queue and not self.sync_pump_scheduled:
            self.sync_pump_scheduled = True
            self.loop.call_soon(self._pump_sync)

    def cancel(self, jobs: list[list[int]]) -> None:
        """A CANCEL frame: [[id, lease, slot], ...] (see the module docstring)."""
        for job_id, lease, slot in jobs:
            self.cancels.claims.add((job_id, lease))
            if self.started[slot] != wire.SLOT_STARTED:
                # Not started: it goes back when its turn comes (see _cancelled); done:
                # its row is on its way.
                continue
            task = self.async_tasks.get(slot)
            if task is not None:
                task.cancel()

    def _cancelled(self, m: list[Any]) -> bool:
        """Whether job ``m``, about to start, was cancelled first."""
        return (m[JOB_ID], m[JOB_LEASE]) in self.cancels.claims

    def stop(self) -> None:
        self.stopping = True
        while self.sync_queue:
            self._report(_released(self.sync_queue.popleft()[1]))
        self.flush()

    def _pump_sync(self) -> None:
        """Run queued sync jobs; yield to the loop between slices so pipes stay serviced."""
        self.sync_pump_scheduled = False
        deadline = time.monotonic() + 0.005
        while self.sync_queue:
            task, m = self.sync_queue.popleft()
            if self.threads is not None:
                self.running += 1
                fut = self.loop.run_in_executor(self.threads, self._in_thread, task, m)
                fut.add_done_callback(self._thread_done)
                continue
            row = self._call_sync(task, m)
            if row is not None:
                self._report(row)
            if time.monotonic() > deadline:
                break
        if self.sync_queue:
            self.sync_pump_scheduled = True
            self.loop.call_soon(self._pump_sync)
        elif not self.flush_scheduled:
            self.flush()

    def _in_thread(self, task: Task, m: list[Any]) -> list[Any] | None:
        row = self._call_sync(task, m, in_thread=True)
        if row is not None and row[RESULT_CODE] != RESULT_COMPLETED:
            if self.cancels.claims:
                self.cancels.claims.discard((row[RESULT_ID], row[RESULT_LEASE]))
            # Written from this thread: a sibling thread's job could end the process
            # before the loop got to it.
            self._write(wire.encode_results([row]))
            return None
        return row

    def _thread_done(self, fut: asyncio.Future[list[Any] | None]) -> None:
        self.running -= 1
        row = fut.result()
        if row is not None:
            self._report(row)
        elif self.stopping and self.running == 0 and not self.sync_queue:
            self.flush()

    def _timeout(self, task: Task) -> float | None:
        return task.timeout if task.timeout is not None else self.default_timeout

    def _announce(self, m: list[Any], timeout: float) -> None:
        """Tell the parent's watchdog that a job with a timeout starts now, and the timeout
        (decided here only, where the task is known)."""
        self._write(wire.encode_started(m[JOB_ID], m[JOB_LEASE], m[JOB_SLOT], timeout))

    def _call_sync(self, task: Task, m: list[Any], in_thread: bool = False,
                   ) -> list[Any] | None:
        """Run a sync handler; its result row, or None when it returned an awaitable (then
        awaited on the loop, and reported from there)."""
        if self.cancels.claims and self._cancelled(m):
            return _released(m)
        self.started[m[JOB_SLOT]] = wire.SLOT_STARTED
        timeout = self._timeout(task)
        if timeout is not None:
            self._announce(m, timeout)
        wait = queue_wait(m)
        started = time.perf_counter()
        try:
            outcome = task.handler(JobContext(JobInfo(m), self.client))
        except BaseException as exc:  # noqa: BLE001 - every handler failure is data
            self._still_ours()
            row = failure_row(task, m, exc, time.perf_counter() - started, wait)
        else:
            self._still_ours()
            if outcome is not None and inspect.isawaitable(outcome):
                # `lambda ctx: send(ctx)` with an async send: the work is the awaitable.
                settle = self._settle(task, m, outcome, started, wait, timeout)
                if in_thread:
                    return asyncio.run_coroutine_threadsafe(settle, self.loop).result()
                self.running += 1
                self.loop.create_task(self._report_when_settled(settle))
                return None
            row = self._returned(task, m, outcome, time.perf_counter() - started, wait)
        return self._done(row)

    async def _report_when_settled(self, settle: Coroutine[Any, Any, list[Any]]) -> None:
        row = await settle
        self.running -= 1
        self._report(row)

    async def _run_async(self, task: Task, m: list[Any]) -> None:
        if self.cancels.claims and self._cancelled(m):
            self.async_tasks.pop(m[JOB_SLOT], None)
            self.running -= 1
            self._report(_released(m))
            return
        self.started[m[JOB_SLOT]] = wire.SLOT_STARTED
        timeout = self._timeout(task)
        if timeout is not None:
            self._announce(m, timeout)
        wait = queue_wait(m)
        started = time.perf_counter()
        try:
            coro = task.handler(JobContext(JobInfo(m), self.client))
        except BaseException as exc:  # noqa: BLE001 - every handler failure is data
            row = failure_row(task, m, exc, time.perf_counter() - started, wait)
        else:
            row = await self._settle(task, m, coro, started, wait, timeout)
        self.async_tasks.pop(m[JOB_SLOT], None)
        self.running -= 1
        self._report(row)

    async def _settle(self, task: Task, m: list[Any], awaitable: Awaitable[Any],
                      started: float, wait: float, timeout: float | None) -> list[Any]:
        """Await what a handler returned (within its timeout); its result row."""
        bound = asyncio.timeout(timeout) if timeout is not None else None
        try:
            if bound is not None:
                # asyncio.timeout, not wait_for: on 3.11 wait_for runs the coroutine in a
                # task of its own, which lets SystemExit/KeyboardInterrupt out of the loop.
                async with bound:
                    outcome = await awaitable
            else:
                outcome = await awaitable
        except BaseException as exc:  # noqa: BLE001 - every handler failure is data
            self._still_ours()
            # Only the job's own timeout is reported as one: a TimeoutError the handler
            # raised (a socket's, an EnqueueTimeout) is its failure like any other.
            text = (timeout_text(timeout)
                    if bound is not None and bound.expired() else None)
            row = failure_row(task, m, exc, time.perf_counter() - started, wait, text=text)
        else:
            self._still_ours()
            row = self._returned(task, m, outcome, time.perf_counter() - started, wait)
        return self._done(row)

    def _returned(self, task: Task, m: list[Any], outcome: object, took: float,
                  wait: float) -> list[Any]:
        """``outcome_row``, and the job's value kept when its task keeps results."""
        row = outcome_row(task, m, outcome, took, wait)
        if (self.keeping_results and task.identifier in self.keeping_results
                and row[RESULT_CODE] == RESULT_COMPLETED):
            self.values.append(self._value(m, outcome))
        return row

    def _value(self, m: list[Any], outcome: object) -> list[Any]:
        """The VALUES entry of a job's return value (see wire): its JSON text, or why it
        could not be kept."""
        entry: list[Any] = [m[JOB_ID], m[JOB_LEASE], m[JOB_TASK], None, None]
        try:
            entry[VALUE_JSON] = encode_json(m[JOB_TASK], outcome,
                                            self.max_value_bytes).decode()
        except PayloadError as exc:
            where = f" (field {exc.field})" if exc.field else ""
            entry[wire.VALUE_ERROR] = _safe_text(f"the return value was not kept{where}: "
                                                 f"{exc.reason}")
        return entry


class _JobPipe(asyncio.Protocol):
    def __init__(self, runner: _Runner, relay: ChildRelay | None, fd: int) -> None:
        self.runner = runner
        self.relay = relay
        self.fd = fd
        self.reader = wire.FrameReader()

    def data_received(self, data: bytes) -> None:
        for kind, body in self.reader.feed(data):
            if kind == wire.JOBS:
                slots, messages = orjson.loads(body)
                self.runner.accept(slots, messages)
            elif kind == wire.ENQUEUED and self.relay is not None:
                self.relay.answer(body)
            elif kind == wire.CANCEL:
                self.runner.cancel(orjson.loads(body))
            elif kind == wire.STOP:
                self.runner.stop()

    def connection_lost(self, exc: Exception | None) -> None:
        # The parent closed our pipe or died: nobody can take results any more.
        self.runner.stopping = True
        self.runner.done.set()
        if self.relay is not None:
            self.relay.lost()

    def pump_now(self) -> None:
        """What the pipe holds now, dispatched (a sync handler that holds the loop reads
        ``ctx.cancelled``); returns at once when it holds nothing."""
        self.pump(0.0)

    def pump(self, timeout: float) -> None:
        """Read the pipe from the loop's own thread while a sync handler blocks the loop
        (its ctx.add_job waits for the answer): what comes is dispatched as the loop would
        (nobody else reads meanwhile, the loop being blocked). Waits at most ``timeout``."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(0 if timeout <= 0 else max(1, int(timeout * 1000))):
            return
        try:
            data = os.read(self.fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self.data_received(data)
        else:
            self.connection_lost(None)


async def _serve(registry: TaskRegistry, instance: Instance, job_fd: int, result_fd: int,
                 sync_threads: int, started: mmap.mmap) -> None:
    from skivi.client import Client
    from skivi.engine.relay import ChildRelay

    cfg = instance.config
    w = cfg.worker
    loop = asyncio.get_running_loop()
    # ctx.add_job: through the parent's connection, or a pool of this child's own.
    relay = ChildRelay(loop, cfg) if cfg.database.child_enqueue == "parent" else None
    client = (Client(instance, relay=relay) if relay is not None
              else Client(instance, max_size=cfg.database.child_pool_size))
    runner = _Runner(registry, client, result_fd, sync_threads, started,
                     w.job_timeout, keeping_results=registry.keeping_results(w.store_results),
                     max_value_bytes=cfg.validation.max_payload_bytes)
    transport, pipe = await loop.connect_read_pipe(lambda: _JobPipe(runner, relay, job_fd),
                                                   os.fdopen(job_fd, "rb", buffering=0))
    if relay is not None:
        relay.connect(runner.write_on_loop, pipe.pump)
    _cancels.probe = pipe.pump_now
    runner._write(wire.encode_frame(wire.READY))
    await runner.done.wait()
    runner.flush()
    transport.close()


def _detach_handler_forks(*fds: int) -> None:
    """A process a handler forks (multiprocessing, a daemon, os.fork) must never speak for
    this child: its copies of the job and result pipes are pointed at /dev/null (so it can
    neither steal job frames nor write results, and holds no pipe end the parent waits on),
    and it leaves at once if it returns from the handler (see ``_Runner._still_ours``). It
    is in this child's process group, which the parent kills when the child ends."""

    def after_in_child() -> None:
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.dup2(devnull, fd)
        finally:
            os.close(devnull)

    os.register_at_fork(after_in_child=after_in_child)


def child_main(registry: TaskRegistry, instance: Instance, job_fd: int, result_fd: int,
               sync_threads: int, started: mmap.mmap,
               on_start: Callable[[], None] | None = None) -> int:
    """The child's body, run right after ``process.fork``; returns its exit code."""
    # The parent drives shutdown (STOP frames); a terminal's Ctrl-C or a process-group
    # SIGTERM must not kill children mid-job behind its back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _detach_handler_forks(job_fd, result_fd)
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    if on_start is not None:
        on_start()
    loop.run_until_complete(_serve(registry, instance, job_fd, result_fd, sync_threads,
                                   started))
    return 0
