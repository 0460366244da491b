"""The engine-subprocess harness: the engine tests run the real engine
(``python -m skivi.engine``) as subprocesses, with real signals, against a real PostgreSQL,
and judge it by the ledger its handlers (tests/engine/tasks) write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.rows import fetch
from tests.support.wait import wait_for

__all__ = ["REPO", "TASKS_DIR", "EngineProcs", "Ledger", "engine_id", "enqueue", "log_of",
           "runs_a_job_then_stops"]

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = REPO / "tests" / "engine" / "tasks"


@dataclass
class Ledger:
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


@dataclass
class EngineProcs:
    database: str
    ledger: Ledger
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, *args: str, processes: int = 2, concurrency: int = 4,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "skivi.engine", "--database-url", self.database,
               "--tasks", str(TASKS_DIR), "--processes", str(processes),
               "--concurrency", str(concurrency), "--log-level", "INFO", *args]
        full_env = {**os.environ, "SKIVI_TEST_LEDGER": str(self.ledger.path),
                    "PYTHONPATH": str(REPO), **(env or {})}
        log = self.ledger.path.with_name(f"engine-{len(self.procs)}.log")
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, env=full_env, cwd=REPO, stderr=err)
        proc.log_path = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()


def log_of(proc: subprocess.Popen[bytes]) -> str:
    """What the engine wrote to stderr (its log)."""
    path: Path = proc.log_path  # type: ignore[attr-defined]
    return path.read_text(errors="replace") if path.exists() else ""


def enqueue(url: str, specs: list[dict[str, Any]]) -> list[int]:
    """Enqueue through the public API; the ids, in spec order."""
    import skivi

    system = skivi.create_system({"database": {"connection_string": url}})
    try:
        return [j.id for j in skivi.add_jobs(system, specs)]
    finally:
        system.stop()


def runs_a_job_then_stops(procs: EngineProcs, url: str,
                          engine: subprocess.Popen[bytes]) -> None:
    """The engine is working: a no-op job enqueued now runs; then SIGTERM stops it with
    exit 0."""
    job = enqueue(url, [{"task": "noop"}])[0]
    wait_for(lambda: [r for r in procs.ledger.starts() if r[0] == job], timeout=30,
             what=f"job {job} to run")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)


def engine_id(url: str, pid: int) -> int:
    """The engine id of the engine process ``pid`` (waits for it to register)."""
    rows = wait_for(lambda: fetch(url, "select id from skivi.engine where pid = %s", pid),
                    what=f"engine row of pid {pid}")
    return int(rows[0][0])
