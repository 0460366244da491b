"""Forking the engine's helper processes (worker children and the cron process).

Forking, not spawning, is deliberate: the task registry may hold lambdas and closures (as
the original's examples do), and a forked process simply has them, with nothing pickled.
What makes forking from a running parent safe is done here, once, for every kind:

* the new process lets go of every inherited socket, pipe and kernel object (epoll,
  eventfd...) except the descriptors it was given, so it never holds the parent's database
  sockets (if the parent is SIGKILLed, its sessions must end with it, freeing its liveness
  lock) nor other children's pipes. It does not close them: it points each one at
  /dev/null, so the number stays taken and a Python object still holding it (a socket of
  the application's, say) can never write into a descriptor reused for something else.
  Files stay open as they are: the application's log files keep working here;
* a worker child leads a process group of its own, so whatever its handlers start can be
  ended with it (see ``end_group``);
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
import time
from collections.abc import Callable, Iterable

__all__ = [
    "available_cpus",
    "become_subreaper",
    "children_of",
    "detach",
    "die_with_parent",
    "end_group",
    "fork",
    "reap_orphans",
    "shared_objects",
]

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


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


def detach(fds: Iterable[int]) -> None:
    """Point each descriptor at /dev/null: this process lets go of what it referred to (a
    socket shared with another process, say), and the number is not reused."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd != devnull:
                with contextlib.suppress(OSError):
                    os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def shared_objects(keep: Iterable[int]) -> list[int]:
    """Inherited descriptors that are not files: sockets, pipes, epoll and other kernel
    objects (their /proc link is not a path)."""
    kept = set(keep)
    out = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd in kept:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir used, closed by now
            continue
        if not target.startswith("/"):
            out.append(fd)
    return out


def children_of(pid: int, *, zombies: bool = False) -> list[int]:
    """The child processes of ``pid`` (from /proc), those that exited but were not reaped
    yet only with ``zombies``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and (zombies or fields[0] != "Z"):
            out.append(int(entry))
    return out


def reap_orphans(known: Iterable[int]) -> int:
    """Kill and reap this process's children that it did not start itself: what handlers
    left behind and the kernel reparented here (``become_subreaper``). Returns how many."""
    skip = set(known)
    found = 0
    for pid in children_of(os.getpid(), zombies=True):
        if pid in skip:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        found += 1
    return found


def exit_code(pid: int) -> int | None:
    """Reap ``pid``, which has exited (its pidfd said so); its exit code (negative: killed
    by that signal), None if it cannot be known (reaped elsewhere, or not yet after 1 s)."""
    for _ in range(200):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    return None


def become_subreaper() -> None:
    """Processes orphaned below this one (a handler's daemon whose child died) are
    reparented here rather than to init, so the engine can end them (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass


def end_group(pgid: int) -> None:
    """SIGKILL every process left in a child's process group (the child is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def fork(name: str, target: Callable[[], int], keep: Iterable[int],
         group: bool = False) -> int:
    """Fork a process that runs ``target()`` and exits with its return value (1 if it
    raised). With ``group``, it leads a process group of its own (its pgid is its pid).
    Returns the pid in the parent; never returns in the new process. A failed fork raises
    OSError (BlockingIOError: the process limit)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        if group:
            # Both sides set it, so it holds whichever runs first.
            with contextlib.suppress(OSError):
                os.setpgid(pid, pid)
        return pid
    code = 1
    try:
        if group:
            os.setpgid(0, 0)
        die_with_parent()
        signal.set_wakeup_fd(-1)
        detach(shared_objects([0, 1, 2, *keep]))
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
