"""The system: what ``create_system(config, tasks, crontabs)`` builds and ``start()`` runs.

A ``System`` is an ``Instance`` (skivi.instance: the validated configuration, the tasks,
the cron entries, the schema's named queries and the payload gate), the ``Client`` that
enqueues with it (skivi.client: its connection pools) and the launcher: ``start()``
applies pending migrations (unless ``migrate=False``) and forks the worker engine, which
runs the instance (see ``skivi.engine``). This is the only module that imports the engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from skivi.client import Client
from skivi.config import Config, load_config
from skivi.cron import CronEntry
from skivi.db import pool as dbpool
from skivi.db import queries
from skivi.db.migrate import Migration, migrate, pending_migrations, set_limits
from skivi.errors import RegistryError, SchemaNotMigrated, SkiviError
from skivi.events import Emitter, EventForwarder, EventReceiver
from skivi.instance import Handler, Instance
from skivi.payload import PayloadGate
from skivi.registry import TaskRegistry, TaskSource
from skivi.tasks import Tasks, TypedTask, bind_collections

__all__ = ["System", "create_system"]

logger = logging.getLogger(__name__)

EVENTS_DRAIN_TIMEOUT = 5.0
"""Seconds ``stop()`` waits for the engine's last events to be delivered."""


class System:
    """A Skivi system: an ``Instance`` (configuration, tasks, cron entries, queries, payload
    gate), the ``Client`` that enqueues with it, and the launcher of its engine.

    ``system.task`` declares typed tasks into it (``@system.task``, ``@system.task(...)``:
    see ``skivi.tasks``); it is the bound ``task`` method of the system's own ``Tasks``."""

    def __init__(self, config: Config,
                 tasks: Mapping[str, Handler | TaskSource] | None = None,
                 crontabs: Sequence[Mapping[str, Any]] | None = None) -> None:
        # Validated here, so a bad cron entry stops create_system with an error naming it.
        self.instance = Instance.build(config, tasks, crontabs)
        self.client = Client(self.instance)
        if tasks is not None:
            bind_collections(tasks, self)
        self._own_tasks = Tasks(self, on_declare=self._declared)
        self.task = self._own_tasks.task
        """``@system.task`` / ``@system.task(queue_name=..., ...)``: declare a typed task
        in this system's registry, bound to it (``skivi.tasks``; options as
        ``Tasks.task``). Declare before ``start()``."""
        self._engine_pid: int | None = None
        self.started = False
        self.emitter = Emitter(config.events.buffer_size)
        """This system's events (``skivi.monitoring.on(system.emitter, ...)``); in an
        application, those of the engine that ``start()`` forked arrive here too."""
        self._event_receiver: EventReceiver | None = None

    # What the instance is made of, for callers that hold the system.
    @property
    def config(self) -> Config:
        return self.instance.config

    @property
    def schema(self) -> str:
        return self.instance.schema

    @property
    def queries(self) -> queries.Queries:
        return self.instance.queries

    @property
    def payload_gate(self) -> PayloadGate:
        return self.instance.payload_gate

    @property
    def tasks(self) -> Mapping[str, Handler | TaskSource]:
        return self.instance.tasks

    @property
    def cron_entries(self) -> tuple[CronEntry, ...]:
        return self.instance.cron_entries

    @property
    def has_tasks(self) -> bool:
        return self.instance.has_tasks

    @property
    def database_url(self) -> str:
        return self.instance.database_url

    def registry(self) -> TaskRegistry:
        """The task registry (see ``Instance.registry``)."""
        return self.instance.registry()

    def _declared(self, typed: TypedTask[..., Any]) -> None:
        """A typed task declared with ``@system.task``: into the instance's tasks (the
        registry is built again on next use)."""
        if self._engine_pid is not None:
            raise SkiviError(f"task {typed.identifier!r}: this system's engine runs already; "
                             "declare tasks before start()")
        if typed.identifier in self.instance.tasks:
            raise RegistryError(f"task {typed.identifier!r} is registered in this system "
                                "already (create_system's tasks, or another @system.task)")
        self.instance = self.instance.with_tasks({**self.instance.tasks,
                                                  typed.identifier: typed})
        self.client.instance = self.instance

    def add_crontab_file(self, path: str) -> None:
        """Add the ``[[cron]]`` entries of a TOML file (``--crontab PATH``)."""
        self.instance = self.instance.with_crontab_file(path)

    # The client's connections, for callers that hold the system.
    @property
    def pool(self) -> ConnectionPool[Any]:
        return self.client.pool

    def pooled_connection(self) -> contextlib.AbstractContextManager[psycopg.Connection[Any]]:
        return self.client.pooled_connection()

    def async_pooled_connection(
            self) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        return self.client.async_pooled_connection()

    async def async_pool(self) -> AsyncConnectionPool[Any]:
        return await self.client.async_pool()

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
        emitter = Emitter(self.config.events.buffer_size)
        emitter.on_batch(forwarder)
        code = 1
        try:
            from skivi.engine import run
            from skivi.engine.process import detach, die_with_parent, shared_objects

            die_with_parent(signal.SIGTERM)
            if os.getppid() != app_pid:  # the application died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)
            # Let go of the application's sockets (this system's pools, its listeners, its
            # database connections) without closing them: see skivi.engine.process. The
            # engine runs the instance, never this system's client.
            detach(shared_objects([0, 1, 2, write_fd]))
            code = run(self.instance, emitter)
        except BaseException:
            logger.exception("engine process failed", extra={"action": "engine_failed"})
        finally:
            forwarder.close()  # the last batches, pool/stop included
            logging.shutdown()
            os._exit(code)

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
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_system(config: Config | Mapping[str, Any] | str | None = None,
                  tasks: Mapping[str, Handler | TaskSource] | None = None,
                  crontabs: Sequence[Mapping[str, Any]] | None = None) -> System:
    """Build a system from configuration (a ``Config``, a dict shaped like skivi.toml, or a
    path to a TOML file), a task registry (identifier -> handler, or a ``skivi.Tasks``
    collection, which this binds to the system) and cron entries."""
    cfg = config if isinstance(config, Config) else load_config(config)
    return System(cfg, tasks, crontabs)
