"""Engine tests run the real engine (``python -m skivi.engine``) as subprocesses, with real
signals, against a real PostgreSQL, and judge it by the ledger its handlers write."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


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


@pytest.fixture
def engines(database: str, tmp_path: Path) -> Iterator[EngineProcs]:
    procs = EngineProcs(database, Ledger(tmp_path / "ledger.txt"))
    try:
        yield procs
    finally:
        procs.stop_all()


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
    from tests.helpers import wait_for

    job = enqueue(url, [{"task": "noop"}])[0]
    wait_for(lambda: [r for r in procs.ledger.starts() if r[0] == job], timeout=30,
             what=f"job {job} to run")
    engine.send_signal(signal.SIGTERM)
    assert engine.wait(timeout=30) == 0, log_of(engine)


def live_jobs(url: str) -> int:
    return int(fetch(url, "select count(*) from skivi.job")[0][0])


def engine_id(url: str, pid: int) -> int:
    """The engine id of the engine process ``pid`` (waits for it to register)."""
    from tests.helpers import wait_for

    rows = wait_for(lambda: fetch(url, "select id from skivi.engine where pid = %s", pid),
                    what=f"engine row of pid {pid}")
    return int(rows[0][0])


def fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    from tests.helpers import connect

    with connect(url) as c:
        return c.execute(query, args or None).fetchall()  # type: ignore[arg-type]


@dataclass
class PrivateServer:
    """A PostgreSQL server of the test's own (embedded, from the pgserver package), so a test
    can restart it without disturbing anything else."""

    pgdata: Path
    url: str

    def _pg_ctl(self, *args: str) -> None:
        import pgserver

        kwargs: dict[str, Any] = {"user": "pgserver"} if os.geteuid() == 0 else {}
        pgserver.pg_ctl(["-w", *args], pgdata=self.pgdata, **kwargs)

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")

    def stop_quietly(self) -> None:
        """Stop it if it runs. pgserver's own cleanup knows only the first postmaster's
        pid: after a restart it would leave the server running."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()

    def start(self) -> None:
        # The options pgserver started it with (no TCP listener, its own socket directory):
        # a bare start would listen on localhost:5432, where the machine's server may be.
        from urllib.parse import parse_qs, urlsplit

        socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]
        self._pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "start")


@contextlib.contextmanager
def private_postgres(prefix: str, setup: str | None = None) -> Iterator[PrivateServer]:
    """A migrated PostgreSQL of its own (then ``setup`` run in it), stopped and deleted at
    the end.

    Its data directory is NOT under pytest's temporary directory: as root, pgserver runs the
    server as the user "pgserver", and any pytest session of root (another one on the same
    machine included) makes /tmp/pytest-of-root private again (mode 0700), after which the
    server's own pg_ctl cannot reach its data directory to restart or stop it.
    """
    import pgserver

    from skivi.db.migrate import migrate
    from tests.helpers import connect

    pgdata = Path(tempfile.mkdtemp(prefix=prefix))
    srv = pgserver.get_server(pgdata, cleanup_mode="delete")
    url = srv.get_uri()
    with connect(url) as c:
        migrate(c, "skivi")
        if setup is not None:
            c.execute(setup)  # type: ignore[arg-type]
    server = PrivateServer(pgdata, url)
    try:
        yield server
    finally:
        server.stop_quietly()
        srv.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture
def private_server() -> Iterator[PrivateServer]:
    with private_postgres("skivi-private-") as server:
        yield server


@pytest.fixture
def private_engines(private_server: PrivateServer, tmp_path: Path) -> Iterator[EngineProcs]:
    """Engines on the private server, SIGKILLed at the end if still running."""
    procs = EngineProcs(private_server.url, Ledger(tmp_path / "ledger.txt"))
    try:
        yield procs
    finally:
        procs.stop_all()
