"""Watching a running Skivi: subscribe to its events, read the recent ones.

::

    from skivi import monitoring

    unsubscribe = monitoring.on(system.emitter, "all",
                                lambda ev: log.info("event %s %s", ev["type"], ev["data"]))
    monitoring.on(system.emitter, "job/exhausted", lambda ev: alert("Job exhausted", ev["data"]))
    ...
    unsubscribe()

The event types and their data fields are catalogued in :mod:`skivi.events`. Handlers
registered in an application receive the events of the engine that ``system.start()`` forked,
on the "skivi-events" thread, whenever they were registered. Prometheus metrics are
:mod:`skivi.metrics`; the engine serves them when ``metrics.port`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

from skivi.events import (
    ALL,
    BUFFER_SIZE_DEFAULT,
    CollectingEmitter,
    Emitter,
    Event,
    EventKind,
    Handler,
)

__all__ = [
    "ALL",
    "CollectingEmitter",
    "Emitter",
    "Event",
    "EventKind",
    "collecting_emitter",
    "on",
    "recent",
]


def on(emitter: Emitter, kind: str, handler: Handler) -> Callable[[], None]:
    """Call ``handler(event)`` for every event of ``kind`` (an :class:`EventKind` value such
    as ``"job/failed"``, or ``"all"``). Returns a callable that unsubscribes. A handler that
    raises is logged and counted (``emitter.handler_errors``), never propagated."""
    return emitter.on(kind, handler)


def recent(emitter: Emitter) -> list[Event]:
    """The emitter's most recent events, oldest first (``events.buffer_size`` at most)."""
    return emitter.recent()


def collecting_emitter(buffer_size: int = BUFFER_SIZE_DEFAULT) -> CollectingEmitter:
    """An emitter that also keeps every event in ``.events`` (with ``.of(kind)`` and
    ``.types()`` to read them): for tests."""
    return CollectingEmitter(buffer_size)
