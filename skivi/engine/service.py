"""The lifecycle contract shared by the parent's long-running parts (the child pool, the
cron process, fetcher, completer, liveness, pruner, queue stats), ``Service``: ``await
start()`` returns once the part runs; ``await stop()`` is idempotent, safe before
``start()``, and returns once its tasks (or processes) are gone. The supervisor starts them
in order and stops them in its ordered shutdown, each the same way. This module also holds
the helpers they share: the last step of every ``stop()``, and the loop of the periodic
ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

if TYPE_CHECKING:
    from skivi.engine.connection import Reconnecting

__all__ = ["Service", "cancel_and_wait", "every"]

logger = logging.getLogger(__name__)


class Service(Protocol):
    """A long-running part of the engine's parent (see the module docstring)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for each to finish. A task's own error was already logged
    where it happened; here it must not stop the rest of a shutdown."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


async def every(interval: float, step: Callable[[], Awaitable[bool | None]], *,
                db: Reconnecting, what: str, action: str, first_delay: float = 0.0,
                wake: asyncio.Event | None = None) -> None:
    """The loop of every periodic part (heartbeat, rescuer, history pruner, queue stats):
    run ``step`` every ``interval`` seconds until cancelled. A database error is logged
    under ``action``, the connection is reported broken (the next round reconnects) and the
    loop goes on; any other error too, logged with its traceback. A step that returns True
    has more work waiting: the next round starts at once; so does one that ``wake`` (set
    by someone who wants a round now) cuts the wait short of."""
    await _wait(first_delay, wake)
    while True:
        again = False
        try:
            again = bool(await step())
        except psycopg.Error as exc:
            db.broken()
            logger.warning("%s failed: %s", what, exc, extra={"action": action})
        except Exception:
            # A bug, not the database: say so loudly, but a periodic part that stops (the
            # heartbeat above all) would get a live engine declared dead.
            db.broken()
            logger.exception("%s failed", what, extra={"action": action})
        if not again:
            await _wait(interval, wake)


async def _wait(seconds: float, wake: asyncio.Event | None) -> None:
    if wake is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    wake.clear()
