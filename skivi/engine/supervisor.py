"""The engine's parent process: wiring, the ordered start and shutdown, signals, health.

The parts it wires, one job each (data flows one way): the fetcher claims jobs
(``fetcher``), the child pool hands them to the children and takes their results
(``children``), the completer writes the results (``completer``), the observer turns what
happened into logs, events and metrics (``observer``); liveness, rescue and pruning run
beside them (``maintenance``), the relay runs the children's enqueues (``relay``), and cron
in its own process (``cron_process``).

Cancel requests (``skivi.cancel_jobs``, 0007_cancel.sql) reach the engine by its heartbeat
(``maintenance``), run at once when the fetcher hears a 'cancel:<engine>' NOTIFY: a job
still in the fetcher's buffer is recorded as cancelled at once, one handed to a child is
stopped there (``children``). The heartbeat runs until the last step of a shutdown, so a
job being drained can be cancelled too.

Shutdown (SIGTERM, SIGINT, ``stop()``; see ``Engine.shutdown``), in this order, every step
running even if an earlier one failed:
    1. stop claiming; hand the unstarted jobs in the buffer back (attempt not consumed);
    2. tell every child to stop: it returns jobs it had not started and finishes the rest;
    3. wait for the children up to worker.shutdown_timeout (a second signal cuts this
       short); children still running then are killed and their jobs failed as
       "interrupted by shutdown", runnable again at once;
    4. flush every pending completion;
    5. deregister, close connections; exit code 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from skivi.db.queries import job_limit_upsert_many
from skivi.engine import process
from skivi.engine.children import ChildHandle, ChildPool
from skivi.engine.completer import Completer, Flushed
from skivi.engine.connection import Reconnecting
from skivi.engine.cron_process import CronProcess
from skivi.engine.exits import EXIT_CONFIG, EXIT_DATABASE
from skivi.engine.fetcher import (
    CLAIMED_ID,
    CLAIMED_LEASE,
    CLAIMED_MESSAGE,
    CLAIMED_TASK,
    Fetcher,
)
from skivi.engine.maintenance import HistoryPruner, Liveness
from skivi.engine.observer import EngineObserver, QueueStatsPoller
from skivi.engine.relay import EnqueueRelay
from skivi.engine.service import cancel_and_wait
from skivi.engine.wire import JOB_QUEUE_NAME, cancelled_row
from skivi.errors import SchemaNotMigrated
from skivi.limit import merge_limits

if TYPE_CHECKING:
    from skivi.events import Emitter
    from skivi.instance import Instance
    from skivi.registry import TaskRegistry

__all__ = ["Engine", "EngineStats"]

logger = logging.getLogger(__name__)

PROCESSES_WARN_FACTOR = 4  # warn when worker.processes exceeds this many per usable CPU
HEALTH_STALL_SECONDS = 10.0  # /healthz fails when the event loop made no round this long
# --once: how often the engine looks whether all is done, when nothing runs or waits to be
# written, and while something does.
ONCE_LOOK = 0.02
ONCE_BUSY_LOOK = 0.1


@dataclass(slots=True)
class EngineStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    exhausted: int = 0
    stale: int = 0
    child_crashes: int = 0
    rescued: int = 0
    cancelled: int = 0


class Engine:
    def __init__(self, instance: Instance, registry: TaskRegistry, emitter: Emitter, *,
                 once: bool = False, on_child_start: Callable[[], None] | None = None) -> None:
        cfg = instance.config
        w = cfg.worker
        self.instance = instance
        self.registry = registry
        self.once = once
        self.shutdown_timeout = w.shutdown_timeout
        self.stats = EngineStats()
        # Events always; metrics, the exporter and the queue-stats poll only with metrics.port.
        self.metrics: Any = None
        self._exporter: Any = None
        if cfg.metrics.port:
            from skivi.metrics import EngineMetrics

            # Label values come from what this engine runs, never from what producers send.
            self.metrics = EngineMetrics(
                _version(), emitter, tasks=registry.identifiers(),
                queues=w.queues or (), max_queue_labels=cfg.metrics.max_queue_labels)
        self.observer = EngineObserver(emitter, self.metrics)
        self._cut_short = asyncio.Event()  # set: stop waiting for running jobs
        self.pool = ChildPool(instance, registry, self.observer, on_crash=self._on_crash,
                              cut_short=self._cut_short, on_child_start=on_child_start)
        self.processes = self.pool.processes
        self.concurrency = self.pool.concurrency
        self.cron = CronProcess(instance, self.observer.cron_fired)
        self.fast = False
        self.exit_code = 0
        self._done = asyncio.Event()
        self._aux: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._serving = False  # registered and every part started
        url = instance.database_url
        db = cfg.database

        def connection(name: str, where: str = url) -> Reconnecting:
            return Reconnecting(where, name, connect_timeout=db.connect_timeout,
                                prepared_statements=db.prepared_statements,
                                on_lost=self.observer.connection_lost,
                                on_connected=self.observer.connection_regained)

        # The parent's whole budget is two connections. One for completions, liveness,
        # rescue, pruning, queue stats and the children's enqueues (each part holds it for
        # one unit of work); one for claims, so that a claim and a completion run at once
        # (on one connection the drain lost a quarter of its rate), which also LISTENs for
        # wake-ups while the fetcher sleeps (database.listen). Nothing relies on session
        # state, so both may go through a transaction-mode pooler; LISTEN may not, hence
        # database.listen_url: LISTEN then has a connection of its own, there.
        self.db = connection("skivi-engine")
        self.claim_db = connection("skivi-claim")
        self.listen_db: Reconnecting | None = None
        if db.listen and db.listen_url:
            self.listen_db = connection("skivi-listen", db.listen_url)
        q = instance.queries
        self.stats_poller: QueueStatsPoller | None = None
        if self.metrics is not None:
            self.stats_poller = QueueStatsPoller(self.db, q, self.metrics,
                                                 lambda: self.liveness.engine_id)
        self.liveness = Liveness(
            self.db, q, version=_version(), heartbeat_interval=w.heartbeat_interval,
            lease_timeout=w.lease_timeout, rescue_interval=w.rescue_interval,
            processes=self.processes, concurrency=self.concurrency,
            in_flight=self.pool.in_flight, running=self.pool.started_jobs,
            on_rescued=self._on_rescued, on_cancels=self._on_cancel_requests)
        self.pruner = HistoryPruner(self.db, q, retention=w.history_retention,
                                    result_retention=w.result_retention)
        # Half what a heartbeat may be late before the lease runs out.
        lock_timeout = max(0.1, (w.lease_timeout - w.heartbeat_interval) / 2)
        self.completer = Completer(
            self.db, q, engine_id=lambda: self.liveness.engine_id,
            batch_size=w.completion_batch_size, interval=w.completion_interval,
            max_buffer=w.max_result_buffer, history=w.history, on_flushed=self._on_flushed,
            keeping_results=registry.keeping_results(w.store_results),
            lock_timeout=lock_timeout,
            frees_keys=lambda: self.fetcher.ever_limited)
        # The limits this engine declares (configuration and tasks), recorded at start.
        self.limits = merge_limits(instance.limits, registry.limits())
        tasks = list(registry.identifiers()) if w.unknown_tasks == "skip" else None
        self.fetcher = Fetcher(
            self.claim_db, self.listen_db, q, engine_id=lambda: self.liveness.engine_id,
            batch_size=w.batch_size, batch_max_bytes=w.batch_max_bytes,
            poll_interval=w.poll_interval, lock_timeout=lock_timeout,
            capacity=self.pool.capacity, in_flight=self.pool.in_flight,
            paused=lambda: self.completer.backpressure,
            on_claimed=self._on_claimed, flushes=lambda: self.completer.flushes, tasks=tasks,
            sync_tasks=self.pool.sync_tasks, sync_only=not self.pool.has_async,
            startable=self.pool.startable, holdable=self.pool.holdable,
            forbidden_flags=list(w.forbidden_flags) or None,
            queues=list(w.queues) if w.queues is not None else None,
            listen_here=db.listen and not db.listen_url,
            on_cancel_notice=self.liveness.poke,
            own_tasks=frozenset(registry.identifiers()), limits_lookahead=w.limits_lookahead)
        # The children's ctx.add_job, on this same connection (database.child_enqueue).
        self.relay = (EnqueueRelay(self.db, instance) if db.child_enqueue == "parent"
                      else None)
        self.pool.connect(self.fetcher, self.completer,
                          lambda: [] if self.cron.pid is None else [self.cron.pid],
                          self.relay)

    @property
    def children(self) -> list[ChildHandle]:
        return self.pool.children

    @property
    def stopping(self) -> bool:
        """A stop was requested: one flag, the pool's (it stops respawning on it)."""
        return self.pool.stopping

    # -- lifecycle -------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self.metrics is not None:
            from skivi.metrics import start_exporter

            m = self.instance.config.metrics
            try:
                self._exporter = start_exporter(m.host, m.port, self.metrics.registry,
                                                health=self.health)
            except OSError as exc:
                logger.error("cannot serve metrics on %s:%d: %s", m.host, m.port, exc,
                             extra={"action": "start_exporter_failed"})
                return EXIT_CONFIG
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        # What handlers daemonise is reparented here when its child dies, to be ended.
        process.become_subreaper()
        cpus = process.available_cpus()
        if self.processes > PROCESSES_WARN_FACTOR * cpus:
            logger.warning("worker.processes is %d but only %d CPUs are usable: the children "
                           "will compete for them (and each costs memory)", self.processes,
                           cpus, extra={"action": "processes_over_cpus"})
        try:
            try:
                await self.pool.start()
            except OSError as exc:
                logger.error("cannot start child process %d of %d: %s (a process or memory "
                             "limit?)", len(self.children), self.processes,
                             exc.strerror or exc, extra={"action": "fork_failed"})
                self.exit_code = 1
                return self.exit_code
            await self.cron.start()
            # From the start: its ticks are what /healthz reports on.
            self._aux.append(loop.create_task(self.pool.watchdog(), name="watchdog"))
            if await self._register():
                await self._serve()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return self.exit_code

    async def _serve(self) -> None:
        """Start every part of a registered engine and run until a stop is requested."""
        loop = asyncio.get_running_loop()
        await self._record_limits()
        await self.liveness.start()
        await self.pruner.start()
        await self.completer.start()
        await self.fetcher.start()
        if self.stats_poller is not None:
            await self.stats_poller.start()
        self.observer.pool_start(self.liveness.engine_id, self.processes, self.concurrency,
                                 self.processes * self.pool.child_capacity)
        queues = self.instance.config.worker.queues
        logger.info("engine %d started: %d processes x %d concurrency (%d sync threads "
                    "each), schema %s, %s", self.liveness.engine_id, self.processes,
                    self.concurrency, self.pool.sync_threads, self.instance.schema,
                    "all queues" if queues is None else "queues " + ",".join(queues),
                    extra={"action": "start_engine"})
        if self.once:
            self._aux.append(loop.create_task(self._watch_once(), name="once"))
        self._serving = True
        await self._stop_requested.wait()

    def health(self, probe: str) -> tuple[bool, str]:
        """The answer to an HTTP probe, from the exporter's thread. ``/healthz``: the event
        loop makes progress (the watchdog ticks every 0.1 s), so a wedged parent gets
        restarted. ``/readyz``: also registered, running and not stopping."""
        stalled = time.monotonic() - self.pool.last_tick
        if stalled > HEALTH_STALL_SECONDS:
            return False, f"event loop stalled for {stalled:.0f} s"
        if probe == "/healthz":
            return True, "ok"
        if self.stopping:
            return False, "stopping"
        if not self._serving:
            return False, "starting: waiting to register with the database"
        return True, f"ready: engine {self.liveness.engine_id}"

    async def _register(self) -> bool:
        """Take this engine's identity, waiting out a database that is not there yet; False
        if a stop was requested first (nothing was claimed, so there is nothing to hand
        back)."""
        registering = asyncio.ensure_future(self.liveness.register_retrying())
        stopping = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({registering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([stopping])
        if registering.done():
            try:
                registering.result()  # anything else than these is a bug: raise it
            except SchemaNotMigrated as exc:
                logger.error("%s", exc, extra={"action": "migrations_pending"})
                self.exit_code = EXIT_DATABASE
                return False
            return True
        await cancel_and_wait([registering])
        logger.info("stopped before the engine could register", extra={"action": "stop_engine"})
        return False

    async def _record_limits(self) -> None:
        """Upsert the declared limits (job_limit_upsert_many.sql), so every engine's claims
        enforce them; a failure is logged (the limits recorded before stay in force)."""
        if not self.limits:
            return
        try:
            async with self.db.session() as conn:
                changed = await job_limit_upsert_many.run_async(
                    conn, self.instance.queries, names=[lim.name for lim in self.limits],
                    tasks=[orjson.dumps(lim.tasks).decode() for lim in self.limits],
                    key_paths=[None if lim.key_path is None
                               else orjson.dumps(lim.key_path).decode()
                               for lim in self.limits],
                    slots=[lim.slots for lim in self.limits],
                    periods=[lim.period for lim in self.limits])
        except psycopg.Error as exc:
            self.db.broken()
            logger.error("cannot record the limits %s: %s",
                         ", ".join(lim.name for lim in self.limits), exc,
                         extra={"action": "record_limits_failed"})
            return
        if changed:
            logger.info("limits recorded: %s", ", ".join(changed),
                        extra={"action": "record_limits"})

    def request_stop(self, fast: bool = False) -> None:
        if self.stopping:
            if fast and not self.fast:
                self.fast = True
                logger.warning("second stop request: stopping fast",
                               extra={"action": "stop_fast"})
                self._cut_short.set()
            return
        self.pool.stopping = True
        self.fast = fast
        if fast:
            self._cut_short.set()
        self._stop_requested.set()

    def _on_signal(self, sig: int) -> None:
        logger.info("received %s", signal.Signals(sig).name, extra={"action": "signal"})
        self.request_stop(fast=self.stopping)

    async def _watch_once(self) -> None:
        """--once: stop when nothing is runnable, nothing is in hand and all is written.
        Results being written count as unwritten: a finished serial-queue job frees its
        queue only when its write commits, and a claim made after that decides."""
        while not self.stopping:
            # While jobs run or wait to be written the end is at least a flush away: looking
            # every 20 ms then only woke the loop (16 engines on 2 cores: 800 times a second).
            busy = self.pool.in_flight() > 0 or self.completer.unwritten > 0
            await asyncio.sleep(ONCE_BUSY_LOOK if busy else ONCE_LOOK)
            if (self.pool.in_flight() == 0 and self.completer.unwritten == 0
                    and self.fetcher.idle()):
                self.request_stop()

    async def shutdown(self) -> None:
        self.pool.stopping = True
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("stop cron", self.cron.stop),
            ("stop claiming", self._stop_claiming),
            ("stop children", self.pool.stop),
            ("flush completions", self._flush),
            ("stop liveness", self.liveness.stop),
            ("stop history pruner", self.pruner.stop),
            ("stop queue stats", self._stop_stats),
            ("deregister", self.liveness.deregister),
            ("close connections", self._close),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception:
                self.exit_code = 1
                logger.exception("shutdown step %r failed", name,
                                 extra={"action": "shutdown_failed", "step": name})
        logger.info("engine %d stopped: %d completed, %d failed, %d exhausted",
                    self.liveness.engine_id, self.stats.completed, self.stats.failed,
                    self.stats.exhausted, extra={"action": "stop_engine"})
        self.observer.report_no_handler(force=True)
        self.observer.pool_stop(self.liveness.engine_id, dataclasses.asdict(self.stats))
        if self._exporter is not None:
            from skivi.metrics import stop_exporter

            stop_exporter(self._exporter)
            self._exporter = None

    async def _stop_stats(self) -> None:
        if self.stats_poller is not None:
            await self.stats_poller.stop()

    async def _stop_claiming(self) -> None:
        await self.fetcher.stop()
        unstarted = self.fetcher.take_all()
        self.completer.release([(j[CLAIMED_ID], j[CLAIMED_LEASE]) for j in unstarted])
        # Nothing more will be handed over: a child holding only queued jobs gets STOP
        # next and returns them.

    async def _flush(self) -> None:
        if not await self.completer.drain(max(self.shutdown_timeout, 10.0)):
            self.exit_code = 1
            logger.error("%d results could not be written before shutdown; their jobs will be "
                         "rescued by another engine", self.completer.pending,
                         extra={"action": "flush_incomplete"})
        await self.completer.stop()

    async def _close(self) -> None:
        for t in self._aux:
            t.cancel()
        if self.relay is not None:
            await self.relay.stop()
        for db in (self.db, self.claim_db, self.listen_db):
            if db is not None:
                await db.close()
        self._done.set()

    # -- observers -------------------------------------------------------------------
    def _on_flushed(self, f: Flushed) -> None:
        # A finished job may have freed a serial queue: look again now, not at the next poll.
        self.fetcher.wake()
        s = self.stats
        s.completed += len(f.done)
        s.stale += len(f.completed) - len(f.done)
        for outcome in f.outcomes.values():
            if outcome == "exhausted":
                s.exhausted += 1
            else:
                s.failed += 1
        s.stale += len(f.failed) - len(f.outcomes)
        self.observer.flushed(f.completed, f.failed, f.done, f.outcomes, f.recorded)
        if f.cancelled:
            s.cancelled += len(f.cancels)
            s.stale += len(f.cancelled) - len(f.cancels)
            self.observer.cancelled(f.cancelled, f.cancels)

    def _on_cancel_requests(self, claims: set[tuple[int, int]]) -> None:
        """The heartbeat read cancel requests for these claims of this engine (the same ones
        until each job ends: what is already being cancelled is not found again)."""
        taken = self.fetcher.take_claims(claims)
        if taken:
            logger.info("cancelled job(s) %s before they started",
                        sorted(j[CLAIMED_ID] for j in taken), extra={"action": "cancel_jobs"})
            self.completer.add([
                cancelled_row(job_id=j[CLAIMED_ID], lease=j[CLAIMED_LEASE],
                              task=j[CLAIMED_TASK],
                              queue_name=orjson.loads(j[CLAIMED_MESSAGE])[JOB_QUEUE_NAME],
                              error=None, slot=None)
                for j in taken])
        self.pool.cancel(claims)

    def _on_claimed(self, n: int) -> None:
        """A claim returned ``n`` (> 0) jobs."""
        self.observer.claimed(n)
        self.stats.claimed += n
        self.pool.dispatch()

    def _on_crash(self) -> None:
        self.stats.child_crashes += 1

    def _on_rescued(self, engines: list[int], retried: int, exhausted: int) -> None:
        self.stats.rescued += retried + exhausted
        self.observer.rescued(engines, retried, exhausted)
        self.fetcher.wake()


def _version() -> str:
    from skivi import __version__

    return __version__
