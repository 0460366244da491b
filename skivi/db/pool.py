"""Connections: how Skivi opens them (which database errors are worth retrying is
``skivi.db.retry``).

Every connection Skivi opens reads json/jsonb with orjson (several times faster than the
stdlib decoder psycopg uses by default) and names itself through ``application_name`` so an
operator can tell Skivi's sessions apart in ``pg_stat_activity``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from skivi.db.retry import refused_for_good, unusable_url
from skivi.errors import DatabaseUnavailable

__all__ = [
    "check_reachable",
    "check_reachable_async",
    "configure",
    "connect",
    "connect_async",
    "describe_server",
    "make_async_pool",
    "make_pool",
    "unavailable",
]

_ATTEMPT_PREFIX = re.compile(r"^(connection failed: )?(connection to server .*? failed: )?")


def describe_server(url: str) -> str:
    """Where ``url`` points, for an operator (never the password): ``host:port``, several
    of them comma-separated, or the local socket."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unparsable connection string"
    host = str(params.get("host") or params.get("hostaddr") or "")
    port = str(params.get("port") or "5432")
    if not host or host.startswith("/"):
        return f"the local socket {host or 'default'} (port {port})"
    hosts, ports = host.split(","), port.split(",")
    return ",".join(f"{h}:{ports[i] if i < len(ports) else ports[-1]}"
                    for i, h in enumerate(hosts))


def unavailable(url: str, exc: psycopg.Error) -> DatabaseUnavailable:
    """``exc`` (a failed connection attempt to ``url``) as the error an operator reads."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # libpq says 'connection failed: connection to server at "h", port p failed: <why>',
    # then a hint line; the server is named separately, so keep only <why>.
    cause = _ATTEMPT_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    return DatabaseUnavailable(describe_server(url), cause, refused=refused_for_good(exc))


def check_reachable(url: str, *, application_name: str = "skivi",
                    connect_timeout: float = 10.0) -> None:
    """Open and close one connection, raising DatabaseUnavailable (naming the server and
    the cause) if that fails within ``connect_timeout``. A pool cannot do this: it retries
    in the background and only times out, with the cause in a log line."""
    try:
        connect(url, application_name=application_name,
                connect_timeout=connect_timeout).close()
    except psycopg.OperationalError as exc:
        if unusable_url(exc):
            raise
        raise unavailable(url, exc) from exc


async def check_reachable_async(url: str, *, application_name: str = "skivi",
                                connect_timeout: float = 10.0) -> None:
    """The async twin of ``check_reachable``."""
    try:
        conn = await connect_async(url, application_name=application_name,
                                   connect_timeout=connect_timeout)
    except psycopg.OperationalError as exc:
        if unusable_url(exc):
            raise
        raise unavailable(url, exc) from exc
    await conn.close()


def configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(orjson.loads, conn)


def _kwargs(application_name: str, connect_timeout: float) -> dict[str, Any]:
    return {"application_name": application_name, "connect_timeout": max(1, int(connect_timeout))}


def connect(url: str, *, autocommit: bool = True, application_name: str = "skivi",
            connect_timeout: float = 10.0,
            prepared_statements: bool = True) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, **_pool_kwargs(application_name, connect_timeout,
                                               prepared_statements, autocommit))
    configure(conn)
    return conn


async def connect_async(url: str, *, autocommit: bool = True, application_name: str = "skivi",
                        connect_timeout: float = 10.0,
                        prepared_statements: bool = True) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(
        url, **_pool_kwargs(application_name, connect_timeout, prepared_statements,
                            autocommit))
    configure(conn)
    return conn


def _pool_kwargs(application_name: str, connect_timeout: float,
                 prepared_statements: bool, autocommit: bool = True) -> dict[str, Any]:
    kwargs = {**_kwargs(application_name, connect_timeout), "autocommit": autocommit}
    if not prepared_statements:
        kwargs["prepare_threshold"] = None
    return kwargs


def make_pool(url: str, *, max_size: int, application_name: str = "skivi",
              connect_timeout: float = 10.0,
              prepared_statements: bool = True) -> ConnectionPool[Any]:
    """Autocommit connections: a single enqueue statement is its own transaction, one round
    trip; callers that need several statements open ``conn.transaction()`` explicitly.
    ``prepared_statements=False`` (database.prepared_statements) never prepares."""
    return ConnectionPool(
        url, min_size=1, max_size=max_size, open=True, configure=configure,
        kwargs=_pool_kwargs(application_name, connect_timeout, prepared_statements),
        name=application_name,
    )


def make_async_pool(url: str, *, max_size: int, application_name: str = "skivi",
                    connect_timeout: float = 10.0,
                    prepared_statements: bool = True) -> AsyncConnectionPool[Any]:
    async def configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
        configure(conn)

    return AsyncConnectionPool(
        url, min_size=1, max_size=max_size, open=False, configure=configure_async,
        kwargs=_pool_kwargs(application_name, connect_timeout, prepared_statements),
        name=application_name,
    )
