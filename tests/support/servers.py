"""A PostgreSQL server of a test's own (embedded, from the pgserver package), so a test can
restart or stop it without disturbing anything else (the engine tests' ``private_server``,
the chaos test's ``chaos_server``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.db import connect

__all__ = ["PrivateServer", "private_postgres"]


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
        # pgserver's cleanup stops the first postmaster it knows of if it still looks alive,
        # and a postmaster the test stopped can exit between that look and the terminate
        # (psutil.NoSuchProcess): the server is down either way, so only the directory is
        # left to remove.
        import psutil

        try:
            srv.cleanup()
        except psutil.NoSuchProcess:
            shutil.rmtree(pgdata, ignore_errors=True)
        shutil.rmtree(pgdata, ignore_errors=True)
