"""The lifecycle contract shared by the parent's long-running parts (fetcher, completer,
liveness): ``start()`` returns once the part runs; ``stop()`` is idempotent, safe before
``start()``, and returns once its tasks are gone. This module holds the one helper they
share for the last step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for each to finish. A task's own error was already logged
    where it happened; here it must not stop the rest of a shutdown."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
