"""The system: what ``create_system(config, tasks, crontabs)`` builds and ``start()`` runs.

A ``System`` holds the validated configuration, the task registry and the cron entries,
plus the pieces every enqueue needs (the schema's named queries, the payload gate and a
small connection pool). ``start()`` applies pending migrations (unless ``migrate=False``);
the worker engine and the cron scheduler start from here too (see ``skivi.engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from skivi.config import Config, load_config
from skivi.cron import CronEntry, ensure_unique, load_crontab_file, parse_crontabs
from skivi.db import pool as dbpool
from skivi.db import queries
from skivi.db.migrate import Migration, migrate, pending_migrations, set_limits
from skivi.errors import ConfigError, SchemaNotMigrated
from skivi.events import Emitter, EventForwarder, EventReceiver
from skivi.payload import PayloadGate
from skivi.registry import TaskRegistry

__all__ = ["System", "create_system"]

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]

EVENTS_DRAIN_TIMEOUT = 5.0
"""Seconds ``stop()`` waits for the engine's last events to be delivered."""


class System:
    """A Skivi instance: configuration, tasks, cron entries and database access."""

    def __init__(self, config: Config, tasks: Mapping[str, Handler] | None = None,
                 crontabs: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.config = config
        self.tasks: dict[str, Handler] = dict(tasks or {})
        self.crontabs: list[Mapping[str, Any]] = [*config.cron, *(crontabs or [])]
        # Validated here, so a bad entry stops create_system with an error naming it.
        self.cron_entries: list[CronEntry] = parse_crontabs(self.crontabs)
        self.schema = config.database.schema_name
        self.queries = queries.for_schema(self.schema)
        self.payload_gate = PayloadGate(config.validation.max_payload_bytes,
                                        config.validation.tasks)
        self._lock = threading.Lock()
        self._pool: ConnectionPool[Any] | None = None
        self._async_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = {}
        self._registry: TaskRegistry | None = None
        self._engine_pid: int | None = None
        self.started = False
        self.emitter = Emitter(config.events.buffer_size)
        """This system's events (``skivi.monitoring.on(system.emitter, ...)``); in an
        application, those of the engine that ``start()`` forked arrive here too."""
        self._event_receiver: EventReceiver | None = None

    def registry(self) -> TaskRegistry:
        """The task registry: files of worker.task_directory (alphabetical order), then the
        programmatic dict, which wins on identifiers present in both. Built once."""
        if self._registry is None:
            w = self.config.worker
            self._registry = TaskRegistry.build(self.tasks, w.task_directory,
                                                w.file_extensions)
        return self._registry

    def add_crontab_file(self, path: str) -> None:
        """Add the ``[[cron]]`` entries of a TOML file (``--crontab PATH``)."""
        entries = [*self.cron_entries, *load_crontab_file(path)]
        ensure_unique(entries)
        self.cron_entries = entries

    @property
    def has_tasks(self) -> bool:
        return bool(self.tasks) or self.config.worker.task_directory is not None

    @property
    def database_url(self) -> str:
        url = self.config.database.connection_string
        if not url:
            raise ConfigError(
                "database.connection_string: no database configured; set it in skivi.toml, "
                "or set SKIVI_DATABASE_URL or DATABASE_URL")
        return url

    @property
    def pool(self) -> ConnectionPool[Any]:
        """A small pool of autocommit connections for enqueueing without a connection.

        Made on first use, after one connection was opened and closed: a pool retries in
        the background and would only time out (after 30 s), with the cause in a log line,
        so an unreachable database or a refused login raises DatabaseUnavailable (naming
        the server and the cause) within ``database.connect_timeout`` instead, and no pool
        is kept: the next call tries again."""
        with self._lock:
            if self._pool is None:
                db = self.config.database
                dbpool.check_reachable(self.database_url, application_name="skivi-client",
                                       connect_timeout=db.connect_timeout)
                self._pool = dbpool.make_pool(
                    self.database_url, max_size=db.pool_max_size,
                    application_name="skivi-client", connect_timeout=db.connect_timeout,
                    prepared_statements=db.prepared_statements)
            return self._pool

    @contextlib.contextmanager
    def pooled_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """``pool.connection()``, but when the pool times out one direct attempt tells a
        database gone away (DatabaseUnavailable, with the cause) from a busy pool (the
        pool's own PoolTimeout)."""
        pool = self.pool
        try:
            conn = pool.getconn()
        except PoolTimeout:
            dbpool.check_reachable(self.database_url, application_name="skivi-client",
                                   connect_timeout=self.config.database.connect_timeout)
            raise
        try:
            with conn:  # commit, or roll back on error, as pool.connection() does
                yield conn
        finally:
            pool.putconn(conn)

    @contextlib.asynccontextmanager
    async def async_pooled_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The async twin of ``pooled_connection``."""
        pool = await self.async_pool()
        try:
            conn = await pool.getconn()
        except PoolTimeout:
            await dbpool.check_reachable_async(
                self.database_url, application_name="skivi-client",
                connect_timeout=self.config.database.connect_timeout)
            raise
        try:
            async with conn:
                yield conn
        finally:
            await pool.putconn(conn)

    async def async_pool(self) -> AsyncConnectionPool[Any]:
        """The async twin of ``pool``, one per event loop (a pool is bound to its loop)."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            db = self.config.database
            await dbpool.check_reachable_async(
                self.database_url, application_name="skivi-client",
                connect_timeout=db.connect_timeout)
            pool = dbpool.make_async_pool(
                self.database_url, max_size=db.pool_max_size,
                application_name="skivi-client", connect_timeout=db.connect_timeout,
                prepared_statements=db.prepared_statements)
            self._async_pools[loop] = pool
            await pool.open()
        return pool

    def migrate(self) -> list[Migration]:
        """Apply pending migrations, and give the database this configuration's payload
        limit (the SQL enqueue functions check it); returns the migrations applied."""
        with dbpool.connect(self.database_url, application_name="skivi-migrate",
                            connect_timeout=self.config.database.connect_timeout) as conn:
            applied = migrate(conn, self.schema,
                              lock_timeout=self.config.database.migration_lock_timeout)
            set_limits(conn, self.queries, self.config.validation.max_payload_bytes)
            return applied

    def pending_migrations(self) -> list[Migration]:
        """Migrations not applied yet (read-only). Raises SchemaTooNew for a newer schema."""
        with dbpool.connect(self.database_url, application_name="skivi-migrate",
                            connect_timeout=self.config.database.connect_timeout) as conn:
            return pending_migrations(conn, self.schema)

    def check_migrated(self, why: str) -> None:
        """Raise SchemaNotMigrated, naming the missing migrations, when the schema lacks any
        (SchemaTooNew when it is newer than this version)."""
        pending = self.pending_migrations()
        if pending:
            raise SchemaNotMigrated(
                f"schema {self.schema} has pending migrations "
                f"({', '.join(m.name for m in pending)}) and {why}; run `skivi migrate` "
                "first")

    def start(self, migrate: bool = True, engine: bool | None = None) -> None:
        """Migrate (unless ``migrate=False``), then start the worker engine in a process of
        its own (forked from this one, so handlers defined here, closures included, just
        work). The engine starts when the system has tasks (``engine=None``), or as told.
        A system without tasks only enqueues: starting an engine there would exhaust every
        job as having no handler."""
        if engine is None:
            engine = self.has_tasks
        if migrate:
            applied = self.migrate()
            if applied:
                logger.info("schema %s migrated to %s", self.schema, applied[-1].name,
                            extra={"action": "migrate_schema"})
        elif engine:
            self.check_migrated("start(migrate=False) was asked")
        if engine and self._engine_pid is None:
            self.registry()  # a broken task file fails here, in the caller's process
            self._engine_pid = self._fork_engine()
        self.started = True

    def _fork_engine(self) -> int:
        """Fork the engine process. It keeps the application's open files (its log files,
        say) but none of its sockets or pipes, drains (SIGTERM) if the
        application dies, and forwards its events to the application over a pipe."""
        read_fd, write_fd = os.pipe()
        app_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(write_fd)
            self._event_receiver = EventReceiver(read_fd, self.emitter)
            self._event_receiver.start()
            return pid
        # The application's handlers run in the application (once, on its receiver
        # thread), so the engine gets a fresh emitter whose only subscriber forwards.
        os.close(read_fd)
        forwarder = EventForwarder(write_fd)
        self.emitter = Emitter(self.config.events.buffer_size)
        self.emitter.on_batch(forwarder)
        self._event_receiver = None
        code = 1
        try:
            from skivi.engine import run
            from skivi.engine.process import detach, die_with_parent, shared_objects

            die_with_parent(signal.SIGTERM)
            if os.getppid() != app_pid:  # the application died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            # Let go of the application's sockets (this system's pools, its listeners, its
            # database connections) without closing them: see skivi.engine.process.
            detach(shared_objects([0, 1, 2, write_fd]))
            self.forget_connections()
            code = run(self)
        except BaseException:
            logger.exception("engine process failed", extra={"action": "engine_failed"})
        finally:
            forwarder.close()  # the last batches, pool/stop included
            logging.shutdown()
            os._exit(code)

    def forget_connections(self) -> None:
        """In a forked process: drop (never close) the connections inherited from the parent,
        whose sockets the parent still uses."""
        self._pool = None
        self._async_pools = {}
        self._lock = threading.Lock()

    @property
    def engine_pid(self) -> int | None:
        return self._engine_pid

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the engine (graceful: SIGTERM, then wait up to the shutdown timeout plus a
        margin, then SIGKILL) and close connections. Idempotent. Returns the engine's exit
        code, or None if no engine ran."""
        code: int | None = None
        pid, self._engine_pid = self._engine_pid, None
        if pid is not None:
            if timeout is None:
                timeout = self.config.worker.shutdown_timeout + 15.0
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    _, status = os.waitpid(pid, 0)
                    code = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.01)
        # Deliver what the engine sent before it exited (pool/stop included).
        receiver, self._event_receiver = self._event_receiver, None
        if receiver is not None and not receiver.join(EVENTS_DRAIN_TIMEOUT):
            logger.warning("engine events still arriving after %.0fs; not waiting",
                           EVENTS_DRAIN_TIMEOUT, extra={"action": "drain_events"})
        self.started = False
        self.close()
        return code

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        for loop, apool in list(self._async_pools.items()):
            if not loop.is_closed() and loop.is_running():
                loop.create_task(apool.close())
        self._async_pools.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_system(config: Config | Mapping[str, Any] | str | None = None,
                  tasks: Mapping[str, Handler] | None = None,
                  crontabs: Sequence[Mapping[str, Any]] | None = None) -> System:
    """Build a system from configuration (a ``Config``, a dict shaped like skivi.toml, or a
    path to a TOML file), a task registry (identifier -> handler) and cron entries."""
    cfg = config if isinstance(config, Config) else load_config(config)
    return System(cfg, tasks, crontabs)
