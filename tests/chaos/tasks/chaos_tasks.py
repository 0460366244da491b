"""Handlers of the chaos test, loaded by its engines from this directory.

Every handler first records its execution in the ledger table ``chaos_ledger.exec``, BEFORE
it does anything else, through a connection of its own (autocommit, one per child process,
opened on first use: a forked child never shares it). Each row says which job ran, in which
process (pid) under which engine (ppid), on which attempt and when, and which claim held the
job at that moment (the job row's locked_by, lease, attempts and max_attempts): an execution whose
engine no longer holds the job, or whose attempt is not the row's, ran on a claim already rescued
(except a keyed job superseded while it ran, whose attempts are raised to its max_attempts).

A ledger write that fails (PostgreSQL restarting, a terminated backend) is retried on a new
connection with the same token, so a write whose commit was lost and is replayed is stored
once; after two minutes it gives up and the handler raises (the job then simply fails).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import psycopg

from skivi.registry import task
from skivi.retry import Backoff

LEDGER_URL = os.environ.get("CHAOS_LEDGER_URL", "")
LEDGER_GIVE_UP = 120.0
FAST = Backoff(factor=0.01, max_delay=1.0)
FLAKY_FAILURES = 2  # a flaky job raises on its first two attempts, then succeeds

_INSERT = """
insert into chaos_ledger.exec (token, job_id, task, pid, ppid, attempt, at, holder, holder_lease,
                               holder_attempts, holder_max_attempts)
select %(token)s, %(job)s, %(task)s, %(pid)s, %(ppid)s, %(attempt)s, %(at)s, j.locked_by, j.lease,
       j.attempts, j.max_attempts
from (select 1) one left join skivi.job_running j on j.id = %(job)s
on conflict (token) do nothing
"""

_conn: psycopg.Connection[Any] | None = None


def record(ctx: Any) -> None:
    """Write this execution to the ledger before any work; retried until it lands."""
    global _conn
    params = {"token": uuid.uuid4(), "job": ctx.job.id, "task": ctx.job.task_identifier,
              "pid": os.getpid(), "ppid": os.getppid(), "attempt": ctx.job.attempts,
              "at": time.time()}
    deadline = time.monotonic() + LEDGER_GIVE_UP
    delay = 0.02
    while True:
        try:
            if _conn is None or _conn.closed:
                _conn = psycopg.connect(LEDGER_URL, autocommit=True, connect_timeout=5,
                                        application_name="chaos-ledger")
            _conn.execute(_INSERT, params)
            return
        except psycopg.OperationalError:
            if _conn is not None:
                _conn.close()
                _conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _seconds(ctx: Any) -> float:
    return float(ctx.job.payload.get("ms", 0)) / 1000.0


def work(ctx: Any) -> None:
    record(ctx)
    time.sleep(_seconds(ctx))


async def work_async(ctx: Any) -> None:
    record(ctx)
    await asyncio.sleep(_seconds(ctx))


def flaky(ctx: Any) -> None:
    record(ctx)
    if ctx.job.attempts <= FLAKY_FAILURES:
        raise RuntimeError(f"flaky job failing on purpose (attempt {ctx.job.attempts})")
    time.sleep(_seconds(ctx))


def poison(ctx: Any) -> None:
    record(ctx)
    os._exit(70)


TASKS = {
    "work": task(work, backoff=FAST),
    "work_async": task(work_async, backoff=FAST),
    "flaky": task(flaky, backoff=FAST),
    "poison": task(poison, backoff=FAST),
}
