"""``drain``: run every runnable job in the calling process, as the engine would.

The same statements as the engine, and the same decisions: the claim is ``job_claim.sql``
(so priority, run_at, serial queues, ``worker.forbidden_flags``, ``worker.queues`` and
``worker.unknown_tasks = "skip"`` select jobs as they do for an engine), the result rows are
built by the child's own ``outcome_row`` / ``failure_row`` / ``no_handler_row`` (backoff,
partial success, no handler), and they are written by ``job_complete_many.sql`` /
``job_fail_many.sql``, which decide retry against exhaustion (and ``superseded``) in the
database. A drain registers an engine identity of its own for the claims
(``engine_register.sql``), so a real engine's rescuer leaves its jobs alone while it runs,
and removes it at the end.

One job at a time, claimed one by one, so a follow-up job a handler enqueues (with
``ctx.add_job``, a typed task's ``defer``, or on its own connection) runs in the same drain
when its turn comes, in the engine's order, up to ``max_jobs``.

What differs from an engine, on purpose: handlers run in this process (a sync handler
on this thread; an async one on this event loop), so no process isolation and no
timeout for sync handlers (the engine kills their child; a drain cannot); async handlers'
timeouts apply. ``KeyboardInterrupt`` and ``asyncio.CancelledError`` stop the drain (the job
in hand goes back unstarted) instead of failing the job: Ctrl-C must stop a test run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from skivi.client import HasClient, add_jobs, add_jobs_async
from skivi.db import pool as dbpool
from skivi.db.queries import (
    CLAIM_MESSAGE,
    COMPLETED_ID,
    COMPLETED_LEASE,
    FAILED_OUTCOME,
    FAILED_REASON,
    FAILED_RUN_AT,
    Queries,
    engine_deregister,
    engine_register,
    job_advance,
    job_claim,
    job_complete_many,
    job_fail_many,
    job_release_many,
    job_result_store_many,
)
from skivi.engine.child import (
    JobContext,
    JobInfo,
    failure_row,
    no_handler_row,
    outcome_row,
    queue_wait,
    timeout_text,
)
from skivi.engine.wire import (
    JOB_ATTEMPTS,
    JOB_ID,
    JOB_LEASE,
    JOB_PAYLOAD,
    JOB_TASK,
    RESULT_ATTEMPT,
    RESULT_CODE,
    RESULT_COMPLETED,
    RESULT_DELAY,
    RESULT_ERROR,
    RESULT_FINAL,
    RESULT_ID,
    RESULT_LEASE,
    RESULT_PAYLOAD,
    RESULT_RUN_SECONDS,
    RESULT_TRACEBACK,
)
from skivi.errors import DrainLimitReached, PayloadError, SkiviError
from skivi.job import Job, JobSpec
from skivi.payload import encode as encode_json
from skivi.registry import Task, TaskRegistry

__all__ = ["MAX_JOBS_DEFAULT", "JobRun", "drain", "drain_async"]

logger = logging.getLogger(__name__)

MAX_JOBS_DEFAULT = 1000
"""Jobs one drain runs at most before it raises ``DrainLimitReached``."""

# The drain's engine row is never heartbeaten (it runs handlers on its only thread), so its
# lease is long: a slow handler must not make other engines declare it dead. Its liveness
# lock still tells them at once if this process dies.
DRAIN_LEASE_TIMEOUT = 3600.0
"""The drain's engine row never heartbeats: a lease this long keeps a real engine's rescuer
off the job it runs (a drain is for tests, where a job runs well within the hour)."""


@dataclass(frozen=True, slots=True)
class JobRun:
    """What became of one job a drain (or ``immediate``) ran."""

    job_id: int
    task: str
    payload: Any
    """The payload the handler was given."""
    attempt: int
    """This attempt's number (1 for the first)."""
    outcome: str
    """``completed``; ``failed`` (it runs again at ``retry_at``); ``exhausted`` (no retry:
    see ``reason``)."""
    error: str | None = None
    """The failure as stored in ``last_error``."""
    traceback: str | None = None
    retry_at: dt.datetime | None = None
    reason: str | None = None
    """Why an exhausted job was: ``max_attempts``, ``no_handler``, ``superseded``."""
    value: Any = None
    """What the handler returned (None when it raised)."""
    remaining: Any = None
    """After a partial success: the payload items kept for the retry."""
    seconds: float = 0.0
    """How long the handler ran."""

    @property
    def completed(self) -> bool:
        return self.outcome == "completed"


class _ConnContext(JobContext):
    """A handler's context in a drain given ``conn=``: follow-ups are written on that
    connection too, so they belong to the caller's transaction and the drain sees them."""

    __slots__ = ("_conn", "_sync")

    def __init__(self, job: JobInfo, target: HasClient, conn: Any, sync: bool) -> None:
        super().__init__(job, target.client)
        self._conn = conn
        self._sync = sync

    def add_job(self, task: str, payload: Any = None, **options: Any) -> Job:
        return self.add_jobs([JobSpec.coerce({"task": task, "payload": payload,
                                              **options})])[0]

    async def add_job_async(self, task: str, payload: Any = None, **options: Any) -> Job:
        return (await self.add_jobs_async([JobSpec.coerce({"task": task, "payload": payload,
                                                           **options})]))[0]

    def add_jobs(self, specs: Iterable[JobSpec | Mapping[str, Any]]) -> list[Job]:
        if self._sync:
            return add_jobs(self._client, specs, conn=self._conn)
        return super().add_jobs(specs)  # an AsyncConnection cannot serve a sync call

    async def add_jobs_async(self, specs: Iterable[JobSpec | Mapping[str, Any]]
                             ) -> list[Job]:
        if self._sync:
            return add_jobs(self._client, specs, conn=self._conn)
        return await add_jobs_async(self._client, specs, conn=self._conn)


class _Db:
    """The drain's statements, on a sync or an async connection: one code path for both
    drains (a sync statement inside a coroutine just blocks, which a test can afford)."""

    def __init__(self, conn: Any, q: Queries, sync: bool) -> None:
        self.conn, self.q, self.sync = conn, q, sync

    async def run(self, statement: Any, **params: Any) -> Any:
        if self.sync:
            return statement.run(self.conn, self.q, **params)
        return await statement.run_async(self.conn, self.q, **params)


@dataclass(slots=True)
class _Drain:
    target: HasClient
    db: _Db
    registry: TaskRegistry
    conn_given: bool
    max_jobs: int
    tasks: list[str] | None
    queues: list[str] | None
    run_scheduled: bool
    engine: int = 0

    async def run(self) -> list[JobRun]:
        config = self.target.client.instance.config
        w = config.worker
        from skivi import __version__

        self.engine = await self.db.run(
            engine_register, hostname=socket.gethostname(), pid=os.getpid(),
            version=__version__, lease_timeout=DRAIN_LEASE_TIMEOUT, processes=0,
            concurrency=1)
        runs: list[JobRun] = []
        try:
            while True:
                if self.run_scheduled:
                    await self.db.run(job_advance, tasks=self.tasks, queues=self.queues)
                rows = await self.db.run(
                    job_claim, engine=self.engine, limit=1, serial_limit=1,
                    max_bytes=w.batch_max_bytes, tasks=self.tasks,
                    forbidden=list(w.forbidden_flags) or None, queues=self.queues)
                if not rows:
                    return runs
                m: list[Any] = orjson.loads(rows[0][CLAIM_MESSAGE])
                if len(runs) >= self.max_jobs:
                    await self._release(m)
                    raise DrainLimitReached(
                        f"drain ran {len(runs)} jobs (max_jobs) and more are runnable, "
                        f"the next of task {m[JOB_TASK]!r}: a task that enqueues itself "
                        "forever? raise max_jobs if they are expected", runs)
                m.append(0)  # its slot, as a child appends it
                try:
                    run = await self._one(m, config.worker.job_timeout)
                except BaseException:
                    await self._release(m)
                    raise
                runs.append(run)
                logger.debug("drain: job %d (%s) %s", run.job_id, run.task, run.outcome,
                             extra={"action": "drain_job", "job_id": run.job_id,
                                    "task": run.task, "outcome": run.outcome})
        finally:
            await self.db.run(engine_deregister, engine=self.engine)

    async def _release(self, m: list[Any]) -> None:
        await self.db.run(job_release_many, engine=self.engine, ids=f"{{{m[JOB_ID]}}}",
                          leases=f"{{{m[JOB_LEASE]}}}")

    def _context(self, m: list[Any]) -> JobContext:
        if self.conn_given:
            return _ConnContext(JobInfo(m), self.target, self.db.conn, self.db.sync)
        return JobContext(JobInfo(m), self.target.client)

    async def _one(self, m: list[Any], default_timeout: float | None) -> JobRun:
        task = self.registry.get(m[JOB_TASK])
        value: Any = None
        started = time.perf_counter()
        if task is None:
            row = no_handler_row(m)
        else:
            row, value = await self._call(task, m, default_timeout)
        return await self._finish(m, row, value, time.perf_counter() - started)

    async def _call(self, task: Task, m: list[Any], default_timeout: float | None
                    ) -> tuple[list[Any], Any]:
        """Run the handler as the child does (``_call_sync`` / ``_run_async`` /
        ``_settle``); its result row, and its return value."""
        timeout = task.timeout if task.timeout is not None else default_timeout
        wait = queue_wait(m)
        started = time.perf_counter()
        try:
            outcome = task.handler(self._context(m))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failure is data
            return failure_row(task, m, exc, time.perf_counter() - started, wait), None
        if outcome is not None and inspect.isawaitable(outcome):
            try:
                if timeout is not None:
                    async with asyncio.timeout(timeout):
                        outcome = await outcome
                else:
                    outcome = await outcome
            except TimeoutError as exc:
                return failure_row(task, m, exc, time.perf_counter() - started, wait,
                                   text=timeout_text(timeout)), None
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - a failure is data
                return failure_row(task, m, exc, time.perf_counter() - started, wait), None
        took = time.perf_counter() - started
        row = outcome_row(task, m, outcome, took, wait)
        return row, outcome if row[RESULT_CODE] == RESULT_COMPLETED else None

    async def _finish(self, m: list[Any], row: list[Any], value: Any,
                      took: float) -> JobRun:
        """Write the result as the completer does; what the database recorded."""
        base = {"job_id": m[JOB_ID], "task": m[JOB_TASK], "payload": m[JOB_PAYLOAD],
                "attempt": m[JOB_ATTEMPTS], "seconds": row[RESULT_RUN_SECONDS] or took}
        history = self.target.client.instance.config.worker.history
        if row[RESULT_CODE] == RESULT_COMPLETED:
            done = await self.db.run(
                job_complete_many, engine=self.engine, ids=f"{{{row[RESULT_ID]}}}",
                leases=f"{{{row[RESULT_LEASE]}}}", history=history)
            if not any((d[COMPLETED_ID], d[COMPLETED_LEASE]) == (row[RESULT_ID],
                                                                 row[RESULT_LEASE])
                       for d in done):
                raise SkiviError(f"job {row[RESULT_ID]} was taken from the drain while it "
                                 "ran (rescued by another engine?)")
            if m[JOB_TASK] in self._keeping():
                await self._keep(m, "completed", value, None)
            return JobRun(outcome="completed", value=value, **base)
        answer = await self.db.run(
            job_fail_many, engine=self.engine, ids=[row[RESULT_ID]],
            leases=[row[RESULT_LEASE]], errors=[row[RESULT_ERROR]],
            delays=[float(row[RESULT_DELAY])], finals=[row[RESULT_FINAL]],
            payloads=[row[RESULT_PAYLOAD]], attempts=[row[RESULT_ATTEMPT]],
            tracebacks=[row[RESULT_TRACEBACK]])
        if not answer:
            raise SkiviError(f"job {row[RESULT_ID]} was taken from the drain while it ran "
                             "(rescued by another engine?)")
        recorded = answer[0]
        if recorded[FAILED_OUTCOME] == "exhausted" and m[JOB_TASK] in self._keeping():
            await self._keep(m, "exhausted", None, row[RESULT_ERROR])
        remaining = (orjson.loads(row[RESULT_PAYLOAD]) if row[RESULT_PAYLOAD] is not None
                     else None)
        return JobRun(outcome=recorded[FAILED_OUTCOME], error=row[RESULT_ERROR],
                      traceback=row[RESULT_TRACEBACK], retry_at=recorded[FAILED_RUN_AT],
                      reason=recorded[FAILED_REASON], remaining=remaining, **base)


    def _keeping(self) -> frozenset[str]:
        return self.registry.keeping_results(
            self.target.client.instance.config.worker.store_results)

    async def _keep(self, m: list[Any], outcome: str, value: Any, error: str | None) -> None:
        """Keep a job's result as the completer does (job_result_store_many.sql)."""
        text: str | None = None
        if outcome == "completed":
            try:
                text = encode_json(m[JOB_TASK], value, self.target.client.instance.config
                                   .validation.max_payload_bytes).decode()
            except PayloadError as exc:
                error = f"the return value was not kept: {exc.reason}"
        await self.db.run(job_result_store_many, ids=[m[JOB_ID]], tasks=[m[JOB_TASK]],
                          outcomes=[outcome], vals=[text], errors=[error],
                          notice=str(m[JOB_ID]))


def _filters(target: HasClient, registry: TaskRegistry, tasks: Iterable[object] | None,
             queues: Iterable[str] | None) -> tuple[list[str] | None, list[str] | None]:
    w = target.client.instance.config.worker
    only: list[str] | None = None
    if tasks is not None:
        only = sorted({t if isinstance(t, str) else str(getattr(t, "identifier", t))
                       for t in tasks})
    if w.unknown_tasks == "skip":
        known = set(registry.identifiers())
        only = sorted(known if only is None else known & set(only))
    chosen = list(queues) if queues is not None else (
        list(w.queues) if w.queues is not None else None)
    return only, chosen


def drain(system: HasClient, *, conn: psycopg.Connection[Any] | None = None,
          max_jobs: int = MAX_JOBS_DEFAULT, tasks: Iterable[object] | None = None,
          queues: Iterable[str] | None = None, run_scheduled: bool = False) -> list[JobRun]:
    """Run every runnable job of ``system`` here and now, as its engine would, follow-up
    jobs included; what became of each, in the order they ran.

    ``conn``: claim, run and finish on this connection (in its transaction: a test's
    rolled-back one, say), follow-ups written with ``ctx.add_job`` too; without it, on a
    connection of the drain's own (each statement commits). ``tasks`` (identifiers or typed
    tasks) and ``queues``: only these (default: every task, the configured
    ``worker.queues``). ``run_scheduled``: jobs whose run_at is in the future, retries
    waiting out their backoff included, are made runnable at once (each time the drain
    looks for work), so one drain takes a failing job to exhaustion. Raises
    ``skivi.DrainLimitReached`` (holding the runs) when ``max_jobs`` jobs ran and more are
    runnable. Called from a running event loop, it refuses: use ``drain_async``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SkiviError("drain() was called inside a running event loop, which its async "
                         "handlers need: use await skivi.testing.drain_async(...)")
    instance = system.client.instance
    registry = instance.registry()
    only, chosen = _filters(system, registry, tasks, queues)

    def run(c: psycopg.Connection[Any]) -> list[JobRun]:
        job = _Drain(system, _Db(c, instance.queries, sync=True), registry, conn is not None,
                     max_jobs, only, chosen, run_scheduled)
        return asyncio.run(job.run())

    if conn is not None:
        return run(conn)
    with dbpool.connect(instance.database_url, autocommit=True,
                        application_name="skivi-drain",
                        connect_timeout=instance.config.database.connect_timeout) as own:
        return run(own)


async def drain_async(system: HasClient, *,
                      conn: psycopg.AsyncConnection[Any] | None = None,
                      max_jobs: int = MAX_JOBS_DEFAULT, tasks: Iterable[object] | None = None,
                      queues: Iterable[str] | None = None,
                      run_scheduled: bool = False) -> list[JobRun]:
    """The async twin of ``drain``, for tests running in an event loop: async handlers run
    on that loop (``conn``: a psycopg ``AsyncConnection``)."""
    instance = system.client.instance
    registry = instance.registry()
    only, chosen = _filters(system, registry, tasks, queues)

    async def run(c: psycopg.AsyncConnection[Any]) -> list[JobRun]:
        job = _Drain(system, _Db(c, instance.queries, sync=False), registry,
                     conn is not None, max_jobs, only, chosen, run_scheduled)
        return await job.run()

    if conn is not None:
        return await run(conn)
    own = await dbpool.connect_async(
        instance.database_url, autocommit=True, application_name="skivi-drain",
        connect_timeout=instance.config.database.connect_timeout)
    async with own:
        return await run(own)
