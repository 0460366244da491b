"""Handlers used by the engine tests, loaded by the engine from this directory.

Every handler first appends a line to the ledger (SKIVI_TEST_LEDGER): job id, pid, attempt,
event and time, so a test can tell which process ran what, how often and when. Lines are
short and written with one O_APPEND write, so concurrent writers never interleave.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import time
from typing import Any

import orjson

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


def fail_when_told(ctx: Any) -> None:
    """Runs until the file named by payload["path"] exists (at most 60 s), then fails."""
    record(ctx)
    deadline = time.monotonic() + 60
    while not os.path.exists(ctx.job.payload["path"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    raise RuntimeError("told to fail")


def spawn(ctx: Any) -> None:
    record(ctx)
    ctx.add_job("noop", {"parent": ctx.job.id})


def _specs(ctx: Any) -> list[dict[str, Any]]:
    """The follow-ups payload["specs"] asks for (run_at as ISO text), once the file named by
    payload["wait_for"] (if any) exists (at most 60 s)."""
    wait = ctx.job.payload.get("wait_for")
    deadline = time.monotonic() + 60
    while wait and not os.path.exists(wait) and time.monotonic() < deadline:
        time.sleep(0.02)
    specs = [dict(s) for s in ctx.job.payload["specs"]]
    for s in specs:
        if "run_at" in s:
            s["run_at"] = dt.datetime.fromisoformat(s["run_at"])
    return specs


def _keep(ctx: Any, jobs: list[Any]) -> None:
    """The Jobs ctx.add_job returned, as JSON, in the file named by payload["out"]."""
    path = ctx.job.payload["out"]
    with open(path + ".tmp", "wb") as f:
        f.write(orjson.dumps([dataclasses.asdict(j) for j in jobs]))
    os.replace(path + ".tmp", path)


def add_as_told(ctx: Any) -> None:
    """Enqueues the follow-ups of payload["specs"] with ctx.add_job; keeps what it returns."""
    record(ctx)
    _keep(ctx, [ctx.add_job(**s) for s in _specs(ctx)])


async def add_as_told_async(ctx: Any) -> None:
    """The twin of add_as_told, with ctx.add_job_async (the specs read in a thread: they may
    wait for a file)."""
    record(ctx)
    _keep(ctx, [await ctx.add_job_async(**s) for s in await asyncio.to_thread(_specs, ctx)])


TASKS = {
    "add_as_told": add_as_told,
    "add_as_told_async": add_as_told_async,
    "async_sleep": async_sleep,
    "batch": task(batch, backoff=FAST),
    "fail": task(fail, backoff=FAST),
    "fail_when_told": task(fail_when_told, backoff=FAST),
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


# -- the process model (tests/engine/test_process_model.py) ----------------------------------

async def async_poison(ctx: Any) -> None:
    record(ctx)
    await asyncio.sleep(float(ctx.job.payload.get("s", 0)))
    os._exit(1)


def fork_both(ctx: Any) -> None:
    """Forks and returns in both copies; the copy also lingers first, holding every pipe."""
    record(ctx)
    if os.fork() == 0:
        time.sleep(float(ctx.job.payload.get("linger", 0)))


def daemon(ctx: Any) -> None:
    """Starts a process in a session of its own that keeps the inherited descriptors."""
    import subprocess

    record(ctx)
    proc = subprocess.Popen(["sleep", "600"], start_new_session=True, close_fds=False)
    with open(ctx.job.payload["pidfile"], "w") as f:
        f.write(str(proc.pid))


async def _later(ctx: Any, fail: bool) -> None:
    await asyncio.sleep(0.01)
    record(ctx, "awaited")
    if fail:
        raise RuntimeError("failed after being awaited")


def returns_awaitable(ctx: Any) -> Any:
    record(ctx)
    return _later(ctx, bool(ctx.job.payload.get("fail")))


def log_lines(ctx: Any) -> None:
    record(ctx)
    for i in range(int(ctx.job.payload.get("n", 1))):
        ctx.logger.warning("line %d %s", i, "x" * int(ctx.job.payload.get("width", 10)))


def observe(ctx: Any) -> None:
    """Writes what the handler sees of its job (payload, run_at) to the ledger's .observed
    file, one JSON line per run, for tests that check how stored values reach a handler."""
    record(ctx)
    job = ctx.job
    line = json.dumps({"id": job.id, "payload": job.payload, "run_at": job.run_at.isoformat(),
                       "created_at": job.created_at.isoformat()}) + "\n"
    fd = os.open(LEDGER + ".observed", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


TASKS.update({
    "async_poison": async_poison,
    "daemon": daemon,
    "fork_both": fork_both,
    "log_lines": log_lines,
    "observe": observe,
    "returns_awaitable": returns_awaitable,
    "sync_hang": task(hang, timeout=1.0, backoff=FAST),
})


# -- cancel (tests/engine/test_cancel.py) -------------------------------------------------------

async def async_until_cancelled(ctx: Any) -> None:
    """Waits (at most payload["s"], default 60 s) and records "cancelled" when its task is
    cancelled, then lets the CancelledError go on."""
    record(ctx)
    try:
        await asyncio.sleep(float(ctx.job.payload.get("s", 60)))
    except asyncio.CancelledError:
        record(ctx, "cancelled")
        raise
    record(ctx, "end")


def sync_until_cancelled(ctx: Any) -> None:
    """A long loop that checks ctx.cancelled (at most payload["s"], default 60 s), records
    "cancelled" when it sees it, and returns normally."""
    record(ctx)
    deadline = time.monotonic() + float(ctx.job.payload.get("s", 60))
    while time.monotonic() < deadline:
        if ctx.cancelled:
            record(ctx, "cancelled")
            return
        time.sleep(0.01)
    record(ctx, "end")


def sync_ignoring_cancel(ctx: Any) -> None:
    """Never looks at ctx.cancelled: only killing its process ends it."""
    record(ctx)
    time.sleep(3600)


TASKS["async_until_cancelled"] = task(async_until_cancelled, backoff=FAST)
TASKS["sync_until_cancelled"] = task(sync_until_cancelled, backoff=FAST)
TASKS["sync_ignoring_cancel"] = task(sync_ignoring_cancel, backoff=FAST)
