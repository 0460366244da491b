"""Operational controls from Python: pause and resume queues and tasks.

::

    skivi.pause_queue(system, "mail")          # claims skip the queue; running jobs finish
    skivi.resume_queue(system, "mail")
    skivi.pause_queue(system, skivi.PARALLEL_QUEUE)   # the jobs without a queue
    skivi.pause_task(system, "send_email")
    skivi.paused(system)                        # -> [Pause("queue", "mail", paused_at)]

The pauses live in the database (table ``pause``, migration 0008) and the SQL functions
``pause_queue``, ``resume_queue``, ``pause_task`` and ``resume_task`` do the same from SQL;
``skivi queues pause NAME`` and ``skivi tasks pause ID`` from the command line. Every engine
of the schema honours a pause within one poll interval (at once when it LISTENs: the
functions send a NOTIFY): its claims skip the paused queues and tasks, and the jobs already
claimed run to their end. A serial queue whose next job is of a paused task waits behind it,
in order. Each call returns True when it changed something (False: it was already so).

``PARALLEL_QUEUE`` (``"@parallel"``) is the reserved name of the parallel queue (the jobs
without a queue name); a serial queue that were named so would be paused with it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from skivi.client import HasClient
from skivi.db.connections import ConnectionLike, sync_connection
from skivi.db.queries import pause_change, pause_list
from skivi.errors import SkiviError, shown

__all__ = ["PARALLEL_QUEUE", "Pause", "pause_queue", "pause_task", "paused", "resume_queue",
           "resume_task"]

PARALLEL_QUEUE: Final = "@parallel"
"""The name under which the parallel queue (jobs without a queue) is paused."""

NAME_MAX = 128


@dataclass(frozen=True, slots=True)
class Pause:
    """One paused queue or task."""

    kind: str  # "queue" or "task"
    name: str
    paused_at: dt.datetime


def _change(target: HasClient, kind: str, name: object, pause: bool,
            conn: ConnectionLike | None) -> bool:
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX:
        what = "queue name" if kind == "queue" else "task identifier"
        raise SkiviError(f"the {what} must be a string of 1 to {NAME_MAX} characters, "
                         f"got {shown(name)}")
    client = target.client
    q = client.instance.queries
    if conn is not None:
        return bool(pause_change.run(sync_connection(conn), q, kind=kind, name=name,
                                     pause=pause))
    with client.pooled_connection() as pooled:
        return bool(pause_change.run(pooled, q, kind=kind, name=name, pause=pause))


def pause_queue(target: HasClient, name: str, *, conn: ConnectionLike | None = None) -> bool:
    """Pause queue ``name`` (``PARALLEL_QUEUE``: the jobs without a queue) on every engine.
    ``conn``: in this connection's transaction (psycopg or SQLAlchemy), else the pool's."""
    return _change(target, "queue", name, True, conn)


def resume_queue(target: HasClient, name: str, *, conn: ConnectionLike | None = None) -> bool:
    """Resume queue ``name``."""
    return _change(target, "queue", name, False, conn)


def pause_task(target: HasClient, identifier: str, *,
               conn: ConnectionLike | None = None) -> bool:
    """Pause every job of task ``identifier``, in every queue, on every engine."""
    return _change(target, "task", identifier, True, conn)


def resume_task(target: HasClient, identifier: str, *,
                conn: ConnectionLike | None = None) -> bool:
    """Resume task ``identifier``."""
    return _change(target, "task", identifier, False, conn)


def paused(target: HasClient, *, conn: ConnectionLike | None = None) -> list[Pause]:
    """The paused queues and tasks, by kind and name."""
    client = target.client
    q = client.instance.queries
    if conn is not None:
        rows = pause_list.run(sync_connection(conn), q)
    else:
        with client.pooled_connection() as pooled:
            rows = pause_list.run(pooled, q)
    return [Pause(r.kind, r.name, r.paused_at) for r in rows]
