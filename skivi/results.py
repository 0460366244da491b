"""What became of a job: ``get_result`` (and ``get_result_async``), ``wait_for`` (and
``wait_for_sync``).

Results are opt-in. A task keeps them with ``store_result=True`` (``skivi.task(...)``), or
every task does with ``worker.store_results``; the engine then stores, in the transaction
that finishes each job of such a task, its return value as JSON (or, for an exhausted job,
its last error), kept ``worker.result_retention`` seconds (table ``job_result``, migration
0006). Other jobs finish exactly as they did before results existed.

A job's state, looked up in one statement (``job_result_get.sql``)::

    waiting     in the queue, not claimed (and no failed attempt yet)
    running     claimed by an engine (running, or about to)
    failed      its last attempt failed and it waits for a retry: ``error`` says why
    completed   finished: ``value`` is the return value if its task keeps results
    exhausted   finished without success: ``error`` is the last error
    cancelled   cancelled (``skivi.cancel_jobs``): ``error`` is how its attempt ended, if it
                ran
    unknown     nowhere: no such job, or finished and nothing kept (a task without
                store_result and worker.history off), or pruned since

A value that JSON cannot carry (a ``set``, an object, NaN, U+0000, over
validation.max_payload_bytes) does not fail its job: the job completes and its result says
``completed`` with ``value`` None and ``error`` naming why the value was not kept.

``wait_for`` returns once the state is final (completed, exhausted, cancelled or unknown). It
listens on the ``<schema>:done`` channel, notified only when results are kept, so it wakes as
soon as the job's result is written; and it polls every ``poll_interval`` seconds whatever it hears,
so it works as well without notifications (a transaction-mode pooler, a lost NOTIFY,
``listen=False``) and for jobs whose end is kept elsewhere (history).

Reading results needs SELECT on the schema's job, job_result and job_history tables (the
worker role of ``skivi/sql/roles.sql``; the producer role has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from skivi.client import HasClient
from skivi.db import pool as dbpool
from skivi.db.connections import (
    AsyncConnectionLike,
    ConnectionLike,
    async_connection,
    sync_connection,
)
from skivi.db.queries import JobResultRow, done_channel_name, job_result_get
from skivi.errors import ResultTimeout, SkiviError, shown

__all__ = ["JobResult", "ResultState", "get_result", "get_result_async", "wait_for",
           "wait_for_sync"]

logger = logging.getLogger(__name__)

POLL_INTERVAL_DEFAULT = 1.0
"""Seconds ``wait_for`` waits between two looks at its job when no notification comes."""

WAIT_APPLICATION_NAME = "skivi-wait"


class ResultState(enum.StrEnum):
    """Where a job stands (see the module docstring)."""

    CANCELLED = "cancelled"
    COMPLETED = "completed"
    EXHAUSTED = "exhausted"
    FAILED = "failed"
    RUNNING = "running"
    UNKNOWN = "unknown"
    WAITING = "waiting"


_FINAL = frozenset({ResultState.CANCELLED, ResultState.COMPLETED, ResultState.EXHAUSTED,
                    ResultState.UNKNOWN})


@dataclass(frozen=True, slots=True)
class JobResult:
    """What became of one job, as ``get_result`` and ``wait_for`` return it."""

    job_id: int
    state: ResultState
    value: Any = None
    """The return value (decoded JSON) of a completed job whose task keeps results."""
    error: str | None = None
    """The last error (failed, exhausted), or why a completed job's value was not kept."""
    task_identifier: str | None = None
    attempts: int | None = None
    """Attempts so far (live and history rows; None for a kept result)."""
    finished_at: dt.datetime | None = None

    @property
    def done(self) -> bool:
        """Whether the state is final: completed, exhausted, cancelled or unknown."""
        return self.state in _FINAL


def _result(job_id: int, row: JobResultRow | None) -> JobResult:
    if row is None:
        return JobResult(job_id, ResultState.UNKNOWN)
    return JobResult(job_id, ResultState(row.state), row.value, row.error,
                     row.task_identifier, row.attempts, row.finished_at)


def _check_id(job_id: object) -> int:
    if not isinstance(job_id, int) or isinstance(job_id, bool):
        raise SkiviError(f"job_id must be an int (a Job's id), got {shown(job_id)}")
    return job_id


def get_result(target: HasClient, job_id: int, *,
               conn: ConnectionLike | None = None) -> JobResult:
    """Where job ``job_id`` stands, with its value or last error (see ``JobResult``).

    ``conn``: read through this connection (psycopg, or a SQLAlchemy Session or
    Connection), in its transaction; otherwise through the system's pool."""
    job_id = _check_id(job_id)
    client = target.client
    q = client.instance.queries
    if conn is not None:
        return _result(job_id, job_result_get.run(sync_connection(conn), q, id=job_id))
    with client.pooled_connection() as pooled:
        return _result(job_id, job_result_get.run(pooled, q, id=job_id))


async def get_result_async(target: HasClient, job_id: int, *,
                           conn: AsyncConnectionLike | None = None) -> JobResult:
    """The async twin of ``get_result``."""
    job_id = _check_id(job_id)
    client = target.client
    q = client.instance.queries
    if conn is not None:
        return _result(job_id, await job_result_get.run_async(await async_connection(conn),
                                                              q, id=job_id))
    async with client.async_pooled_connection() as pooled:
        return _result(job_id, await job_result_get.run_async(pooled, q, id=job_id))


def _timeout(job_id: int, timeout: float, last: JobResult) -> ResultTimeout:
    return ResultTimeout(f"job {job_id} did not finish within {timeout:g} s "
                         f"(last seen: {last.state})", last)


def _mentions(payload: str, job_id: int) -> bool:
    # '' means "look whatever the ids": they did not fit in the notification.
    return not payload or str(job_id) in payload.split(",")


async def wait_for(target: HasClient, job_id: int, *, timeout: float | None = None,
                   poll_interval: float = POLL_INTERVAL_DEFAULT,
                   listen: bool = True) -> JobResult:
    """Wait until job ``job_id`` is completed, exhausted, cancelled or unknown; its ``JobResult``.

    Raises ``skivi.ResultTimeout`` (a ``TimeoutError``; ``.last`` holds the last state
    seen) after ``timeout`` seconds (None: no limit). Woken by the engine's notification
    when the job's result is kept (``listen=False``: never listens), and looks again every
    ``poll_interval`` seconds in any case. One connection of its own while it listens."""
    job_id = _check_id(job_id)
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive seconds, got {poll_interval!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    client = target.client
    instance = client.instance
    listener: psycopg.AsyncConnection[Any] | None = None
    if listen:
        listener = await _listen_async(instance.database_url, instance.schema,
                                       instance.config.database.connect_timeout)
    try:
        while True:
            if listener is not None:
                last = _result(job_id, await job_result_get.run_async(
                    listener, instance.queries, id=job_id))
            else:
                last = await get_result_async(target, job_id)
            if last.done:
                return last
            wait = poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    assert timeout is not None
                    raise _timeout(job_id, timeout, last)
                wait = min(wait, remaining)
            if listener is None:
                await asyncio.sleep(wait)
                continue
            async for n in listener.notifies(timeout=wait):
                if _mentions(n.payload, job_id):
                    break
    finally:
        if listener is not None:
            await listener.close()


def wait_for_sync(target: HasClient, job_id: int, *, timeout: float | None = None,
                  poll_interval: float = POLL_INTERVAL_DEFAULT,
                  listen: bool = True) -> JobResult:
    """The blocking twin of ``wait_for``, for code without an event loop."""
    job_id = _check_id(job_id)
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive seconds, got {poll_interval!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    client = target.client
    instance = client.instance
    listener: psycopg.Connection[Any] | None = None
    if listen:
        listener = _listen(instance.database_url, instance.schema,
                           instance.config.database.connect_timeout)
    try:
        while True:
            if listener is not None:
                last = _result(job_id, job_result_get.run(listener, instance.queries,
                                                          id=job_id))
            else:
                last = get_result(target, job_id)
            if last.done:
                return last
            wait = poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    assert timeout is not None
                    raise _timeout(job_id, timeout, last)
                wait = min(wait, remaining)
            if listener is None:
                time.sleep(wait)
                continue
            for n in listener.notifies(timeout=wait):
                if _mentions(n.payload, job_id):
                    break
    finally:
        if listener is not None:
            listener.close()


def _listen_statement(schema: str) -> sql.Composed:
    return sql.SQL("listen {}").format(sql.Identifier(done_channel_name(schema)))


async def _listen_async(url: str, schema: str,
                        connect_timeout: float) -> psycopg.AsyncConnection[Any] | None:
    """An autocommit connection listening on the done channel, or None (then polling
    alone) if LISTEN cannot be had: the connection of a waiter is not the place to fail."""
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        conn = await dbpool.connect_async(url, application_name=WAIT_APPLICATION_NAME,
                                          connect_timeout=connect_timeout)
        await conn.execute(_listen_statement(schema))
        return conn
    except psycopg.Error as exc:
        logger.warning("cannot listen for finished jobs (%s); polling instead", exc,
                       extra={"action": "listen_failed"})
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
        return None


def _listen(url: str, schema: str, connect_timeout: float) -> psycopg.Connection[Any] | None:
    """The blocking twin of ``_listen_async``."""
    conn: psycopg.Connection[Any] | None = None
    try:
        conn = dbpool.connect(url, application_name=WAIT_APPLICATION_NAME,
                              connect_timeout=connect_timeout)
        conn.execute(_listen_statement(schema))
        return conn
    except psycopg.Error as exc:
        logger.warning("cannot listen for finished jobs (%s); polling instead", exc,
                       extra={"action": "listen_failed"})
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
        return None

