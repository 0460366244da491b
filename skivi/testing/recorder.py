"""``capture`` and ``immediate``: what a system enqueues inside a block, seen by a test.

Both install a ``skivi.client.Interceptor`` on the system's client for the block, so they
see every enqueue made through that system: ``skivi.add_job``/``add_jobs`` and their async
twins, typed tasks' ``defer`` and ``defer_many``, and the ``ctx.add_job`` of handlers that
``skivi.testing.drain`` runs. They see each spec once it is checked (a refused payload
raises as it would, and is not recorded), with its payload as the database would store it.
They do not see jobs enqueued from SQL, or through another system object, or by an engine
process's handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson

from skivi.client import HasClient
from skivi.engine.child import JobContext, JobInfo, error_message, error_traceback
from skivi.errors import SkiviError
from skivi.job import MAX_ATTEMPTS_DEFAULT, PRIORITY_DEFAULT, EnqueueOutcome, Job, JobSpec
from skivi.payload import encode
from skivi.testing.drainer import JobRun

__all__ = ["IMMEDIATE_DEPTH_MAX", "CapturedJob", "CapturedJobs", "capture", "immediate"]

logger = logging.getLogger(__name__)

IMMEDIATE_DEPTH_MAX = 100
"""How deep ``immediate`` follows tasks that enqueue tasks before it refuses (a loop)."""

_NO_LIMIT = 1 << 62


@dataclass(frozen=True, slots=True)
class CapturedJob:
    """One job enqueued inside a ``capture`` block."""

    spec: JobSpec
    """What was asked for: the task, the payload (as stored: JSON, decoded) and options."""
    job: Job | None
    """With ``write=False``, the job the enqueue returned (not in the database: its id is
    negative); None when the job was written (the call returned it as stored)."""

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def payload(self) -> Any:
        return self.spec.payload


class CapturedJobs(Sequence[CapturedJob]):
    """The jobs enqueued inside a ``capture`` block, in order."""

    __slots__ = ("_jobs", "_lock")

    def __init__(self) -> None:
        self._jobs: list[CapturedJob] = []
        self._lock = threading.Lock()

    @overload
    def __getitem__(self, index: int) -> CapturedJob: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[CapturedJob]: ...

    def __getitem__(self, index: int | slice) -> CapturedJob | Sequence[CapturedJob]:
        return self._jobs[index]

    def __len__(self) -> int:
        return len(self._jobs)

    def __repr__(self) -> str:
        return f"CapturedJobs({[(j.task, j.payload) for j in self._jobs]!r})"

    def enqueued(self, task: object = None, /, **payload: Any) -> list[CapturedJob]:
        """The jobs of ``task`` (an identifier or a typed task; None: any) whose payload
        has these fields with these values (compared as stored: ``when=datetime(...)``
        matches its ISO text); empty when none did, so ``assert jobs.enqueued(...)``
        reads as it should. Fields not named are not compared."""
        identifier = task if task is None or isinstance(task, str) else str(
            getattr(task, "identifier", task))
        wanted = orjson.loads(encode(str(identifier), payload, _NO_LIMIT)) if payload else {}
        return [j for j in self._jobs
                if (identifier is None or j.task == identifier)
                and (not wanted or (isinstance(j.payload, dict)
                                    and all(k in j.payload and j.payload[k] == v
                                            for k, v in wanted.items())))]

    def tasks(self) -> list[str]:
        """The task of each job, in order."""
        return [j.task for j in self._jobs]

    def clear(self) -> None:
        with self._lock:
            self._jobs.clear()

    def _add(self, specs: list[JobSpec], jobs: Sequence[Job | None]) -> None:
        with self._lock:
            self._jobs.extend(CapturedJob(s, j) for s, j in zip(specs, jobs, strict=True))


_fake_ids = itertools.count(-1, -1)


def _drafted(spec: JobSpec) -> Job:
    """The job an enqueue that wrote nothing returns: the spec as the database would have
    stored it, with an id of its own that no database job has (negative)."""
    now = dt.datetime.now(dt.UTC)
    return Job(next(_fake_ids), spec.task, spec.payload, spec.queue_name,
               PRIORITY_DEFAULT if spec.priority is None else spec.priority,
               spec.run_at or now, 0,
               MAX_ATTEMPTS_DEFAULT if spec.max_attempts is None else spec.max_attempts,
               None, spec.job_key, tuple(spec.flags or ()), None, None, 0, now, now,
               EnqueueOutcome.INSERTED)


class _Recorder:
    def __init__(self, jobs: CapturedJobs, write: bool) -> None:
        self.jobs = jobs
        self.write = write

    def intercept(self, specs: list[JobSpec]) -> list[Job] | None:
        if self.write:
            self.jobs._add(specs, [None] * len(specs))  # the call writes them
            return None
        drafted = [_drafted(s) for s in specs]
        self.jobs._add(specs, drafted)
        return drafted

    async def intercept_async(self, specs: list[JobSpec]) -> list[Job] | None:
        return self.intercept(specs)


@contextlib.contextmanager
def capture(system: HasClient, *, write: bool = True) -> Iterator[CapturedJobs]:
    """Record the jobs ``system`` enqueues inside the block::

        with skivi.testing.capture(system, write=False) as jobs:
            signup("a@b.c")
        assert jobs.enqueued("send_email", to="a@b.c")

    ``write=True`` (default): the jobs are written as usual and recorded too;
    ``write=False``: nothing is written, the calls return jobs built from what was asked
    (negative ids). Blocks nest; the innermost ``write=False`` one answers.
    """
    jobs = CapturedJobs()
    recorder = _Recorder(jobs, write)
    interceptors = system.client.interceptors
    interceptors.append(recorder)
    try:
        yield jobs
    finally:
        interceptors.remove(recorder)


class _Immediate:
    def __init__(self, system: HasClient, raise_errors: bool, max_depth: int) -> None:
        self.system = system
        self.registry = system.client.instance.registry()
        self.raise_errors = raise_errors
        self.max_depth = max_depth
        self.depth = 0
        self.runs: list[JobRun] = []

    def _begin(self, spec: JobSpec) -> tuple[Any, list[Any], Job]:
        task = self.registry.get(spec.task)
        if task is None:
            raise SkiviError(f"immediate: no handler for task {spec.task!r} in this system")
        if self.depth >= self.max_depth:
            raise SkiviError(f"immediate: task {spec.task!r} enqueued at depth "
                             f"{self.depth} (max_depth): a task that enqueues itself forever?")
        job = _drafted(spec)
        now = job.created_at.isoformat()
        message = [job.id, 0, job.task_identifier, job.payload, job.queue_name, job.priority,
                   job.run_at.isoformat(), 1, job.max_attempts, job.key,
                   list(job.flags) or None, now, 0]
        return task, message, job

    def _settled(self, message: list[Any], job: Job, outcome: Any, started: float,
                 exc: BaseException | None) -> None:
        seconds = time.perf_counter() - started
        if exc is None and isinstance(outcome, list) and any(
                isinstance(x, BaseException) for x in outcome):
            exc = next(x for x in outcome if isinstance(x, BaseException))
        if exc is None:
            self.runs.append(JobRun(job.id, job.task_identifier, job.payload, 1, "completed",
                                    value=outcome, seconds=seconds))
            return
        self.runs.append(JobRun(job.id, job.task_identifier, job.payload, 1, "failed",
                                error=error_message(exc), traceback=error_traceback(exc),
                                seconds=seconds))
        if self.raise_errors:
            raise exc

    def intercept(self, specs: list[JobSpec]) -> list[Job] | None:
        jobs = []
        for spec in specs:
            task, message, job = self._begin(spec)
            self.depth += 1
            started = time.perf_counter()
            try:
                outcome = task.handler(JobContext(JobInfo(message), self.system.client))
                if outcome is not None and inspect.isawaitable(outcome):
                    outcome = _run_awaitable(outcome)
            except Exception as exc:  # noqa: BLE001 - recorded, raised again if asked
                self._settled(message, job, None, started, exc)
            else:
                self._settled(message, job, outcome, started, None)
            finally:
                self.depth -= 1
            jobs.append(job)
        return jobs

    async def intercept_async(self, specs: list[JobSpec]) -> list[Job] | None:
        jobs = []
        for spec in specs:
            task, message, job = self._begin(spec)
            self.depth += 1
            started = time.perf_counter()
            try:
                outcome = task.handler(JobContext(JobInfo(message), self.system.client))
                if outcome is not None and inspect.isawaitable(outcome):
                    outcome = await outcome
            except Exception as exc:  # noqa: BLE001 - recorded, raised again if asked
                self._settled(message, job, None, started, exc)
            else:
                self._settled(message, job, outcome, started, None)
            finally:
                self.depth -= 1
            jobs.append(job)
        return jobs


def _run_awaitable(awaitable: Awaitable[Any]) -> Any:
    """Await from sync code: on a loop of its own, or, when this thread runs one already
    (a sync ``defer`` inside an async test), on a loop in a thread of its own."""

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    result: list[Any] = []
    failure: list[BaseException] = []

    def in_thread() -> None:
        try:
            result.append(asyncio.run(wait()))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=in_thread, name="skivi-immediate")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


@contextlib.contextmanager
def immediate(system: HasClient, *, raise_errors: bool = True,
              max_depth: int = IMMEDIATE_DEPTH_MAX) -> Iterator[list[JobRun]]:
    """TESTING ONLY: inside the block, every job ``system`` enqueues runs at once, in the
    caller, and nothing is written to the database::

        with skivi.testing.immediate(system) as runs:
            send_email.defer(to="a@b.c")      # runs send_email("a@b.c") now
        assert runs[0].completed

    For unit tests of code that enqueues, without a worker: one attempt, now, whatever the
    job's ``run_at``; no retries, no job keys, no serial queues, no timeout (for the
    engine's semantics, let the jobs be written and use ``drain``). A failing handler's
    exception propagates out of the enqueue call (``raise_errors=False``: it is only
    recorded); the handler's return value is in its run. Jobs the handler enqueues run in
    turn, depth first, at most ``max_depth`` deep. An async handler enqueued from sync code
    runs on an event loop of its own (in a thread when the caller runs a loop already).
    """
    runner = _Immediate(system, raise_errors, max_depth)
    interceptors = system.client.interceptors
    interceptors.append(runner)
    try:
        yield runner.runs
    finally:
        interceptors.remove(runner)
