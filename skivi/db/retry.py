"""Trying a database operation again: how long to wait between tries, and whether to.

Not a job's retry schedule (that is ``skivi.retry``: a delay stored on the job row). This is
for the engine's own statements and connections, every loop that meets a database that is
away (a restart, a failover, a terminated backend) and must wait and try again:

- ``RetryBackoff``: the waits between tries of one operation: exponential (``factor``),
  capped at ``max_delay``, optionally jittered, ``reset()`` after a success. Each loop keeps
  its own first delay and cap (see the table below); what they share is the arithmetic.
- The classification: ``is_retryable(exc)`` (the same statement or connection may work if
  tried again) and ``for_good(exc)`` (waiting cannot help: a wrong connection string, a
  refused login, an unknown database, a missing privilege, a schema that is not there).
  Graphile Worker's ``RETRYABLE_ERROR_CODES`` and River's ``isNonRetryableCompleterError``
  are the anchors.
- ``retrying(op, ...)``: await ``op()`` until it succeeds or fails in a way not worth
  retrying, sleeping ``backoff.next()`` in between, optionally giving up after ``timeout``.

Who uses it (first delay, cap, jitter), all in seconds::

    engine.connection  Reconnecting.get           0.05  max_delay (2.0)  JITTER_AROUND
    engine.maintenance Liveness.register_retrying 0.1   max_delay (5.0)  JITTER_AROUND
    engine.completer   Completer._run (flush)     0.05  5.0              JITTER_AROUND
    engine.fetcher     Fetcher._run (claim)       0.05  2.0              none
    engine.fetcher     Fetcher._listen (LISTEN)   0.1   5.0              none
    engine.scheduler   Scheduler._backoff         0.1   10.0             JITTER_BELOW
    cli.worker         _retrying (startup)        0.25  4.0              none, 30 s in all

The periodic parts (``engine.service.every``: heartbeat, rescuer, pruner) do not back off:
a failed round is retried at the next interval, which is their documented pace.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

__all__ = [
    "FOR_GOOD_SQLSTATES",
    "JITTER_AROUND",
    "JITTER_BELOW",
    "NO_JITTER",
    "RETRYABLE_SQLSTATES",
    "RetryBackoff",
    "for_good",
    "is_retryable",
    "refused_for_good",
    "retrying",
    "unusable_url",
]

T = TypeVar("T")

# SQLSTATEs after which the same statement may succeed if tried again (Graphile Worker's
# RETRYABLE_ERROR_CODES, River's completer): serialization and deadlock failures, a server
# that is starting or shutting down, and lost connections.
RETRYABLE_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "08000", "08001", "08003", "08004", "08006",  # connection exceptions
    "53300",  # too_many_connections
})

# SQLSTATEs that the same statement will meet again however long one waits: the role, the
# database or the schema is wrong, and only an operator can change that.
FOR_GOOD_SQLSTATES = frozenset({
    "28000",  # invalid_authorization_specification
    "28P01",  # invalid_password
    "3D000",  # invalid_catalog_name (no such database)
    "3F000",  # invalid_schema_name
    "42501",  # insufficient_privilege
    "42703",  # undefined_column
    "42883",  # undefined_function
    "42P01",  # undefined_table
})

# What libpq says when a connection is refused for good: waiting will not change it. A
# failed connection attempt carries no SQLSTATE, only this text.
_REFUSED = ("password authentication failed", "no pg_hba.conf entry", "does not exist",
            "permission denied", "authentication failed")

JITTER_AROUND = (0.5, 1.5)
"""Each wait is the delay times uniform(0.5, 1.5): spread around the schedule."""
JITTER_BELOW = (0.5, 1.0)
"""Each wait is the delay times uniform(0.5, 1.0): spread, never above the cap."""
NO_JITTER = (1.0, 1.0)
"""Each wait is the delay itself."""


def unusable_url(exc: BaseException) -> bool:
    """The connection string itself is wrong (an unknown option, a bad port): a
    configuration error, not a database that is away."""
    if isinstance(exc, psycopg.ProgrammingError):
        return True
    return (isinstance(exc, psycopg.OperationalError)
            and str(exc).startswith("connection is bad: invalid"))


def refused_for_good(exc: BaseException) -> bool:
    """The server answered and refused this login (authentication, an unknown role or
    database): retrying cannot help."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    text = str(exc)
    return "FATAL:" in text and any(r in text for r in _REFUSED)


def for_good(exc: BaseException) -> bool:
    """Waiting cannot help: a wrong connection string, a refused login, or a statement the
    server refuses by its SQLSTATE (FOR_GOOD_SQLSTATES)."""
    if not isinstance(exc, psycopg.Error):
        return False
    if getattr(exc, "sqlstate", None) in FOR_GOOD_SQLSTATES:
        return True
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is not None:
        return False  # a statement's error (syntax, a bad value): not the connection string
    return unusable_url(exc) or refused_for_good(exc)


def is_retryable(exc: BaseException) -> bool:
    """The same operation may succeed if tried again: its SQLSTATE is in RETRYABLE_SQLSTATES,
    or the connection failed or was lost without one (the server is away, restarting, out
    of reach), unless that failure is ``for_good``."""
    if not isinstance(exc, psycopg.Error) or for_good(exc):
        return False
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return sqlstate in RETRYABLE_SQLSTATES


class RetryBackoff:
    """The waits between tries of one operation: ``first_delay``, then times ``factor``
    after each failure, never above ``max_delay``; each wait jittered by a factor drawn
    uniformly from ``jitter`` (low, high). ``next()`` gives the next wait and counts a
    failure; ``reset()`` after a success starts over at ``first_delay``.

    Not thread-safe, and not meant to be shared: one per loop.
    """

    __slots__ = ("_delay", "factor", "failures", "first_delay", "jitter", "max_delay", "rng")

    def __init__(self, first_delay: float, max_delay: float, *, factor: float = 2.0,
                 jitter: tuple[float, float] = NO_JITTER,
                 rng: random.Random | None = None) -> None:
        problems = []
        if not first_delay > 0:
            problems.append(f"first_delay must be positive seconds, got {first_delay!r}")
        if not max_delay >= first_delay:
            problems.append(f"max_delay must be at least first_delay ({first_delay!r}), "
                            f"got {max_delay!r}")
        if not factor >= 1:
            problems.append(f"factor must be at least 1, got {factor!r}")
        low, high = jitter
        if not 0 <= low <= high:
            problems.append(f"jitter must be (low, high) with 0 <= low <= high, got {jitter!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.factor = factor
        self.jitter = jitter
        self.rng = rng
        self.failures = 0
        """Failures since the last ``reset()``: how many waits ``next()`` handed out."""
        self._delay = first_delay

    @property
    def delay(self) -> float:
        """The next wait before jitter."""
        return self._delay

    def next(self) -> float:
        """The wait before the next try, in seconds; the one after it grows."""
        low, high = self.jitter
        wait = self._delay
        if low != 1.0 or high != 1.0:
            wait *= (self.rng or random).uniform(low, high)
        self.failures += 1
        self._delay = min(self._delay * self.factor, self.max_delay)
        return wait

    def reset(self) -> None:
        """The operation succeeded: the next failure waits ``first_delay`` again."""
        self.failures = 0
        self._delay = self.first_delay

    async def sleep(self) -> float:
        """Sleep ``next()`` seconds; returns how long."""
        wait = self.next()
        await asyncio.sleep(wait)
        return wait


async def retrying(op: Callable[[], Awaitable[T]], *, backoff: RetryBackoff,
                   retry_if: Callable[[BaseException], bool] = is_retryable,
                   on_retry: Callable[[BaseException, float], None] | None = None,
                   timeout: float | None = None) -> T:
    """``await op()`` until it succeeds; after each failure that ``retry_if`` accepts, call
    ``on_retry(exc, wait)`` (to log it) and sleep ``backoff.next()``. Any other error is
    raised at once, and so is a retryable one whose wait would end more than ``timeout``
    seconds after the first try began. Cancelling the caller cancels the current try or
    wait (``op`` cleans up after itself). The backoff is reset on success."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            result = await op()
        except Exception as exc:
            if not retry_if(exc):
                raise
            wait = backoff.next()
            if deadline is not None and time.monotonic() + wait > deadline:
                raise
            if on_retry is not None:
                on_retry(exc, wait)
            await asyncio.sleep(wait)
        else:
            backoff.reset()
            return result
