"""The engine's parent process: children, hand-over, signals and the ordered shutdown.

The supervisor forks worker.processes children (CPU count by default), each with its own
pair of pipes (``handoff``) and its own process group, and moves jobs from the fetcher's
buffers to the children. Results coming back go to the completer, free the slots and
trigger the next hand-over at once.

How many jobs a child is handed (each child has two lanes of slots):
    async jobs   up to worker.concurrency at a time: they share the child's event loop.
    sync jobs    one per free sync thread (worker.sync_threads), so a burst of CPU-bound
                 jobs spreads over every child and a hung job holds no other job behind
                 it. Only jobs of a task measured to run in well under a millisecond
                 (a running average of its recent runs) are handed several at a time,
                 up to SYNC_BATCH_BUDGET seconds of expected work per thread: the hand-over
                 batching that short jobs need for throughput, at no cost in balance.

A child that dies (segfault, os._exit, OOM kill, SIGKILL) is noticed through its pidfd:
what it had already reported is taken first, then its remaining jobs are settled by their
slot state (``handoff``): finished ones are completed, running ones failed as crashes
(attempt counted, retried with the task's backoff, exhausted on the last attempt), unstarted
ones go back untouched. Whatever the child left running (processes its handlers forked or
daemonised) is killed with its process group, and orphans reparented to the engine (it is
their subreaper) are killed and reaped. A new child is forked in its place. Its siblings
never stop. A child killed because one job overran its timeout fails that job as a
timeout; its other jobs did nothing wrong and go back without losing an attempt.

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
import contextlib
import dataclasses
import errno
import logging
import mmap
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from skivi.engine import handoff, process
from skivi.engine.child import child_main
from skivi.engine.completer import Claim, Completer, Recorded
from skivi.engine.connection import Reconnecting
from skivi.engine.cron_process import CronProcess
from skivi.engine.exits import EXIT_CONFIG, EXIT_DATABASE
from skivi.engine.fetcher import (
    CLAIMED_ID,
    CLAIMED_LEASE,
    CLAIMED_MESSAGE,
    CLAIMED_TASK,
    ClaimedJob,
    Fetcher,
)
from skivi.engine.handoff import (
    JOB_ATTEMPTS,
    JOB_QUEUE_NAME,
    RESULT_RUN_SECONDS,
    RESULT_SLOT,
    RESULT_TASK,
    completed_row,
    failed_row,
)
from skivi.engine.lifecycle import cancel_and_wait
from skivi.engine.maintenance import HistoryPruner, Liveness
from skivi.engine.observer import EngineObserver, QueueStatsPoller
from skivi.errors import SchemaNotMigrated
from skivi.retry import DEFAULT_BACKOFF, Backoff

if TYPE_CHECKING:
    from skivi.events import Emitter
    from skivi.instance import Instance
    from skivi.registry import TaskRegistry

__all__ = ["Engine", "EngineStats"]

logger = logging.getLogger(__name__)

READ_SIZE = 1 << 20
SYNC_SHORT_SECONDS = 0.0005
"""A sync task whose recent runs average below this may be handed several jobs at a time."""
SYNC_BATCH_BUDGET = 0.002
"""Most seconds of expected work of short sync jobs queued per sync thread of a child."""
EWMA_WEIGHT = 0.2  # of the latest run, in a sync task's running average
RESPAWN_RETRY = 1.0  # seconds between attempts to replace a child when fork fails
PROCESSES_WARN_FACTOR = 4  # warn when worker.processes exceeds this many per usable CPU
HEALTH_STALL_SECONDS = 10.0  # /healthz fails when the event loop made no round this long


@dataclass(slots=True)
class EngineStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    exhausted: int = 0
    stale: int = 0
    child_crashes: int = 0
    rescued: int = 0


@dataclass(eq=False, slots=True)
class ChildHandle:
    index: int
    pid: int  # also its process group
    job_fd: int
    result_fd: int
    alive_fd: int  # its pidfd: readable once it has exited, whoever holds its pipes
    capacity: int
    # Slot states shared with the child, one byte per slot (see handoff); the free slots
    # of each lane; the job in each busy slot (by slot, not by job id: see handoff).
    started: mmap.mmap
    free_slots: list[int]  # async lane
    sync_free: list[int]
    in_flight: dict[int, ClaimedJob] = field(default_factory=dict)
    # The sync lane's load: jobs in it, those of long (or not yet measured) tasks, and the
    # expected seconds of the short ones (each slot's estimate at hand-over).
    sync_jobs: int = 0
    sync_long: int = 0
    sync_expected: float = 0.0
    slot_expected: dict[int, float] = field(default_factory=dict)
    outbox: bytearray = field(default_factory=bytearray)
    reader: handoff.FrameReader = field(default_factory=handoff.FrameReader)
    writer_armed: bool = False
    stopping: bool = False
    exited: bool = False
    # Slots whose job has a timeout and has started: slot -> (deadline on the loop clock,
    # timeout); the slots whose job overran it.
    deadlines: dict[int, tuple[float, float]] = field(default_factory=dict)
    timed_out: dict[int, float] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return 0 if self.stopping else len(self.free_slots)


class Engine:
    def __init__(self, instance: Instance, registry: TaskRegistry, emitter: Emitter, *,
                 once: bool = False, on_child_start: Callable[[], None] | None = None) -> None:
        cfg = instance.config
        w = cfg.worker
        self.instance = instance
        self.registry = registry
        self.once = once
        self.on_child_start = on_child_start
        self.processes = w.processes or process.available_cpus()
        self.concurrency = w.concurrency
        self.sync_threads = w.sync_threads
        # Lanes (see the module docstring): slots [0, concurrency) for async jobs, then the
        # sync lane. Capacity counts the lanes this registry's tasks use.
        self.sync_depth = max(w.sync_threads, w.concurrency)
        self.sync_tasks = frozenset(t.identifier for t in registry if not t.is_async)
        has_async = len(self.sync_tasks) < len(registry)
        self.child_capacity = ((self.concurrency if has_async or not self.sync_tasks else 0)
                               + (self.sync_depth if self.sync_tasks else 0))
        self._startable_async = has_async or not self.sync_tasks
        self._timeouts = {t.identifier: t.timeout if t.timeout is not None else w.job_timeout
                          for t in registry}
        self.run_estimate: dict[str, float] = {}  # sync task -> running average of run time
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
        self._claimed_seen = 0
        self.children: list[ChildHandle] = []
        self.cron = CronProcess(instance, self.observer.cron_fired)
        self.stopping = False
        self.fast = False
        self.exit_code = 0
        self._done = asyncio.Event()
        self._cut_short = asyncio.Event()  # set: stop waiting for running jobs
        self._aux: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._serving = False  # registered and every part started
        self._last_tick = time.monotonic()  # the watchdog's last round (see health())
        url = instance.database_url
        timeout = cfg.database.connect_timeout

        def connection(name: str) -> Reconnecting:
            return Reconnecting(url, name, connect_timeout=timeout,
                                on_lost=self.observer.connection_lost,
                                on_connected=self.observer.connection_regained)

        self.claim_db = connection("skivi-claim")
        self.complete_db = connection("skivi-complete")
        self.listen_db = connection("skivi-listen")
        self.live_db = connection("skivi-liveness")
        # Its own connection: a failed prune round must never break the liveness lock's.
        self.prune_db = connection("skivi-prune")
        q = instance.queries
        self.stats_db: Reconnecting | None = None
        self.stats_poller: QueueStatsPoller | None = None
        if self.metrics is not None:
            self.stats_db = connection("skivi-stats")
            self.stats_poller = QueueStatsPoller(self.stats_db, q, self.metrics,
                                                 lambda: self.liveness.engine_id)
        self.liveness = Liveness(
            self.live_db, q, version=_version(), heartbeat_interval=w.heartbeat_interval,
            lease_timeout=w.lease_timeout, rescue_interval=w.rescue_interval,
            processes=self.processes, concurrency=self.concurrency,
            in_flight=self.in_flight, running=self.started_jobs, on_rescued=self._on_rescued)
        self.pruner = HistoryPruner(self.prune_db, q, retention=w.history_retention)
        self.completer = Completer(
            self.complete_db, q, engine_id=lambda: self.liveness.engine_id,
            batch_size=w.completion_batch_size, interval=w.completion_interval,
            max_buffer=w.max_result_buffer, history=w.history, on_flushed=self._on_flushed)
        tasks = list(registry.identifiers()) if w.unknown_tasks == "skip" else None
        self.fetcher = Fetcher(
            self.claim_db, self.listen_db, q, engine_id=lambda: self.liveness.engine_id,
            batch_size=w.batch_size, batch_max_bytes=w.batch_max_bytes,
            poll_interval=w.poll_interval,
            capacity=lambda: sum(c.capacity for c in self.children if not c.stopping),
            in_flight=self.in_flight, paused=lambda: self.completer.backpressure,
            on_claimed=self._on_claimed, flushes=lambda: self.completer.flushes, tasks=tasks,
            sync_tasks=self.sync_tasks, sync_only=not has_async, startable=self.startable,
            forbidden_flags=list(w.forbidden_flags) or None,
            queues=list(w.queues) if w.queues is not None else None)

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
                for i in range(self.processes):
                    self._spawn(i)
            except OSError as exc:
                logger.error("cannot start child process %d of %d: %s (a process or memory "
                             "limit?)", len(self.children), self.processes,
                             exc.strerror or exc, extra={"action": "fork_failed"})
                self.exit_code = 1
                return self.exit_code
            self.cron.start()
            # From the start: its ticks are what /healthz reports on.
            self._aux.append(loop.create_task(self._watchdog(), name="watchdog"))
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
        self.liveness.start()
        await self.pruner.start()
        self.completer.start()
        self.fetcher.start()
        if self.stats_poller is not None:
            self.stats_poller.start()
        self.observer.pool_start(self.liveness.engine_id, self.processes, self.concurrency,
                                 self.processes * self.child_capacity)
        queues = self.instance.config.worker.queues
        logger.info("engine %d started: %d processes x %d concurrency (%d sync threads "
                    "each), schema %s, %s", self.liveness.engine_id, self.processes,
                    self.concurrency, self.sync_threads, self.instance.schema,
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
        stalled = time.monotonic() - self._last_tick
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

    def request_stop(self, fast: bool = False) -> None:
        if self.stopping:
            if fast and not self.fast:
                self.fast = True
                logger.warning("second stop request: stopping fast",
                               extra={"action": "stop_fast"})
                self._cut_short.set()
            return
        self.stopping = True
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
            await asyncio.sleep(0.02)
            if (self.in_flight() == 0 and self.completer.unwritten == 0
                    and self.fetcher.idle()):
                self.request_stop()

    async def shutdown(self) -> None:
        self.stopping = True
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("stop cron", self.cron.stop),
            ("stop claiming", self._stop_claiming),
            ("stop children", self._stop_children),
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

    async def _stop_children(self) -> None:
        for c in self.children:
            if not c.exited:
                c.stopping = True
                self._send(c, handoff.encode_frame(handoff.STOP))
        deadline = time.monotonic() + self.shutdown_timeout
        while any(not c.exited for c in self.children):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cut_short.is_set():
                break
            try:
                await asyncio.wait_for(self._cut_short.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass
        for c in self.children:
            if not c.exited:
                logger.warning("child %d (pid %d) still running %d jobs: killing it",
                               c.index, c.pid, len(c.in_flight),
                               extra={"action": "kill_child"})
                try:
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        while any(not c.exited for c in self.children):
            await asyncio.sleep(0.01)

    async def _flush(self) -> None:
        if not await self.completer.drain(max(self.shutdown_timeout, 10.0)):
            self.exit_code = 1
            logger.error("%d results could not be written before shutdown; their jobs will be "
                         "rescued by another engine", self.completer.pending,
                         extra={"action": "flush_incomplete"})
        await self.completer.close()

    async def _close(self) -> None:
        for t in self._aux:
            t.cancel()
        for db in (self.claim_db, self.complete_db, self.listen_db, self.live_db,
                   self.prune_db, self.stats_db):
            if db is not None:
                await db.close()
        self._done.set()

    # -- children --------------------------------------------------------------------
    def in_flight(self) -> int:
        return sum(len(c.in_flight) for c in self.children)

    def started_jobs(self) -> list[int]:
        """Ids of the jobs in children whose handlers have started (done ones included,
        until their results land): what the heartbeat reports as running."""
        ids: list[int] = []
        for c in self.children:
            state = c.started
            if c.exited or state.closed:
                continue
            ids.extend(j[CLAIMED_ID] for slot, j in c.in_flight.items()
                       if state[slot] != handoff.SLOT_HANDED)
        return ids

    def startable(self) -> int:
        """Jobs the children could start right now, beyond those already in hand: the
        most serial-queue jobs worth claiming (each holds its queue until it ends)."""
        free = 0
        for c in self.children:
            if c.exited or c.stopping:
                continue
            if self._startable_async:
                free += len(c.free_slots)
            if self.sync_tasks:
                free += max(0, self.sync_threads - c.sync_jobs)
        return max(0, free - self.fetcher.buffered())

    def _spawn(self, index: int) -> ChildHandle:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        lanes = self.concurrency + self.sync_depth
        started = mmap.mmap(-1, lanes)  # anonymous, shared with the child
        try:
            pid = process.fork(
                f"child {index}",
                lambda: child_main(self.registry, self.instance, job_r, res_w,
                                   self.sync_threads, started, self.on_child_start),
                keep=[job_r, res_w], group=True)
        except OSError:
            for fd in (job_r, job_w, res_r, res_w):
                os.close(fd)
            started.close()
            raise
        for fd in (job_r, res_w):
            os.close(fd)
        # Its exit is seen through a pidfd, not a pipe's end: a process its handlers
        # started may hold every pipe it had.
        alive = os.pidfd_open(pid)
        os.set_blocking(job_w, False)
        os.set_blocking(res_r, False)
        child = ChildHandle(index, pid, job_w, res_r, alive, self.child_capacity, started,
                            list(range(self.concurrency)),
                            list(range(self.concurrency, lanes)))
        loop = asyncio.get_running_loop()
        loop.add_reader(res_r, self._on_results, child)
        loop.add_reader(alive, self._on_child_exit, child)
        if index < len(self.children):
            self.children[index] = child
        else:
            self.children.append(child)
        logger.debug("child %d started (pid %d)", index, pid, extra={"action": "start_child"})
        return child

    def _send(self, child: ChildHandle, frame: bytes) -> None:
        if child.exited:
            return
        if child.outbox:
            child.outbox += frame
            return
        try:
            n = os.write(child.job_fd, frame)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:
            return
        if n < len(frame):
            child.outbox += frame[n:]
            if not child.writer_armed:
                child.writer_armed = True
                asyncio.get_running_loop().add_writer(child.job_fd, self._on_writable, child)

    def _on_writable(self, child: ChildHandle) -> None:
        try:
            n = os.write(child.job_fd, child.outbox)
        except BlockingIOError:
            return
        except BrokenPipeError:
            n = len(child.outbox)
        del child.outbox[:n]
        if not child.outbox:
            child.writer_armed = False
            asyncio.get_running_loop().remove_writer(child.job_fd)

    def dispatch(self) -> None:
        """Hand buffered jobs to the children, at most one frame per child."""
        fetcher = self.fetcher
        handed = 0
        if fetcher.async_buffer:
            handed += self._dispatch_async(fetcher.async_buffer)
        if fetcher.sync_buffer:
            handed += self._dispatch_sync(fetcher.sync_buffer)
        if handed:
            self.observer.dispatched(handed)
        if fetcher.room() > 0 and fetcher.worth_claiming():
            fetcher.wake()

    def _dispatch_async(self, buffer: deque[ClaimedJob]) -> int:
        handed = 0
        for child in sorted(self.children, key=lambda c: -c.free):
            free = child.free
            if free <= 0 or child.exited:
                continue
            n = min(free, len(buffer))
            handed += n
            jobs = [buffer.popleft() for _ in range(n)]
            slots = [child.free_slots.pop() for _ in range(n)]
            started = child.started
            in_flight = child.in_flight
            for j, slot in zip(jobs, slots, strict=True):
                in_flight[slot] = j
                started[slot] = handoff.SLOT_HANDED
            self._send(child, handoff.encode_jobs(slots, [j[CLAIMED_MESSAGE] for j in jobs]))
            if not buffer:
                break
        return handed

    def _dispatch_sync(self, buffer: deque[ClaimedJob]) -> int:
        """Sync jobs, in order, to the child whose sync lane is least loaded among those
        with a free thread, or (a short task's job) room in its batching budget. A run of
        jobs of one task goes to one child in one step: the hot path of a drain."""
        threads = self.sync_threads
        budget = SYNC_BATCH_BUDGET * threads
        estimate = self.run_estimate
        live = [c for c in self.children if not c.exited and not c.stopping]
        frames: dict[ChildHandle, tuple[list[int], list[bytes]]] = {}
        single_task = self.fetcher.sync_only and len(self.sync_tasks) == 1
        handed = 0
        while buffer:
            task = buffer[0][CLAIMED_TASK]
            expected = estimate.get(task, -1.0)
            short = 0.0 <= expected < SYNC_SHORT_SECONDS
            best: ChildHandle | None = None
            for c in live:
                if not c.sync_free:
                    continue
                if c.sync_jobs < threads or (short and not c.sync_long
                                             and c.sync_expected + expected <= budget):
                    if best is None or c.sync_jobs < best.sync_jobs:
                        best = c
            if best is None:
                break
            # How many of this task's jobs it takes now: one per free thread, and for a
            # short task as many as fit in the budget.
            take = max(0, threads - best.sync_jobs)
            if short and not best.sync_long:
                fit = (budget - best.sync_expected) / expected if expected > 0 else budget
                take = max(take, int(fit))
            take = max(1, min(take, len(best.sync_free)))
            frame = frames.get(best)
            if frame is None:
                frame = frames[best] = ([], [])
            slots, messages = frame
            in_flight, started, sync_free = best.in_flight, best.started, best.sync_free
            slot_expected = best.slot_expected
            mark = expected if short else -1.0
            # The run of this task's jobs at the head of the buffer (all of it when the
            # registry has a single sync task).
            if single_task:
                n = min(take, len(buffer))
            else:
                n = 1
                while n < take and n < len(buffer) and buffer[n][CLAIMED_TASK] == task:
                    n += 1
            jobs = [buffer.popleft() for _ in range(n)]
            got = [sync_free.pop() for _ in range(n)]
            for job, slot in zip(jobs, got, strict=True):
                in_flight[slot] = job
                started[slot] = handoff.SLOT_HANDED
                slot_expected[slot] = mark
            slots += got
            messages += [job[CLAIMED_MESSAGE] for job in jobs]
            best.sync_jobs += n
            if short:
                best.sync_expected += expected * n
            else:
                best.sync_long += n
            handed += n
        for child, (slots, messages) in frames.items():
            self._send(child, handoff.encode_jobs(slots, messages))
        return handed

    def _on_results(self, child: ChildHandle) -> None:
        try:
            data = os.read(child.result_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            return
        if not data:
            asyncio.get_running_loop().remove_reader(child.result_fd)
            return
        self._take_frames(child, data)

    def _take_frames(self, child: ChildHandle, data: bytes) -> None:
        in_flight = child.in_flight
        deadlines = child.deadlines
        for kind, body in child.reader.feed(data):
            if kind == handoff.RESULTS:
                results = orjson.loads(body)
                free_slots, sync_free = child.free_slots, child.sync_free
                slot_expected = child.slot_expected
                freed_sync = freed_long = 0
                freed_expected = 0.0
                last_sync = None
                for r in results:
                    # A slot is freed only by its own job's result, so the slot says which.
                    slot = r[RESULT_SLOT]
                    if in_flight.pop(slot, None) is not None:
                        expected = slot_expected.pop(slot, None)
                        if expected is None:
                            free_slots.append(slot)
                        else:
                            sync_free.append(slot)
                            freed_sync += 1
                            if expected < 0:
                                freed_long += 1
                            else:
                                freed_expected += expected
                            last_sync = r
                        if deadlines:
                            deadlines.pop(slot, None)
                if freed_sync:
                    child.sync_jobs -= freed_sync
                    child.sync_long -= freed_long
                    # Reset when empty: no drift from the float sums.
                    child.sync_expected = (child.sync_expected - freed_expected
                                           if child.sync_jobs else 0.0)
                    # Learn how long the task runs (see dispatch), from one row a frame.
                    assert last_sync is not None
                    task, run = last_sync[RESULT_TASK], last_sync[RESULT_RUN_SECONDS]
                    known = self.run_estimate.get(task)
                    self.run_estimate[task] = (run if known is None
                                               else known + EWMA_WEIGHT * (run - known))
                self.completer.add(results)
            elif kind == handoff.STARTED:
                job_id, lease, slot = orjson.loads(body)
                job = in_flight.get(slot)
                if (job is not None and job[CLAIMED_ID] == job_id
                        and job[CLAIMED_LEASE] == lease):
                    timeout = self._timeouts.get(job[CLAIMED_TASK])
                    if timeout is not None:
                        # A grace second lets an async handler's own timeout answer first.
                        deadlines[slot] = (time.monotonic() + timeout + 1.0, timeout)
        self.dispatch()

    async def _watchdog(self) -> None:
        """Kill a child whose job overran its timeout; the job fails as a timeout, the
        child's other jobs as a crash, and the child is replaced."""
        while not self._done.is_set():
            await asyncio.sleep(0.1)
            self._last_tick = time.monotonic()
            live = [c for c in self.children if not c.exited]
            self.observer.set_gauges(self.in_flight(),
                                     sum(c.capacity for c in live if not c.stopping), len(live))
            now = time.monotonic()
            for child in self.children:
                if child.exited or not child.deadlines or child.timed_out:
                    continue
                late = {s: t for s, (d, t) in child.deadlines.items() if d <= now}
                if late:
                    child.timed_out = late
                    logger.error("job(s) %s overran their timeout: killing child %d (pid %d)",
                                 sorted(child.in_flight[s][CLAIMED_ID] for s in late
                                        if s in child.in_flight), child.index, child.pid,
                                 extra={"action": "kill_child_timeout"})
                    try:
                        os.kill(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def _on_child_exit(self, child: ChildHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.alive_fd)
        # Take everything it reported before it went (up to what is there now: a process
        # its handlers left may still hold the pipe open).
        while True:
            try:
                data = os.read(child.result_fd, READ_SIZE)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self._take_frames(child, data)
        loop.remove_reader(child.result_fd)
        if child.writer_armed:
            loop.remove_writer(child.job_fd)
        for fd in (child.job_fd, child.result_fd, child.alive_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        status = _describe(process.exit_code(child.pid))
        child.exited = True
        self._end_leftovers(child)
        jobs = len(child.in_flight)
        if child.in_flight:
            if self.stopping:
                why = "interrupted by engine shutdown"
            else:
                why = f"child process {child.index} (pid {child.pid}) died: {status}"
                self.stats.child_crashes += 1
            self._settle_in_flight(child, why, retry_now=self.stopping)
        if not self.stopping:
            logger.error("child %d (pid %d) died (%s) with %d jobs in flight; replacing it",
                         child.index, child.pid, status, jobs,
                         extra={"action": "replace_child"})
            self.observer.child_replaced(child.index, child.pid, status, jobs)
        child.in_flight.clear()
        child.started.close()
        if not self.stopping:
            self._respawn(child.index)

    def _end_leftovers(self, child: ChildHandle) -> None:
        """Kill what the dead child's handlers left running: its process group, and any
        orphan that was reparented to this engine."""
        process.end_group(child.pid)
        known = [c.pid for c in self.children if not c.exited]
        if self.cron.pid is not None:
            known.append(self.cron.pid)
        left = process.reap_orphans(known)
        if left:
            logger.warning("killed %d process(es) left behind by child %d's jobs", left,
                           child.index, extra={"action": "kill_leftovers"})

    def _respawn(self, index: int) -> None:
        if self.stopping or not self.children[index].exited:
            return
        try:
            self._spawn(index)
        except OSError as exc:
            logger.error("cannot replace child %d: %s; retrying in %.0fs", index,
                         exc.strerror or exc, RESPAWN_RETRY, extra={"action": "fork_failed"})
            asyncio.get_running_loop().call_later(RESPAWN_RETRY, self._respawn, index)
            return
        self.dispatch()

    def _settle_in_flight(self, child: ChildHandle, why: str, retry_now: bool) -> None:
        """A dead child's jobs, by their slot state (see handoff): those whose handler had
        returned are completed; those running failed as a crash (attempt counted), unless
        the child was killed for another job's timeout, when they go back untouched like
        the jobs that had not started. A job that overran its timeout fails as such."""
        results: list[list[Any]] = []
        unstarted: list[tuple[int, int]] = []
        state = child.started
        killed_for_timeout = bool(child.timed_out)
        for slot, job in child.in_flight.items():
            job_id, lease, task_id = job[CLAIMED_ID], job[CLAIMED_LEASE], job[CLAIMED_TASK]
            slot_state = state[slot]
            timed_out = child.timed_out.get(slot)
            if timed_out is None and (slot_state == handoff.SLOT_HANDED
                                      or (slot_state == handoff.SLOT_STARTED
                                          and killed_for_timeout)):
                unstarted.append((job_id, lease))
                continue
            # Rare: only a dead child's jobs are decoded here. Their rows have no slot (it is
            # freed with the child) and no wait_seconds (the child never said when the job
            # started).
            m = orjson.loads(job[CLAIMED_MESSAGE])
            queue_name, attempt = m[JOB_QUEUE_NAME], m[JOB_ATTEMPTS]
            if timed_out is not None:
                results.append(failed_row(
                    job_id=job_id, lease=lease, task=task_id, queue_name=queue_name,
                    run_seconds=0.0,
                    error=(f"timeout: the job ran longer than {timed_out} s; "
                           f"its process (pid {child.pid}) was killed"),
                    delay=self._backoff(task_id).delay(attempt), wait_seconds=None, slot=None,
                    attempt=attempt))
            elif slot_state == handoff.SLOT_DONE:
                results.append(completed_row(
                    job_id=job_id, lease=lease, task=task_id, queue_name=queue_name,
                    run_seconds=0.0, wait_seconds=None, slot=None))
            else:
                results.append(failed_row(
                    job_id=job_id, lease=lease, task=task_id, queue_name=queue_name,
                    run_seconds=0.0, error=f"{why} while this job ran",
                    delay=0.0 if retry_now else self._backoff(task_id).delay(attempt),
                    wait_seconds=None, slot=None, attempt=attempt))
        self.completer.add(results)
        self.completer.release(unstarted)

    def _backoff(self, task_id: str) -> Backoff:
        task = self.registry.get(task_id)
        return task.backoff if task is not None else DEFAULT_BACKOFF

    # -- observers -------------------------------------------------------------------
    def _on_flushed(self, completed: list[list[Any]], failed: list[list[Any]],
                    done_ids: set[Claim], outcomes: dict[Claim, str],
                    recorded: dict[Claim, Recorded]) -> None:
        # A finished job may have freed a serial queue: look again now, not at the next poll.
        self.fetcher.wake()
        s = self.stats
        s.completed += len(done_ids)
        s.stale += len(completed) - len(done_ids)
        for outcome in outcomes.values():
            if outcome == "exhausted":
                s.exhausted += 1
            else:
                s.failed += 1
        s.stale += len(failed) - len(outcomes)
        self.observer.flushed(completed, failed, done_ids, outcomes, recorded)

    def _on_claimed(self) -> None:
        claimed = self.fetcher.claimed
        self.observer.claimed(claimed - self._claimed_seen)
        self._claimed_seen = claimed
        self.stats.claimed = claimed
        self.dispatch()

    def _on_rescued(self, engines: list[int], retried: int, exhausted: int) -> None:
        self.stats.rescued += retried + exhausted
        self.observer.rescued(engines, retried, exhausted)
        self.fetcher.wake()


def _describe(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _version() -> str:
    from skivi import __version__

    return __version__
