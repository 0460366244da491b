"""How the handlers of a Django project run in the engine's children.

Every handler the project's system registers is wrapped here (``wrap``), so the engine
itself knows nothing of Django:

* ``close_old_connections`` before and after each job, as Django does around each request:
  a connection broken by one job (the server restarted, a failed transaction left behind,
  ``CONN_MAX_AGE`` passed) is closed, and the next job gets a new one instead of the error;
* a sync handler runs with no event loop marked running in its thread. A child runs sync
  handlers on its loop's thread while the loop waits for them (``worker.sync_threads = 1``),
  or on threads of their own; either way nothing else runs on that loop meanwhile, but
  Django's guard (``async_unsafe``: ``SynchronousOnlyOperation``) only sees a running loop,
  so it would refuse every ORM call of a sync handler;
* an async handler is left on the loop, with ``close_old_connections`` through
  ``sync_to_async`` (the thread where its ``sync_to_async`` ORM calls run); it uses Django's
  async ORM API (``acreate``, ``aget``, ...) or ``sync_to_async``, as in an async view.

``child_started`` is the engine's per-child hook (``skivi.engine.run(on_child_start=)``):
the child was forked from the parent, where ``django.setup()`` ran, so it has the apps
already; ``django.setup()`` is called again all the same (it returns at once when they are
ready), and the Django connections the child inherited are closed. The fork pointed their
sockets at /dev/null (``skivi.engine.process``), so closing them here says nothing to the
server on the parent's behalf; the parent closes its own before the engine starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import django
from asgiref.sync import sync_to_async
from django.db import close_old_connections, connections

from skivi.registry import TaskDef, TaskSource, is_async_callable

__all__ = ["child_started", "wrap", "wrap_definition"]


@contextlib.contextmanager
def _no_running_loop() -> Iterator[None]:
    loop = asyncio._get_running_loop()
    if loop is None:
        yield
        return
    asyncio.events._set_running_loop(None)
    try:
        yield
    finally:
        asyncio.events._set_running_loop(loop)


def wrap(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler(ctx)`` with Django's per-job care (see the module docstring)."""
    if is_async_callable(handler):
        async def run_async(ctx: Any) -> Any:
            await sync_to_async(close_old_connections)()
            try:
                return await handler(ctx)
            finally:
                await sync_to_async(close_old_connections)()

        wrapped: Callable[..., Any] = run_async
    else:
        def run(ctx: Any) -> Any:
            with _no_running_loop():
                close_old_connections()
                try:
                    return handler(ctx)
                finally:
                    close_old_connections()

        wrapped = run
    functools.update_wrapper(wrapped, handler)
    del wrapped.__wrapped__  # type: ignore[attr-defined]  # async detection looks no further
    return wrapped


def wrap_definition(source: Callable[..., Any] | TaskDef | TaskSource) -> TaskDef:
    """A registry entry (handler, ``TaskDef`` or typed task) as a ``TaskDef`` whose handler
    is wrapped, its options kept."""
    if isinstance(source, TaskSource):
        source = source.definition
    if isinstance(source, TaskDef):
        return TaskDef(wrap(source.handler), backoff=source.backoff, timeout=source.timeout,
                       store_result=source.store_result)
    return TaskDef(wrap(source))


def child_started() -> None:
    """The engine's hook in each worker child (see the module docstring)."""
    django.setup()
    with _no_running_loop():
        connections.close_all()
