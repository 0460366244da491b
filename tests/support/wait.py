"""Tests never sleep for a fixed time: they ``wait_for`` a condition, with a deadline, and a
failure says what was awaited (Oban's ``with_backoff``, Graphile's ``sleepUntil``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")

FIRST_DELAY = 0.005
MAX_DELAY = 0.1


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Polls with short sleeps (5 ms, growing to 100 ms). After ``timeout`` seconds, fails
    with an ``AssertionError`` naming ``what`` was awaited and the last value seen.
    """
    deadline = time.monotonic() + timeout
    delay = FIRST_DELAY
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last value: {value!r})")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_DELAY)
