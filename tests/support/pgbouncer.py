"""A real PgBouncer in transaction mode, in front of the test server, for the fleet tests.

Debian's ``pgbouncer`` package (``./run-tests`` installs it where it may); ``PgBouncer.start``
writes a config into a temporary directory, runs it on a free local port (as ``nobody``
when we are root: PgBouncer refuses to run as root) and waits until it accepts connections.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["PgBouncer", "free_port", "pgbouncer_binary"]


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgBouncer:
    server_url: str  # a URL of the PostgreSQL server (any database: the pooler takes the name)
    pool_size: int = 10
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    directory: Path | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` (a URL or conninfo on the server) pointed at this PgBouncer."""
        return make_conninfo(database_url, host="127.0.0.1", port=str(self.port))

    def start(self) -> Self:
        binary = pgbouncer_binary()
        assert binary is not None, "pgbouncer is not installed"
        server = conninfo_to_dict(self.server_url)
        self.directory = Path(tempfile.mkdtemp(prefix="skivi-pgbouncer-"))
        os.chmod(self.directory, 0o777)
        self.port = free_port()
        user = server.get("user") or "postgres"
        (self.directory / "users.txt").write_text(f'"{user}" ""\n')
        (self.directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = host={server.get("host") or "127.0.0.1"} port={server.get("port") or 5432} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory / "users.txt"}
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 2000
max_db_connections = {self.pool_size}
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.directory / "pgbouncer.log"}
pidfile = {self.directory / "pgbouncer.pid"}
""")
        for f in self.directory.iterdir():
            os.chmod(f, 0o666)
        argv = [binary, str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        # PgBouncer writes every log line to stderr too: a pipe nobody reads fills (64 KiB,
        # a few hundred logins) and PgBouncer blocks on it, every client with it.
        stderr_path = self.directory / "stderr.log"
        with stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                err = stderr_path.read_text(errors="replace")
                raise AssertionError(f"pgbouncer exited with {self.proc.returncode}: {err}"
                                     f"{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"pgbouncer did not listen on {self.port}: "
                                         f"{self.log()}") from None
                time.sleep(0.05)

    def log(self) -> str:
        if self.directory is None or not (self.directory / "pgbouncer.log").exists():
            return ""
        return (self.directory / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
