"""Handlers of the result tests (tests/engine/test_results.py), loaded by the engine from
this directory: tasks that keep their results (store_result=True), one that does not, and
one that follows worker.store_results."""

from __future__ import annotations

from typing import Any

from skivi.registry import task
from skivi.retry import Backoff

FAST = Backoff(factor=0.01)
SLOW = Backoff(factor=3600.0)


def add(ctx: Any) -> Any:
    p = ctx.job.payload
    return {"sum": p["a"] + p["b"], "attempt": ctx.job.attempts}


async def async_add(ctx: Any) -> Any:
    p = ctx.job.payload
    return [p["a"] + p["b"]]


def flaky(ctx: Any) -> Any:
    if ctx.job.attempts < 2:
        raise RuntimeError(f"flaky on attempt {ctx.job.attempts}")
    return f"ok on attempt {ctx.job.attempts}"


def fail(ctx: Any) -> Any:
    raise ValueError(f"boom on attempt {ctx.job.attempts}")


def unjsonable(ctx: Any) -> Any:
    return {"tags": {"a", "b"}}


def plain(ctx: Any) -> Any:
    return {"not": "kept"}


TASKS = {
    "add": task(add, store_result=True),
    "async_add": task(async_add, store_result=True),
    "fail": task(fail, store_result=True, backoff=FAST),
    "fail_slowly": task(fail, store_result=True, backoff=SLOW),
    "flaky": task(flaky, store_result=True, backoff=FAST),
    "never": task(plain, store_result=False),
    "plain": plain,
    "unjsonable": task(unjsonable, store_result=True),
}
