"""An embedded PostgreSQL for demos and tests, run from a data folder (pgserver).

The engine never starts this by itself in production: a Skivi system always works on the
database its configuration names. Only the README's demo and test scripts (``./run-demo``,
``./run-tests``) and the test-suite call ``start_embedded``, and only when no database URL is
set, so that trying Skivi out needs no PostgreSQL installed.

The server is pgserver's prebuilt PostgreSQL, listening on a unix socket only (no TCP port,
so two checkouts never collide). It outlives the process that started it: the next
``start_embedded`` on the same folder reuses it, which keeps reruns fast. ``stop_embedded``
stops it; deleting the folder afterwards removes every trace.
"""

from __future__ import annotations

import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

from skivi.errors import EmbeddedDatabaseError

__all__ = ["embedded_running", "pid_alive", "start_embedded", "stop_embedded"]

INSTALL_HINT = (
    "pip install 'skivi[embedded]' to let Skivi start an embedded PostgreSQL, "
    "or set SKIVI_DATABASE_URL to the URL of a PostgreSQL database"
)
STOP_TIMEOUT = 30.0


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # pgserver looks up its runtime folder at import time and warns when
            # XDG_RUNTIME_DIR is unset (it falls back to a temporary folder, which is fine).
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver
    except ImportError as exc:
        raise EmbeddedDatabaseError(
            f"the embedded PostgreSQL needs the pgserver package, which is not installed: "
            f"{INSTALL_HINT}"
        ) from exc
    return pgserver


def start_embedded(data_dir: str | Path) -> str:
    """Start the PostgreSQL kept in ``data_dir`` (created and initialised if needed), or
    reuse the one already running from it; return its URL (a unix-socket URI to the
    ``postgres`` database as the ``postgres`` superuser, no password).

    Raises ``EmbeddedDatabaseError`` if pgserver is missing or the server does not start.
    """
    path = Path(data_dir).expanduser().resolve()
    pgserver = _pgserver()
    try:
        # Made here, not by pgserver, so two processes starting at once do not race on it.
        path.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: keep the server running when this process exits, for reuse.
        server = pgserver.get_server(path, cleanup_mode=None)
        return str(server.get_uri())
    except Exception as exc:
        log = path / "log"
        hint = f"; see the server log {log}" if log.exists() else ""
        raise EmbeddedDatabaseError(
            f"could not start the embedded PostgreSQL in {path}: {exc}{hint}"
        ) from exc


def _postmaster_pid(path: Path) -> int | None:
    try:
        first = (path / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """A process with this id exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def embedded_running(data_dir: str | Path) -> bool:
    """Whether an embedded PostgreSQL is running from ``data_dir``."""
    pid = _postmaster_pid(Path(data_dir).expanduser().resolve())
    return pid is not None and pid_alive(pid)


def stop_embedded(data_dir: str | Path, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded PostgreSQL running from ``data_dir`` (a fast shutdown: sessions
    are disconnected, the data is kept). Returns False if none was running."""
    path = Path(data_dir).expanduser().resolve()
    pid = _postmaster_pid(path)
    if pid is None or not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGINT)  # SIGINT is PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    # PostgreSQL removes postmaster.pid as it exits; the pid check covers a crash on the way.
    while _postmaster_pid(path) == pid and pid_alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL in {path} (pid {pid}) did not stop within {timeout:g}s"
            )
        time.sleep(0.05)
    return True
