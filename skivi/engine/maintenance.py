"""Liveness and rescue: the engine's identity, its lease, and the rescuer of jobs held by
engines that died.

Identity and lease. ``register()`` inserts a row in the engine table: the engine's lease.
Every worker.heartbeat_interval its heartbeat_at is set to the database's now() (with the
number of jobs in flight and the ids of those started); an engine whose heartbeat is older
than its lease_timeout, on the database's clock, is dead. Nothing depends on the session
(no advisory lock, no LISTEN), so an engine works through a transaction-mode pooler: every
statement here is its own transaction. If the row is gone when the engine heartbeats
(another engine declared it dead and rescued its jobs), it takes a new identity: results
for the old claims are then refused by the guards, which is right, since those jobs run
again elsewhere.

Cancel requests ride on the heartbeat (engine_heartbeat.sql): each one returns the claims
of this engine whose cancel was requested, handed to ``on_cancels`` (the supervisor stops
those jobs), so an engine learns of a request within a heartbeat_interval with or without
LISTEN; ``poke()`` (a 'cancel:<engine>' NOTIFY came) runs a heartbeat at once. When it also
says that some request's job is no longer claimed, job_cancel_sweep.sql settles those.

Rescue. Every worker.rescue_interval, job_rescue.sql makes the jobs of dead engines
(heartbeat older than their lease; every ``ORPHAN_ROUNDS`` rounds also jobs held by an
engine that has no row at all) runnable again. Any engine may run it; SKIP LOCKED on the
dead engines' rows makes concurrent rescuers safe. An engine rescues others only once it
has itself been connected for a whole lease without a failed statement: after an outage
that cut everybody off (a network fault, a failover), every live engine's heartbeat is
stale, and the first one back must give the others a lease to heartbeat again before it
judges them. The database itself does the same after a restart (restart_grace). The same
round then gives back the limit keys the rescued engines' jobs held (limit_key_stale.sql,
which on the orphan rounds also gives back any hold whose claim is over).

History pruning. ``HistoryPruner`` deletes job_history rows (completed and exhausted jobs)
older than worker.history_retention, and kept results (job_result) older than
worker.result_retention, in bounded batches, on one engine at a time: each round is one
statement per table (job_history_prune.sql, job_result_prune.sql) that deletes only if it
gets a transaction-level advisory lock, so the engines that lose the race that round read
nothing and wait for the next.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import psycopg

from skivi.db.queries import (
    Queries,
    engine_deregister,
    engine_heartbeat,
    engine_register,
    job_cancel_sweep,
    job_history_prune,
    job_queue_prune,
    job_rescue,
    job_result_prune,
    limit_key_drop_many,
    limit_key_stale,
)
from skivi.db.retry import JITTER_AROUND, RetryBackoff, retrying
from skivi.engine.connection import Reconnecting
from skivi.engine.service import cancel_and_wait, every
from skivi.errors import SchemaNotMigrated

__all__ = ["HistoryPruner", "Liveness"]

logger = logging.getLogger(__name__)

# Registration errors that waiting cannot fix: the schema, or part of it, is not there.
NOT_MIGRATED = (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedColumn,
                psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable)


RESTART_GRACE_MIN = 10.0
ORPHAN_ROUNDS = 10
"""The orphan probe (jobs held by an engine without a row: a row deleted by hand, or by a
deregister that raced a claim) reads every claimed job, of every engine, so the fleet as a
whole runs it about one rescue round in this many: each engine one round in this many times
the number of engines it last saw (its first round always does)."""


class Liveness:
    def __init__(self, db: Reconnecting, queries: Queries, *, version: str,
                 heartbeat_interval: float, lease_timeout: float, rescue_interval: float,
                 processes: int, concurrency: int, in_flight: Callable[[], int],
                 running: Callable[[], list[int]] = list,
                 on_rescued: Callable[[list[int], int, int], None] | None = None,
                 on_new_identity: Callable[[int], None] | None = None,
                 on_cancels: Callable[[set[tuple[int, int]]], None] | None = None) -> None:
        self.db = db
        self.on_cancels = on_cancels
        self._poked = asyncio.Event()
        self.swept = 0
        """Cancel requests settled by this engine's sweeps."""
        self.q = queries
        self.version = version
        self.heartbeat_interval = heartbeat_interval
        self.lease_timeout = lease_timeout
        self.rescue_interval = rescue_interval
        self.processes = processes
        self.concurrency = concurrency
        self.in_flight = in_flight
        self.running = running
        self.on_rescued = on_rescued
        self.on_new_identity = on_new_identity
        # Long enough for live engines to notice a server restart and heartbeat again: they
        # reconnect with a backoff of at most 2 s, then heartbeat within an interval.
        self.restart_grace = max(RESTART_GRACE_MIN, 3 * rescue_interval,
                                 2 * heartbeat_interval)
        self.engine_id = 0
        self.stopping = False
        self._rounds = 0
        self._fleet = 1  # engine rows seen by the last rescue round
        self._conn: Any = None  # the connection the last statement ran on
        self._settled_at = 0.0  # monotonic time from which this engine may judge others
        self._cut_off = False  # registering after failures, or again after being declared dead
        self._tasks: list[asyncio.Task[None]] = []

    async def register(self) -> int:
        async with self.db.session() as conn:
            self.engine_id = await engine_register.run_async(
                conn, self.q, hostname=socket.gethostname(), pid=os.getpid(),
                version=self.version, lease_timeout=self.lease_timeout,
                processes=self.processes, concurrency=self.concurrency)
        # A fresh engine may rescue at once (the database was there when it started; a
        # restart is covered by restart_grace): it frees the jobs of the engine it replaces.
        # One that could not reach the database at first, or was declared dead, waits.
        self._conn = conn
        if self._cut_off:
            self._settled_at = time.monotonic() + self.lease_timeout
            self._cut_off = False
        logger.info("engine %d registered", self.engine_id,
                    extra={"action": "register_engine", "engine": self.engine_id})
        return self.engine_id

    async def register_retrying(self, max_delay: float = 5.0) -> int:
        """``register()`` until it succeeds: an engine starting while the server restarts
        or fails over waits for it (the caller cancels this to give up) instead of dying.
        Any database error but an unmigrated schema is retried, 0.1 s at first, doubling up
        to ``max_delay``, jittered (``skivi.db.retry``)."""
        def failed(exc: BaseException, wait: float) -> None:
            self._cut_off = True
            logger.warning("cannot register the engine (%s); retrying in %.1fs", exc, wait,
                           extra={"action": "register_failed"})

        return await retrying(self._register_once,
                              backoff=RetryBackoff(0.1, max_delay, jitter=JITTER_AROUND),
                              retry_if=lambda exc: isinstance(exc, psycopg.Error),
                              on_retry=failed)

    async def _register_once(self) -> int:
        try:
            return await self.register()
        except NOT_MIGRATED as exc:
            self.db.broken()
            raise SchemaNotMigrated(
                f"schema {self.q.schema} is not migrated for this version of Skivi "
                f"({str(exc).strip()}); run `skivi migrate` first") from exc
        except BaseException:
            # A failed statement, or given up mid-statement (cancelled): the connection may
            # be busy with it or broken, never reuse it as it is.
            self.db.broken()
            raise

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._heartbeats(), name="heartbeat"),
                       loop.create_task(self._rescues(), name="rescuer")]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def deregister(self) -> None:
        if not self.engine_id:
            return  # never registered
        try:
            await asyncio.wait_for(self._deregister(), 5.0)
        except (psycopg.Error, TimeoutError) as exc:
            logger.warning("could not deregister engine %d: %s", self.engine_id, exc,
                           extra={"action": "deregister_failed"})

    async def _deregister(self) -> None:
        async with self.db.session() as conn:
            await engine_deregister.run_async(conn, self.q, engine=self.engine_id)

    def _seen(self, conn: Any) -> None:
        """A statement ran on ``conn``: a new connection (the old one broke) means this
        engine was cut off for a while, and so perhaps was everybody: it waits a lease
        before judging anyone."""
        if conn is not self._conn:
            self._conn = conn
            self._settled_at = time.monotonic() + self.lease_timeout

    def unsettle(self) -> None:
        """A statement failed: the same wait as after a reconnection."""
        self._conn = None

    async def _new_identity(self, why: str) -> None:
        old = self.engine_id
        self._cut_off = True
        await self.register()
        logger.error("engine %d %s; now engine %d", old, why, self.engine_id,
                     extra={"action": "new_identity"})
        if self.on_new_identity is not None:
            self.on_new_identity(self.engine_id)

    def poke(self) -> None:
        """Heartbeat now (a cancel request for this engine was notified)."""
        self._poked.set()

    async def heartbeat(self) -> None:
        swept = 0
        try:
            async with self.db.session() as conn:
                self._seen(conn)
                alive = await engine_heartbeat.run_async(
                    conn, self.q, engine=self.engine_id, in_flight=self.in_flight(),
                    stopping=self.stopping, running=self.running())
                if alive is not None and alive.strays:
                    swept = await job_cancel_sweep.run_async(conn, self.q)
        except BaseException:
            self.unsettle()
            raise
        if alive is None:
            await self._new_identity("was declared dead")
            return
        if swept:
            self.swept += swept
            logger.info("settled %d cancel request(s) whose jobs ended otherwise", swept,
                        extra={"action": "sweep_cancels"})
        if alive.cancel_ids and self.on_cancels is not None:
            self.on_cancels(set(zip(alive.cancel_ids, alive.cancel_leases, strict=True)))

    async def rescue(self) -> tuple[list[int], int, int]:
        if time.monotonic() < self._settled_at:
            return [], 0, 0
        self._rounds += 1
        try:
            async with self.db.session() as conn:
                self._seen(conn)
                if time.monotonic() < self._settled_at:
                    return [], 0, 0
                orphans = self._rounds % (ORPHAN_ROUNDS * self._fleet) == 1
                row = await job_rescue.run_async(
                    conn, self.q, engine=self.engine_id, restart_grace=self.restart_grace,
                    orphans=orphans)
                if row.engines or orphans:
                    # The rescued engines' limit keys (their jobs wait again, and run under
                    # their limits once the keys are given back), and any hold whose claim
                    # is over (a safety net).
                    stale = await limit_key_stale.run_async(conn, self.q)
                    if stale is not None:
                        await limit_key_drop_many.run_async(conn, self.q, holds=stale)
        except BaseException:
            self.unsettle()
            raise
        engines, retried, exhausted = list(row.engines), int(row.retried), int(row.exhausted)
        self._fleet = max(1, int(row.fleet))
        if engines:
            logger.warning("rescued the jobs of dead engines %s: %d back to waiting, %d "
                           "exhausted", engines, retried, exhausted,
                           extra={"action": "rescue_jobs", "engines": engines})
            if self.on_rescued is not None:
                self.on_rescued(engines, retried, exhausted)
        return engines, retried, exhausted

    async def _heartbeats(self) -> None:
        await every(self.heartbeat_interval, self.heartbeat, db=self.db, what="heartbeat",
                    action="heartbeat_failed", first_delay=self.heartbeat_interval,
                    wake=self._poked)

    async def _rescues(self) -> None:
        # The first round runs at once: an engine starting after a crash frees the jobs of
        # the engine it replaces without waiting a full interval.
        await every(self.rescue_interval, self._rescue_round, db=self.db, what="rescue",
                    action="rescue_failed")

    async def _rescue_round(self) -> None:
        await self.rescue()


class HistoryPruner:
    """Deletes history older than ``retention`` seconds, one engine at a time, and the rows of
    serial queues that have no job left (any engine: see job_queue_prune.sql).

    Every ``interval`` seconds a round runs job_history_prune.sql: one statement, its own
    transaction (the connection is autocommit), that takes the transaction-level advisory
    lock (``LOCK_CLASS``, hashtext(schema)) with ``pg_try_advisory_xact_lock`` and, only if it
    got it, deletes up to ``batch_size`` of the oldest expired rows. A round that comes back
    full runs the next one at once, so a backlog (a retention just shortened, an engine down
    for days) is caught up in short transactions instead of one long one; otherwise the
    pruner sleeps ``interval``. When another engine holds the lock, the round deletes nothing.

    Lifecycle (skivi.engine.service): ``start()`` returns once the loop task runs (its
    first round starts at once); ``stop()`` is idempotent, safe before ``start()``, and
    returns once the task is gone. A failed round is logged and retried after ``interval``.
    """

    LOCK_CLASS = 0x736B7670
    """The advisory-lock class of history pruning ('skvp'), in the high 32 bits of the
    single-bigint key (see job_history_prune.sql)."""

    RESULT_LOCK_CLASS = 0x736B7672
    """The advisory-lock class of result pruning ('skvr'), see job_result_prune.sql."""

    INTERVAL_MAX = 60.0
    INTERVAL_MIN = 0.5

    BATCH_SIZE_DEFAULT = 2000
    """Small: the pruner shares the parent's one connection with claims and completions,
    and a full batch runs the next at once, so a backlog still goes quickly."""
    QUEUE_BATCH = 1000

    def __init__(self, db: Reconnecting, queries: Queries, retention: float,
                 interval: float | None = None, *, batch_size: int = BATCH_SIZE_DEFAULT,
                 result_retention: float | None = None) -> None:
        if retention <= 0:
            raise ValueError(f"retention must be positive seconds, got {retention!r}")
        if result_retention is not None and result_retention <= 0:
            raise ValueError(
                f"result_retention must be positive seconds, got {result_retention!r}")
        if interval is None:
            # A minute, unless a retention is shorter than two: a result kept 10 s must not
            # linger for a minute.
            shortest = min(retention, result_retention or retention)
            interval = min(self.INTERVAL_MAX, max(self.INTERVAL_MIN, shortest / 2))
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, got {interval!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        self.db = db
        self.q = queries
        self.retention = retention
        self.result_retention = result_retention
        """Seconds a kept result lives; None: results are not pruned (tests only)."""
        self.interval = interval
        self.batch_size = batch_size
        self.rounds = 0
        """Rounds run, whether or not they got the lock."""
        self.deleted = 0
        """History rows deleted by this pruner since it was built."""
        self.results_deleted = 0
        """Kept results (job_result) deleted by this pruner since it was built."""
        self.queues_removed = 0
        """Empty serial-queue rows (job_queue) removed by this pruner since it was built."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="history-pruner")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    async def prune(self) -> tuple[bool, int]:
        """One round: (whether this pruner held the lock, rows deleted)."""
        async with self.db.session() as conn:
            row = await job_history_prune.run_async(
                conn, self.q, lock_class=self.LOCK_CLASS, schema=self.q.schema,
                retention=self.retention, batch=self.batch_size)
        held, deleted = bool(row.held), int(row.deleted)
        self.rounds += 1
        self.deleted += deleted
        if deleted:
            logger.info("pruned %d history rows older than %.0fs", deleted, self.retention,
                        extra={"action": "prune_history", "deleted": deleted})
        return held, deleted

    async def _run(self) -> None:
        await every(self.interval, self._round, db=self.db, what="history pruning",
                    action="prune_history_failed")

    async def prune_queues(self) -> int:
        """Remove up to ``QUEUE_BATCH`` rows of serial queues that have no job left
        (job_queue_prune.sql: safe beside enqueues and claims, on every engine at once).
        One small batch per round, never repeated at once: claims do not read these rows,
        so removing them is hygiene that must not compete with the engine's real work."""
        async with self.db.session() as conn:
            removed = int(await job_queue_prune.run_async(conn, self.q,
                                                          batch=self.QUEUE_BATCH))
        self.queues_removed += removed
        if removed:
            logger.debug("removed %d empty serial-queue rows", removed,
                         extra={"action": "prune_queues", "deleted": removed})
        return removed

    async def prune_results(self) -> tuple[bool, int]:
        """One round of result pruning: (whether this pruner held the lock, rows deleted)."""
        if self.result_retention is None:
            return False, 0
        async with self.db.session() as conn:
            row = await job_result_prune.run_async(
                conn, self.q, lock_class=self.RESULT_LOCK_CLASS, schema=self.q.schema,
                retention=self.result_retention, batch=self.batch_size)
        held, deleted = bool(row.held), int(row.deleted)
        self.results_deleted += deleted
        if deleted:
            logger.info("pruned %d kept results older than %.0fs", deleted,
                        self.result_retention,
                        extra={"action": "prune_results", "deleted": deleted})
        return held, deleted

    async def _round(self) -> bool:
        """One round; True when a batch came back full (more rows wait)."""
        _, deleted = await self.prune()
        _, results = await self.prune_results()
        await self.prune_queues()
        return deleted >= self.batch_size or results >= self.batch_size
