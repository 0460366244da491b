"""The worker engine. Internal modules; the entry points are ``run()``,
``python -m skivi.engine`` and ``System.start()``.

Processes::

    parent (asyncio + uvloop)                             children (forked, uvloop)
    ├── fetcher      claims batches (job_claim.sql;   ──JOBS──▶  child 0 ┐ run handlers:
    │                job_claim_limited.sql for tasks  ◀─RESULTS─ child 1 │ async ones many
    │                under limits), honouring pauses;                    │
    │                LISTEN wake-ups + poll fallback                     │
    ├── supervisor   hands jobs to children with free     ...    child N ┘ at a time
    │                slots; replaces dead children
    ├── completer    writes results in batches (job_complete_many / job_fail_many /
    │                job_release_many), giving back their limit keys in the same transaction
    └── liveness     engine row + advisory lock, heartbeat, rescuer of dead engines' jobs
                     (and of their limit keys)

Who writes what:
    * only the parent writes job state: it claims in the fetcher, finishes and releases in
      the completer, and rescues other engines' jobs in liveness;
    * children only run handlers and report results (handlers may enqueue new jobs);
    * every write that ends a claim is guarded by (engine, job id, lease), so a late or
      repeated write changes nothing.

A crash story for each process:
    * a child dies: the supervisor fails the jobs it held as crashes (attempt counted,
      backoff) and forks a replacement;
    * the parent dies: its connections close, its liveness lock is freed, and any other
      engine's rescuer makes its claimed jobs runnable within worker.rescue_interval
      seconds; its children die with it (PR_SET_PDEATHSIG) and never hold its sockets.

Shutdown order: see ``skivi.engine.supervisor``.

Exit codes of ``python -m skivi.engine``:
    0  stopped cleanly (signal, or --once with nothing left to run)
    1  stopped with errors (a shutdown step failed, results left unwritten)
    2  bad command line or configuration, or a task file that does not load
    3  the database could not be reached (for 30 s), refused the login, or could not be
       migrated at start (the migration lock waited for past
       database.migration_lock_timeout included)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skivi.events import Emitter
    from skivi.instance import Instance

from skivi.engine.exits import EXIT_CONFIG, EXIT_DATABASE, EXIT_ERROR, EXIT_OK

__all__ = ["EXIT_CONFIG", "EXIT_DATABASE", "EXIT_ERROR", "EXIT_OK", "run", "run_async"]


async def run_async(instance: Instance, emitter: Emitter, *, once: bool = False,
                    on_child_start: Callable[[], None] | None = None) -> int:
    """Run the engine of ``instance`` in the current event loop until stopped, its events
    going to ``emitter``; returns the exit code. ``on_child_start`` runs in every worker
    child once it is forked, before its first job (a framework's per-process set-up, such
    as ``skivi.contrib.django``'s)."""
    from skivi.engine.supervisor import Engine

    engine = Engine(instance, instance.registry(), emitter, once=once,
                    on_child_start=on_child_start)
    return await engine.run()


def run(instance: Instance, emitter: Emitter, *, once: bool = False,
        on_child_start: Callable[[], None] | None = None) -> int:
    """Run the engine on a new uvloop event loop until stopped; returns the exit code."""
    import uvloop

    return uvloop.run(run_async(instance, emitter, once=once, on_child_start=on_child_start))
