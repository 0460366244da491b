"""The child pool: the engine's child processes, the hand-over of jobs to them, their
results, their deaths and their timeouts.

The pool forks worker.processes children (CPU count by default), each with its own pair of
pipes (``wire``) and its own process group, and moves jobs from the fetcher's buffers to
the children. Results coming back go to the completer, free the slots and trigger the next
hand-over at once.

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
slot state (``wire``): finished ones are completed, running ones failed as crashes
(attempt counted, retried with the task's backoff, exhausted on the last attempt), unstarted
ones go back untouched. Whatever the child left running (processes its handlers forked or
daemonised) is killed with its process group, and orphans reparented to the engine (it is
their subreaper) are killed and reaped. A new child is forked in its place. Its siblings
never stop. A child killed because one job overran its timeout (the watchdog) fails that
job as a timeout; its other jobs did nothing wrong and go back without losing an attempt.

Cancel (``cancel``: the engine learned of requests, see ``skivi.engine.supervisor``). A
job in a child whose handler has not returned yet is sent a CANCEL frame (``wire``), and
from then on whatever row it reports (returned, raised, released unstarted) is recorded as
cancelled (RESULT_CANCELLED, written by ``job_cancel_many``): once the engine has passed the
request on, the job ends cancelled. A job whose handler had already returned completes. A
job still running worker.cancel_grace seconds after its CANCEL is killed with its child by
the watchdog, as an overrun timeout is: it is recorded as cancelled, and the child's other
jobs go back without losing an attempt.

Wiring: the engine builds the pool, then the fetcher and completer, and ``connect``s them:
the pool takes jobs from the fetcher's buffers and gives results to the completer, and the
children's enqueue requests to the relay (``relay``), whose answers it sends back down the
child's job pipe (dropped if that child has died meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
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

from skivi.engine import process, wire
from skivi.engine.child import child_main
from skivi.engine.fetcher import (
    CLAIMED_ID,
    CLAIMED_LEASE,
    CLAIMED_MESSAGE,
    CLAIMED_TASK,
    ClaimedJob,
)
from skivi.engine.wire import (
    JOB_ATTEMPTS,
    JOB_QUEUE_NAME,
    RESULT_CODE,
    RESULT_ID,
    RESULT_LEASE,
    RESULT_RUN_SECONDS,
    RESULT_SLOT,
    RESULT_TASK,
    completed_row,
    failed_row,
)
from skivi.retry import DEFAULT_BACKOFF, Backoff

if TYPE_CHECKING:
    from skivi.engine.completer import Completer
    from skivi.engine.fetcher import Fetcher
    from skivi.engine.observer import EngineObserver
    from skivi.engine.relay import EnqueueRelay
    from skivi.instance import Instance
    from skivi.registry import TaskRegistry

__all__ = ["ChildHandle", "ChildPool"]

logger = logging.getLogger(__name__)

READ_SIZE = 1 << 20
"""The most one read of a result pipe takes; read into one buffer kept for the pool's life
(ChildPool._read), since a fresh 1 MiB bytes object per read cost the parent an mmap, an
mremap and a munmap, with their page faults, on every read."""
SYNC_SHORT_SECONDS = 0.0005
"""A sync task whose recent runs average below this may be handed several jobs at a time."""
SYNC_BATCH_BUDGET = 0.002
"""Most seconds of expected work of short sync jobs queued per sync thread of a child."""
EWMA_WEIGHT = 0.2  # of the latest run, in a sync task's running average
RESPAWN_RETRY = 1.0  # seconds between attempts to replace a child when fork fails


@dataclass(eq=False, slots=True)
class ChildHandle:
    index: int
    pid: int  # also its process group
    job_fd: int
    result_fd: int
    alive_fd: int  # its pidfd: readable once it has exited, whoever holds its pipes
    capacity: int
    # Slot states shared with the child, one byte per slot (see wire); the free slots
    # of each lane; the job in each busy slot (by slot, not by job id: see wire).
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
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)
    writer_armed: bool = False
    stopping: bool = False
    exited: bool = False
    # Slots whose job has a timeout and has started: slot -> (deadline on the loop clock,
    # timeout); the slots whose job overran it.
    deadlines: dict[int, tuple[float, float]] = field(default_factory=dict)
    timed_out: dict[int, float] = field(default_factory=dict)
    # Slots whose job was sent a CANCEL: slot -> ((id, lease), when it is killed, on the
    # loop clock); the slots whose job outlived worker.cancel_grace.
    cancelling: dict[int, tuple[tuple[int, int], float]] = field(default_factory=dict)
    cancel_killed: set[int] = field(default_factory=set)

    @property
    def free(self) -> int:
        return 0 if self.stopping else len(self.free_slots)


class ChildPool:
    def __init__(self, instance: Instance, registry: TaskRegistry, observer: EngineObserver,
                 *, on_crash: Callable[[], None], cut_short: asyncio.Event,
                 on_child_start: Callable[[], None] | None = None) -> None:
        w = instance.config.worker
        self.instance = instance
        self.registry = registry
        self.observer = observer
        self.on_crash = on_crash  # a child died with jobs in flight (not at shutdown)
        self.shutdown_timeout = w.shutdown_timeout
        self.cancel_grace = w.cancel_grace
        self.cut_short = cut_short  # set: stop waiting for running jobs (a second signal)
        self.on_child_start = on_child_start
        self._read_buffer = bytearray(READ_SIZE)
        self._read_view = memoryview(self._read_buffer)
        self.processes = w.processes or process.available_cpus()
        self.concurrency = w.concurrency
        self.sync_threads = w.sync_threads
        # Lanes (see the module docstring): slots [0, concurrency) for async jobs, then the
        # sync lane. Capacity counts the lanes this registry's tasks use.
        # The sync lane: room for the short jobs a child may be handed at once.
        self.sync_depth = max(w.sync_threads, w.concurrency, w.sync_prefetch)
        self.sync_tasks = frozenset(t.identifier for t in registry if not t.is_async)
        self.has_async = len(self.sync_tasks) < len(registry)
        self.child_capacity = ((self.concurrency if self.has_async or not self.sync_tasks
                                else 0)
                               + (self.sync_depth if self.sync_tasks else 0))
        self._startable_async = self.has_async or not self.sync_tasks
        self.run_estimate: dict[str, float] = {}  # task -> running average of run time
        self.children: list[ChildHandle] = []
        self.stopping = False  # no more respawns; a dead child's running jobs retry at once
        self.last_tick = time.monotonic()  # the watchdog's last round (see Engine.health)
        self.fetcher: Fetcher
        self.completer: Completer
        self.other_pids: Callable[[], list[int]] = list
        self.relay: EnqueueRelay | None = None

    def connect(self, fetcher: Fetcher, completer: Completer,
                other_pids: Callable[[], list[int]],
                relay: EnqueueRelay | None = None) -> None:
        """Where jobs come from, where results go, the engine's other children (the cron
        process), which the reaper of a dead child's orphans must spare, and who runs the
        children's enqueues (None: they have pools of their own)."""
        self.fetcher = fetcher
        self.completer = completer
        self.other_pids = other_pids
        self.relay = relay

    async def start(self) -> None:
        """Fork every child; OSError if one cannot be forked (a process or memory limit)."""
        for i in range(self.processes):
            self._spawn(i)

    def capacity(self) -> int:
        return sum(c.capacity for c in self.children if not c.stopping)

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
                       if state[slot] != wire.SLOT_HANDED)
        return ids

    def cancel(self, claims: set[tuple[int, int]]) -> set[tuple[int, int]]:
        """Pass cancel requests on to the children holding these claims (see the module
        docstring); the claims found here (handed to a child, and not already cancelling).
        A job whose handler has returned is left to complete."""
        found: set[tuple[int, int]] = set()
        kill_at = time.monotonic() + self.cancel_grace
        for child in self.children:
            if child.exited or not child.in_flight:
                continue
            frame: list[list[int]] = []
            for slot, job in child.in_flight.items():
                claim = (job[CLAIMED_ID], job[CLAIMED_LEASE])
                if claim not in claims:
                    continue
                found.add(claim)
                if slot in child.cancelling or child.started[slot] == wire.SLOT_DONE:
                    continue
                child.cancelling[slot] = (claim, kill_at)
                frame.append([claim[0], claim[1], slot])
            if frame:
                logger.info("cancelling job(s) %s in child %d (pid %d)",
                            sorted(j[0] for j in frame), child.index, child.pid,
                            extra={"action": "cancel_jobs"})
                self._send(child, wire.encode_cancel(frame))
        return found

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

    def holdable(self, tasks: frozenset[str]) -> int | None:
        """Jobs of these tasks worth claiming now: what the lanes they run in could take in
        hand, beyond what the buffers hold. Each job under a limit counts against its key
        from its claim, so none should wait long in the parent's buffer. None: no bound,
        every task being a short one (recent runs under SYNC_SHORT_SECONDS, sync or
        async): a buffer of those drains in milliseconds, and a drain needs it full."""
        estimate = self.run_estimate
        if all(0.0 <= estimate.get(t, -1.0) < SYNC_SHORT_SECONDS for t in tasks):
            return None
        sync = tasks & self.sync_tasks
        free = 0
        for c in self.children:
            if c.exited or c.stopping:
                continue
            if sync != tasks:
                free += len(c.free_slots)
            if sync:
                free += len(c.sync_free)
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
                started[slot] = wire.SLOT_HANDED
            messages = [j[CLAIMED_MESSAGE] for j in jobs]
            self.fetcher.taken(sum(map(len, messages)))
            self._send(child, wire.encode_jobs(slots, messages))
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
        frames: dict[ChildHandle, tuple[list[int], list[str]]] = {}
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
                started[slot] = wire.SLOT_HANDED
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
            self.fetcher.taken(sum(map(len, messages)))
            self._send(child, wire.encode_jobs(slots, messages))
        return handed

    def _read(self, fd: int) -> memoryview:
        """What the pipe holds (up to READ_SIZE), as a view of the pool's read buffer: valid
        until the next read, so it is fed to a frame reader (which copies it) at once."""
        return self._read_view[:os.readv(fd, (self._read_buffer,))]

    def _on_results(self, child: ChildHandle) -> None:
        try:
            data = self._read(child.result_fd)
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

    def _learn(self, result: Any) -> None:
        """Fold one result's run time into its task's running average."""
        task, run = result[RESULT_TASK], result[RESULT_RUN_SECONDS]
        known = self.run_estimate.get(task)
        self.run_estimate[task] = run if known is None else known + EWMA_WEIGHT * (run - known)

    def _take_frames(self, child: ChildHandle, data: bytes | memoryview) -> None:
        in_flight = child.in_flight
        deadlines = child.deadlines
        for kind, body in child.reader.feed(data):
            if kind == wire.RESULTS:
                results = orjson.loads(body)
                free_slots, sync_free = child.free_slots, child.sync_free
                slot_expected = child.slot_expected
                freed_sync = freed_long = 0
                freed_expected = 0.0
                last_sync = last_async = None
                for r in results:
                    # A slot is freed only by its own job's result, so the slot says which.
                    slot = r[RESULT_SLOT]
                    if in_flight.pop(slot, None) is not None:
                        expected = slot_expected.pop(slot, None)
                        if expected is None:
                            free_slots.append(slot)
                            last_async = r
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
                    self._learn(last_sync)
                if last_async is not None:
                    self._learn(last_async)  # for the limited claim's room (holdable)
                if child.cancelling:
                    _mark_cancelled(child.cancelling, results)
                self.completer.add(results)
            elif kind == wire.VALUES:
                self.completer.keep(orjson.loads(body))
            elif kind == wire.ENQUEUE and self.relay is not None:
                self.relay.submit(body, functools.partial(self._send, child))
            elif kind == wire.STARTED:
                job_id, lease, slot, timeout = orjson.loads(body)
                job = in_flight.get(slot)
                if (job is not None and job[CLAIMED_ID] == job_id
                        and job[CLAIMED_LEASE] == lease):
                    # A grace second lets an async handler's own timeout answer first.
                    deadlines[slot] = (time.monotonic() + timeout + 1.0, timeout)
        self.dispatch()

    async def watchdog(self) -> None:
        """Kill a child whose job overran its timeout; the job fails as a timeout, the
        child's other jobs as a crash, and the child is replaced."""
        while True:
            await asyncio.sleep(0.1)
            self.last_tick = time.monotonic()
            live = [c for c in self.children if not c.exited]
            self.observer.set_gauges(self.in_flight(),
                                     sum(c.capacity for c in live if not c.stopping), len(live))
            now = time.monotonic()
            for child in self.children:
                if child.cancelling and not child.exited:
                    self._end_cancel_grace(child, now)
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

    def _end_cancel_grace(self, child: ChildHandle, now: float) -> None:
        """Kill a child whose cancelled job outlived worker.cancel_grace (once). Only a job
        that has started: one still waiting in the child never starts (it goes back when
        its turn comes), however long a sibling holds the child's loop meanwhile."""
        if child.cancel_killed or child.timed_out:
            return  # killed already
        state = child.started
        late = {s for s, (_, kill_at) in child.cancelling.items()
                if kill_at <= now and state[s] == wire.SLOT_STARTED}
        if not late:
            return
        child.cancel_killed = late
        logger.warning("job(s) %s still running %.1f s after their cancel "
                       "(worker.cancel_grace): killing child %d (pid %d)",
                       sorted(child.cancelling[s][0][0] for s in late), self.cancel_grace,
                       child.index, child.pid, extra={"action": "kill_child_cancel"})
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
                data = self._read(child.result_fd)
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
                self.on_crash()
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
        known += self.other_pids()
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
        """A dead child's jobs, by their slot state (see wire): those whose handler had
        returned are completed; those running failed as a crash (attempt counted), unless
        the child was killed for another job's timeout (or cancel grace), when they go back
        untouched like the jobs that had not started. A job that overran its timeout fails
        as such; a job being cancelled is cancelled."""
        results: list[list[Any]] = []
        unstarted: list[tuple[int, int]] = []
        state = child.started
        killed_for_timeout = bool(child.timed_out or child.cancel_killed)
        for slot, job in child.in_flight.items():
            job_id, lease, task_id = job[CLAIMED_ID], job[CLAIMED_LEASE], job[CLAIMED_TASK]
            slot_state = state[slot]
            cancelling = child.cancelling.get(slot)
            if cancelling is not None and cancelling[0] == (job_id, lease):
                if slot in child.cancel_killed:
                    error = (f"cancelled: the job was still running {self.cancel_grace} s "
                             f"after its cancel (worker.cancel_grace); its process (pid "
                             f"{child.pid}) was killed")
                else:
                    error = f"cancelled; then {why} while this job ran"
                results.append(wire.cancelled_row(
                    job_id=job_id, lease=lease, task=task_id,
                    queue_name=orjson.loads(job[CLAIMED_MESSAGE])[JOB_QUEUE_NAME],
                    error=error, slot=None))
                continue
            timed_out = child.timed_out.get(slot)
            if timed_out is None and (slot_state == wire.SLOT_HANDED
                                      or (slot_state == wire.SLOT_STARTED
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
            elif slot_state == wire.SLOT_DONE:
                results.append(completed_row(
                    job_id=job_id, lease=lease, task=task_id, queue_name=queue_name,
                    run_seconds=0.0, wait_seconds=None, slot=None))
                if task_id in self.completer.keeping_results:
                    # Its value, if it was sent, came first and is kept (keep never replaces).
                    self.completer.keep([[job_id, lease, task_id, None,
                                          f"the return value was lost: its process (pid "
                                          f"{child.pid}) died before sending it"]])
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

    async def stop(self) -> None:
        """Tell every child to stop (it returns the jobs it had not started and finishes the
        rest), wait up to worker.shutdown_timeout (or until ``cut_short``), then kill the
        rest."""
        self.stopping = True
        timeout, cut_short = self.shutdown_timeout, self.cut_short
        for c in self.children:
            if not c.exited:
                c.stopping = True
                self._send(c, wire.encode_frame(wire.STOP))
        deadline = time.monotonic() + timeout
        while any(not c.exited for c in self.children):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cut_short.is_set():
                break
            try:
                await asyncio.wait_for(cut_short.wait(), min(remaining, 0.05))
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


def _describe(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _mark_cancelled(cancelling: dict[int, tuple[tuple[int, int], float]],
                    results: list[list[Any]]) -> None:
    """The rows of jobs sent a CANCEL become cancelled ones (whatever the handler did after
    it), and those jobs stop cancelling."""
    for r in results:
        slot = r[RESULT_SLOT]
        entry = cancelling.get(slot)
        if entry is not None and entry[0] == (r[RESULT_ID], r[RESULT_LEASE]):
            del cancelling[slot]
            r[RESULT_CODE] = wire.RESULT_CANCELLED
