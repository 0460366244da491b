"""One database connection of the parent that rebuilds itself after it breaks.

Shared: the parent's parts (fetcher, completer, liveness, rescue, pruning, queue stats) do
their work on one connection, so an engine costs the server one connection (plus LISTEN's,
when used) however it is configured. Each unit of work holds it through ``session()``:
statements are autocommit, but the completer's multi-statement flush is a transaction, and
another part's claim must never land inside it.

PostgreSQL restarting, a dropped connection or ``pg_terminate_backend`` must not crash the
engine: a component asks ``get()`` for its connection, and reports ``broken()`` when a
statement on it failed in a way that leaves it unusable; the next ``get()`` reconnects,
waiting with jittered exponential backoff between attempts (``skivi.db.retry``: 0.05 s at
first, doubling, capped at ``max_delay``, each wait times uniform(0.5, 1.5)).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psycopg

from skivi.db import pool as dbpool
from skivi.db.retry import JITTER_AROUND, RetryBackoff

__all__ = ["Reconnecting"]

logger = logging.getLogger(__name__)


class Reconnecting:
    def __init__(self, url: str, name: str, *, connect_timeout: float = 10.0,
                 max_delay: float = 2.0, prepared_statements: bool = True,
                 on_connect: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]
                 | None = None,
                 on_lost: Callable[[str, BaseException | str], None] | None = None,
                 on_connected: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.name = name
        self.connect_timeout = connect_timeout
        self.prepared_statements = prepared_statements
        self.max_delay = max_delay
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.on_connected = on_connected
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._use = asyncio.Lock()
        self.reconnects = 0
        self.closed = False

    @property
    def connection(self) -> psycopg.AsyncConnection[Any] | None:
        return self._conn

    async def get(self, *, retry: bool = True) -> psycopg.AsyncConnection[Any]:
        """The connection, made (again) if there is none. With ``retry`` a failed connect
        is retried with backoff until it works or this is closed; without, its error is
        raised (for a caller whose own loop paces retries and must stay stoppable: the
        cron scheduler)."""
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if not retry:
            async with self._lock:
                return await self._connect()
        async with self._lock:
            backoff = RetryBackoff(0.05, self.max_delay, jitter=JITTER_AROUND)
            while self._conn is None or self._conn.closed:
                if self.closed:
                    raise psycopg.OperationalError(f"{self.name}: connection closed")
                try:
                    await self._connect()
                except psycopg.Error as exc:
                    if self.on_lost is not None:
                        self.on_lost(self.name, exc)
                    wait = backoff.next()
                    logger.warning("%s: cannot connect (%s); retrying in %.2fs", self.name,
                                   exc, wait, extra={"action": "reconnect_failed"})
                    await asyncio.sleep(wait)
            return self._conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self.closed:
            raise psycopg.OperationalError(f"{self.name}: connection closed")
        conn = await dbpool.connect_async(self.url, application_name=self.name,
                                          connect_timeout=self.connect_timeout,
                                          prepared_statements=self.prepared_statements)
        if self.on_connect is not None:
            await self.on_connect(conn)
        self._conn = conn
        if self.on_connected is not None:
            self.on_connected(self.name)
        if self.reconnects:
            logger.info("%s: reconnected", self.name, extra={"action": "reconnect"})
        self.reconnects += 1
        return conn

    @contextlib.asynccontextmanager
    async def session(self, *, retry: bool = True
                      ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, for this caller alone until the block ends (FIFO among callers).
        A block that raises (cancellation included) is judged here, while nobody else can
        be using the connection: left mid-statement or in a transaction, it is dropped."""
        async with self._use:
            conn = await self.get(retry=retry)
            try:
                yield conn
            except BaseException:
                self._judge()
                raise

    def broken(self) -> None:
        """The last statement failed: drop the connection if it is no longer usable. While
        another caller holds a session, only a closed or broken connection is dropped: its
        transaction state is that caller's, not a sign of trouble."""
        conn = self._conn
        if conn is None:
            return
        if self._use.locked():
            if conn.closed or conn.broken:
                self._judge()
            return
        self._judge()

    def _judge(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.closed or conn.broken or conn.info.transaction_status not in (
                psycopg.pq.TransactionStatus.IDLE,):
            self._conn = None
            if self.on_lost is not None:
                self.on_lost(self.name, "connection broken" if conn.closed or conn.broken
                             else "connection left in a transaction")
            if not conn.closed:
                asyncio.get_running_loop().create_task(self._close_quietly(conn))

    @staticmethod
    async def _close_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    async def close(self) -> None:
        self.closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._close_quietly(conn)

    def fileno(self) -> int | None:
        conn = self._conn
        if conn is None or conn.closed:
            return None
        try:
            return conn.pgconn.socket
        except psycopg.Error:
            return None
