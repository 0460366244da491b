"""The engine-subprocess harness: the one way the engine tests, the chaos test and the
benchmark run engines in subprocesses (spawn with an environment, wait until registered,
stop with a signal, collect exit codes and what the engines wrote).

- ``EngineProcess``: one engine subprocess. A ``subprocess.Popen`` (pid, poll, send_signal,
  wait, returncode), started from the checkout's root, its stderr (the engine's log) in a
  file or inherited, its stdout lines read by a thread when asked for; ``stop`` sends a
  signal and waits, with SIGKILL after a timeout.
- ``EngineGroup``: engines started one after another, each with a log file of its own;
  ``kill_all`` (at the end of a test, or leaving a ``with`` block) SIGKILLs and reaps any
  still running. ``EngineProcs`` is the engine tests' group: ``python -m skivi.engine`` with
  the handlers of tests/engine/tasks and the ledger they write (``Ledger``).
- ``engine_argv``, ``child_env`` and ``run_engine`` (an engine run to its end, output
  captured) say once how an engine of this checkout is launched.
- ``wait_registered`` / ``engine_id``: an engine is ready once its row is in skivi.engine.

Why here, and pytest-free: bench/run.py imports this module. It is run from a checkout
(``python bench/run.py``, which puts the checkout on ``sys.path``) with only Skivi's own
dependencies installed, so nothing this module imports may come from the test dependencies
(pytest, hypothesis...); tests/unit/test_bench_cli.py runs bench/run.py with them blocked.
A module in bench/ would serve bench equally, but the harness is mostly the tests', and
tests/support is where the tests' shared machinery lives.
"""

from __future__ import annotations

import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.rows import fetch
from tests.support.wait import wait_for

__all__ = ["REPO", "TASKS_DIR", "EngineGroup", "EngineProcess", "EngineProcs", "Ledger",
           "child_env", "engine_argv", "engine_id", "enqueue", "log_of", "run_engine",
           "runs_a_job_then_stops", "wait_registered"]

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO / "tests" / "engine" / "tasks"
STOP_TIMEOUT_DEFAULT = 60.0

# Log files are numbered across the session: two groups may share a directory (a test that
# starts engines on a second database, next to its fixture's).
_log_numbers = itertools.count()


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with ``extra``, for a subprocess that must import this
    checkout's ``skivi`` (and ``tests``) whatever is installed."""
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def engine_argv(url: str, tasks: Path, *args: str, processes: int, concurrency: int,
                log_level: str = "INFO") -> list[str]:
    """The command line of ``python -m skivi.engine`` on ``url`` with the handlers in
    ``tasks``; ``args`` come last, so they may repeat (and override) an option."""
    return [sys.executable, "-m", "skivi.engine", "--database-url", url, "--tasks", str(tasks),
            "--processes", str(processes), "--concurrency", str(concurrency),
            "--log-level", log_level, *args]


def run_engine(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               timeout: float = 120.0, preexec_fn: Callable[[], object] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (an engine that ends by itself: ``--once``, or refused arguments) to its
    end from the checkout's root, with ``child_env(env)``; its output captured as text.
    ``preexec_fn`` runs in the child before the engine starts."""
    return subprocess.run(list(argv), env=child_env(env), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False, preexec_fn=preexec_fn)


class EngineProcess(subprocess.Popen[bytes]):
    """One engine subprocess, started at construction from the checkout's root.

    ``log_path``: where its stderr (its log) goes; ``None`` leaves it on this process's
    stderr. ``read_stdout``: its stdout is read line by line by a thread, for
    ``read_line``; otherwise it is inherited. ``env`` is the whole environment (``None``:
    this process's).
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, read_stdout: bool = False) -> None:
        self.log_path = log_path
        self._lines: queue.Queue[bytes] | None = queue.Queue() if read_stdout else None
        stdout = subprocess.PIPE if read_stdout else None
        if log_path is None:
            super().__init__(list(argv), env=env, cwd=REPO, stdout=stdout)
        else:
            # The child holds its own descriptor of the file; ours is closed at once.
            with open(log_path, "wb") as log:
                super().__init__(list(argv), env=env, cwd=REPO, stdout=stdout, stderr=log)
        if self._lines is not None:
            threading.Thread(target=self._read_stdout, args=(self._lines,), daemon=True,
                             name=f"engine-{self.pid}-stdout").start()

    def _read_stdout(self, lines: queue.Queue[bytes]) -> None:
        assert self.stdout is not None
        for line in self.stdout:
            lines.put(line)
        lines.put(b"")

    def read_line(self, timeout: float) -> bytes | None:
        """The next line the engine wrote to its stdout (``read_stdout=True``), ``b""`` once
        its stdout is closed (for good: every later call says so too), ``None`` if no line
        came within ``timeout`` seconds."""
        if self._lines is None:
            raise RuntimeError("read_line needs an EngineProcess made with read_stdout=True")
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        if line == b"":
            self._lines.put(line)
        return line

    def stop(self, timeout: float = STOP_TIMEOUT_DEFAULT, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM: a graceful stop) unless the engine has exited, then
        ``wait_or_kill(timeout)``. Once only: a second SIGTERM tells the engine to stop
        fast, so an engine already signalled is waited for with ``wait_or_kill``."""
        if self.poll() is None:
            self.send_signal(sig)
        return self.wait_or_kill(timeout)

    def wait_or_kill(self, timeout: float = STOP_TIMEOUT_DEFAULT) -> int:
        """Wait up to ``timeout`` seconds for the engine to exit, SIGKILL it if it has not;
        its exit code (negative: the signal that ended it)."""
        try:
            return self.wait(max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait()


def log_of(proc: EngineProcess) -> str:
    """What the engine wrote to its stderr (its log) so far; "" when it went elsewhere."""
    if proc.log_path is None or not proc.log_path.exists():
        return ""
    return proc.log_path.read_text(errors="replace")


class EngineGroup:
    """Engines started one after another, each logging to a file of its own in ``log_dir``.

    Used as a context manager (or with ``kill_all`` in a fixture's teardown), no engine
    outlives its test: leaving it SIGKILLs every one still running and reaps them all.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[EngineProcess] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None
              ) -> EngineProcess:
        """Start ``argv`` with the environment ``env`` (``None``: this process's)."""
        log = self.log_dir / f"engine-{next(_log_numbers)}.log"
        proc = EngineProcess(argv, env=env, log_path=log)
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    def stop(self, procs: Iterable[EngineProcess], timeout: float = STOP_TIMEOUT_DEFAULT,
             sig: int = signal.SIGTERM) -> dict[int, int]:
        """Stop ``procs`` together: ``sig`` to each still running, then wait for them all
        within ``timeout`` seconds (SIGKILL after); pid -> exit code."""
        procs = list(procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)
        deadline = time.monotonic() + timeout
        return {p.pid: p.wait_or_kill(deadline - time.monotonic()) for p in procs}

    def logs(self) -> str:
        """Every engine's log, in start order."""
        return "".join(log_of(p) for p in self.procs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill_all()


def wait_registered(url: str, pids: Iterable[int], timeout: float = 30.0) -> dict[int, int]:
    """pid -> engine id, once every engine process of ``pids`` has registered (its row is
    in skivi.engine): from then on it claims jobs, and is rescued if killed."""
    wanted = sorted(set(pids))

    def registered() -> dict[int, int]:
        rows = {int(pid): int(eid) for pid, eid in fetch(
            url, "select pid, id from skivi.engine where pid = any(%s)", wanted)}
        return rows if sorted(rows) == wanted else {}

    return wait_for(registered, timeout=timeout, what=f"engines {wanted} to register")


def engine_id(url: str, pid: int) -> int:
    """The engine id of the engine process ``pid`` (waits for it to register)."""
    return wait_registered(url, [pid])[pid]


# -- the engine tests' engines ------------------------------------------------------------------


@dataclass
class Ledger:
    """The file the handlers of tests/engine/tasks append a line to per event."""

    path: Path

    def rows(self) -> list[tuple[int, int, int, str, float]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            job, pid, attempt, event, at = line.split()
            out.append((int(job), int(pid), int(attempt), event, float(at)))
        return out

    def starts(self) -> list[tuple[int, int, int, str, float]]:
        return [r for r in self.rows() if r[3] == "start"]

    def runs_per_job(self) -> Counter[int]:
        return Counter(r[0] for r in self.starts())


class EngineProcs(EngineGroup):
    """Engines on ``database`` with the handlers of tests/engine/tasks, writing ``ledger``;
    their logs next to it."""

    def __init__(self, database: str, ledger: Ledger) -> None:
        super().__init__(ledger.path.parent)
        self.database = database
        self.ledger = ledger

    def start(self, *args: str, processes: int = 2, concurrency: int = 4,
              env: dict[str, str] | None = None) -> EngineProcess:
        argv = engine_argv(self.database, TASKS_DIR, *args, processes=processes,
                           concurrency=concurrency)
        return self.spawn(argv, child_env({"SKIVI_TEST_LEDGER": str(self.ledger.path),
                                           **(env or {})}))


def enqueue(url: str, specs: list[dict[str, Any]]) -> list[int]:
    """Enqueue through the public API; the ids, in spec order."""
    import skivi

    system = skivi.create_system({"database": {"connection_string": url}})
    try:
        return [j.id for j in skivi.add_jobs(system, specs)]
    finally:
        system.stop()


def runs_a_job_then_stops(procs: EngineProcs, url: str, engine: EngineProcess) -> None:
    """The engine is working: a no-op job enqueued now runs; then SIGTERM stops it with
    exit 0."""
    job = enqueue(url, [{"task": "noop"}])[0]
    wait_for(lambda: [r for r in procs.ledger.starts() if r[0] == job], timeout=30,
             what=f"job {job} to run")
    assert engine.stop(timeout=30) == 0, log_of(engine)
