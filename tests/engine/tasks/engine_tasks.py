"""Handlers used by the engine tests, loaded by the engine from this directory.

Every handler first appends a line to the ledger (SKIVI_TEST_LEDGER): job id, pid, attempt,
event and time, so a test can tell which process ran what, how often and when. Lines are
short and written with one O_APPEND write, so concurrent writers never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from skivi.registry import task
from skivi.retry import Backoff

LEDGER = os.environ.get("SKIVI_TEST_LEDGER", "/dev/null")
FAST = Backoff(factor=0.01)


def record(ctx: Any, event: str = "start") -> None:
    line = f"{ctx.job.id} {os.getpid()} {ctx.job.attempts} {event} {time.time():.6f}\n"
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def noop(ctx: Any) -> None:
    record(ctx)


def sleep(ctx: Any) -> None:
    record(ctx)
    time.sleep(float(ctx.job.payload.get("s", 0.1)))
    record(ctx, "end")


async def async_sleep(ctx: Any) -> None:
    record(ctx)
    await asyncio.sleep(float(ctx.job.payload.get("s", 0.1)))
    record(ctx, "end")


def fail(ctx: Any) -> None:
    record(ctx)
    raise ValueError(f"boom on attempt {ctx.job.attempts}")


def poison(ctx: Any) -> None:
    record(ctx)
    os._exit(1)


def batch(ctx: Any) -> list[Any]:
    record(ctx)
    return [ValueError(f"item {x} failed") if x < 0 else x for x in ctx.job.payload]


def spawn(ctx: Any) -> None:
    record(ctx)
    ctx.add_job("noop", {"parent": ctx.job.id})


TASKS = {
    "async_sleep": async_sleep,
    "batch": task(batch, backoff=FAST),
    "fail": task(fail, backoff=FAST),
    "noop": noop,
    "poison": task(poison, backoff=FAST),
    "sleep": sleep,
    "slow_fail": fail,
    "spawn": spawn,
}


def hang(ctx: Any) -> None:
    record(ctx)
    time.sleep(3600)


TASKS["hang"] = task(hang, timeout=0.5, backoff=FAST)


def cron_tick(ctx: Any) -> None:
    record(ctx, "tick:" + ctx.job.payload["_cron"]["ts"].replace(" ", "T"))


TASKS["cron_tick"] = cron_tick
