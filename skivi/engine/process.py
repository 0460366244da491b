"""Forking the engine's helper processes (worker children and the cron process).

Forking, not spawning, is deliberate: the task registry may hold lambdas and closures (as
the original's examples do), and a forked process simply has them, with nothing pickled.
What makes forking from a running parent safe is done here, once, for every kind:

* the new process closes every inherited file descriptor except the ones it was given, so
  it never holds the parent's database sockets (if the parent is SIGKILLed, its sessions
  must end with it, freeing its liveness lock) nor other children's pipes;
* it asks the kernel to kill it when the parent dies (PR_SET_PDEATHSIG), so no orphan
  keeps running jobs nobody will record;
* inherited objects are frozen out of the garbage collector and the parent's event loop is
  forgotten, so nothing of the parent's is ever finalised here;
* it always leaves through ``os._exit``: no atexit handler or finaliser of the parent's
  runs in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable

__all__ = ["available_cpus", "die_with_parent", "fork"]

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
MAX_FD = 65536


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):  # not Linux: closed pipes still stop the process
        pass


def available_cpus() -> int:
    """CPUs this process may really use: its CPU affinity, capped by a cgroup v2 CPU quota
    (a container limit), so the default process count fits the container, not the node."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _close_all_but(keep: Iterable[int]) -> None:
    low = 3
    for fd in sorted(set(keep)):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, MAX_FD)


def fork(name: str, target: Callable[[], int], keep: Iterable[int]) -> int:
    """Fork a process that runs ``target()`` and exits with its return value (1 if it
    raised). Returns the pid in the parent; never returns in the new process."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        die_with_parent()
        signal.set_wakeup_fd(-1)
        _close_all_but([0, 1, 2, *keep])
        gc.freeze()
        asyncio.events._set_running_loop(None)
        code = target()
    except BaseException:
        with contextlib.suppress(BaseException):
            logger.exception("%s process failed", name, extra={"action": "process_failed"})
    finally:
        try:
            logging.shutdown()
        finally:
            os._exit(code)
