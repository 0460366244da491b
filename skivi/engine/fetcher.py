"""The fetcher: the parent's claim loop, and the LISTEN connection that wakes it.

State machine (Graphile Worker's localQueue, with its crash window closed by the rescuer):

    waiting    nothing to claim, or no room: sleeps until woken by a NOTIFY, by a child
               freeing slots, by the timer of a job scheduled for later, or by the poll
               interval (the fallback when notifications are lost or LISTEN is
               unavailable, e.g. behind PgBouncer in transaction mode).
    claiming   one job_claim statement for up to ``room`` jobs, where
                   room = free slots in the children + prefetch depth - jobs in hand,
               the depth being about PREFETCH_HORIZON seconds of the engine's own recent
               rate of work (see depth), capped at worker.batch_size (and at
               worker.batch_max_bytes of payload),
               of which serial-queue jobs at most what the children can start right now
               (``startable``): a serial-queue job waiting in this engine's buffer would
               hold its queue from every other engine. A full batch (or one cut by the
               byte limit) means more may be waiting, so it claims again at once; a short
               one means the queue is drained: wait. Claimed jobs are buffered by
               lane: sync handlers' jobs and the others (see the supervisor).
    (controls) once per poll interval, and at once on a 'control' NOTIFY, a claim first
               reads the paused queues and tasks and the tasks under a limit
               (control_get.sql) and passes the pauses to the claims. An engine that runs
               a task under a limit claims the parallel queue with job_claim_limited.sql
               (the limits enforced there) and the serial queues with job_claim.sql; its
               lookahead (how many runnable jobs the limited claim reads) is one claim's
               room while nothing is held back, and grows x4 per claim while jobs are (up
               to worker.limits_lookahead), a deeper claim being made at once. A held-back
               rate-limited key sets a timer for when its window frees a slot.
    paused     the completer has more than worker.max_result_buffer results it cannot
               write (database away): claiming stops until they land.
    stopped    no more claims. ``take_all()`` hands the unstarted jobs in hand back to the
               caller, who releases them (attempt not consumed).

Notifications. The jobs channel carries enqueues' wake-ups ('' or the epoch of a future
run_at) and cancel requests ('cancel:<engine id>', from cancel_jobs): those for this engine
go to ``on_cancel_notice`` (the supervisor heartbeats at once, which reads the requests),
those for another engine are ignored.

Invariants: jobs in hand (buffered here + in flight in children) never exceed the
children's total capacity + one claim batch, and the buffers hold at most
worker.batch_max_bytes of messages (plus one job, as a claim always takes one), so parent
memory stays flat whatever the backlog and whatever payloads producers send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import sql

from skivi.control import PARALLEL_QUEUE
from skivi.db.queries import (
    CLAIM_CUT,
    CLAIM_ID,
    CLAIM_LEASE,
    CLAIM_MESSAGE,
    CLAIM_TASK,
    LIMITED_BLOCKED,
    LIMITED_CUT,
    LIMITED_WAKE_AT,
    ClaimRow,
    Queries,
    channel_name,
    control_get,
    job_claim,
    job_claim_limited,
    transaction_settings_local,
)
from skivi.db.retry import RetryBackoff
from skivi.engine.connection import Reconnecting
from skivi.engine.service import cancel_and_wait

__all__ = ["CLAIMED_ID", "CLAIMED_LEASE", "CLAIMED_MESSAGE", "CLAIMED_TASK", "ClaimedJob",
           "Fetcher"]

logger = logging.getLogger(__name__)

# A job in hand: the claim's own row as psycopg returns it (nothing is built per job),
# read by these indices.
ClaimedJob = ClaimRow
CLAIMED_ID: Final = CLAIM_ID
CLAIMED_LEASE: Final = CLAIM_LEASE
CLAIMED_MESSAGE: Final = CLAIM_MESSAGE  # the job message (see wire), JSON text: never parsed here
CLAIMED_TASK: Final = CLAIM_TASK  # task identifier, to pick the lane without parsing the message

_message = operator.itemgetter(CLAIMED_MESSAGE)

CANCEL_NOTICE = "cancel:"  # then an engine id: a cancel request for its jobs (0007_cancel.sql)
CLAIM_FINISH_TIMEOUT = 5.0
# A failed claim is retried after these many seconds, doubling, not jittered
# (skivi.db.retry); reconnecting, if the connection broke, has its own jittered backoff.
CLAIM_RETRY_DELAY_INITIAL = 0.05
CLAIM_RETRY_DELAY_MAX = 2.0
# LISTEN, lost or refused, is tried again after these (polling carries on meanwhile).
LISTEN_RETRY_DELAY_INITIAL = 0.1
LISTEN_RETRY_DELAY_MAX = 5.0

CONTROL_NOTICE: Final = "control"
"""The NOTIFY payload of a pause or resume: read the controls again before the next claim."""
LIMITS_NOTICE: Final = "limits"
"""The NOTIFY payload of a full limit key given back (limit_key_drop_many.sql): claim again."""
LOOKAHEAD_GROWTH = 4
# Prefetch (Fetcher.depth): seconds of the engine's own recent rate of work it may hold
# beyond its children's capacity, and the fewest jobs. Measured here with no-op jobs, one
# engine drained 58-61k jobs/s with a fixed prefetch of 500 and 75-80k with 2,000; with the
# adaptive depth, worker.batch_size 2,000 gave 65-67k and 4,000 74-77k (a claim of 2,000
# costs the server ~14 ms, so half a depth of 2,000 left in hand did not cover it).
PREFETCH_HORIZON = 0.2
PREFETCH_MIN = 16
# The rate is the jobs done over the last RATE_SPAN seconds, sampled every RATE_WINDOW: a
# child reports its finished jobs in bursts, so a rate over one 20 ms window read 5-13x
# the engine's true rate (16 engines on this machine, ~3,000 jobs/s each, measured 12,000-
# 40,000), and an engine so misled held 4,000 jobs that the others, idle, waited on at the
# end of a drain.
RATE_WINDOW = 0.02
RATE_SPAN = 0.2
RATE_DECAY = 0.5


class Fetcher:
    def __init__(self, db: Reconnecting, listen_db: Reconnecting | None, queries: Queries, *,
                 engine_id: Callable[[], int], batch_size: int, poll_interval: float,
                 batch_max_bytes: int = 1 << 40, lock_timeout: float = 1.5,
                 capacity: Callable[[], int], in_flight: Callable[[], int],
                 paused: Callable[[], bool], on_claimed: Callable[[int], None],
                 flushes: Callable[[], int],
                 tasks: list[str] | None, forbidden_flags: list[str] | None,
                 queues: list[str] | None, sync_tasks: frozenset[str] = frozenset(),
                 sync_only: bool = False,
                 startable: Callable[[], int] | None = None,
                 holdable: Callable[[frozenset[str]], int | None] | None = None,
                 listen_here: bool = False,
                 on_cancel_notice: Callable[[], None] | None = None,
                 own_tasks: frozenset[str] = frozenset(),
                 limits_lookahead: int = 10_000) -> None:
        self.db = db
        self.on_cancel_notice = on_cancel_notice
        self.listen_db = listen_db
        # LISTEN on the claim connection itself (no connection of its own): notifications
        # are read while the fetcher sleeps, and those that arrive during a claim wait in
        # psycopg's backlog for the next sleep.
        self.listen_here = listen_here
        self._listening_on: Any = None
        self.q = queries
        self.engine_id = engine_id
        self.batch_size = batch_size
        self.batch_max_bytes = batch_max_bytes
        self.lock_timeout_ms = str(max(1, round(lock_timeout * 1000)))
        # Payload bytes (message lengths) waiting in the buffers; the child pool takes off
        # what it hands over (``taken``).
        self.buffered_bytes = 0
        self.cut = False  # the last claim left runnable jobs for the byte limit
        self.poll_interval = poll_interval
        self.capacity = capacity
        self.in_flight = in_flight
        self.paused = paused
        self.on_claimed = on_claimed
        self.flushes = flushes
        # The completer's flush count when the last claim started: a short claim proves
        # "nothing runnable" only if no flush (which may free a serial queue) came after.
        self.claimed_after_flush = -1
        self.task_filter = tasks
        self.forbidden_flags = forbidden_flags
        self.queue_filter = queues
        self.sync_tasks = sync_tasks
        self.sync_only = sync_only  # no task of the registry is async
        self.startable = startable
        self.holdable = holdable
        self.limited_tasks: frozenset[str] = frozenset()  # this engine's, under a limit
        self.limited_capped = False  # the last limited claim was cut by the children's room
        self.async_buffer: deque[ClaimedJob] = deque()
        self.sync_buffer: deque[ClaimedJob] = deque()
        self.stopped = False
        self.drained = False  # the last claim came back short
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.serial_limit_used = 0
        self.claims = 0
        self.claimed = 0
        self.listening = False
        self._listen_backoff = RetryBackoff(LISTEN_RETRY_DELAY_INITIAL, LISTEN_RETRY_DELAY_MAX)
        # Controls (control_get.sql), read again when due or after a 'control' NOTIFY.
        self.own_tasks = own_tasks
        self.paused_queues: list[str] | None = None
        self.paused_tasks: list[str] | None = None
        self.limited = False  # a task this engine runs is under a limit
        # Once limited, claims may hold limit keys: the completer gives them back from then
        # on (a finished job's keys are computed again from its row).
        self.ever_limited = False
        self._controls_due = 0.0  # monotonic time of the next read; 0: at the next claim
        self.limits_lookahead = limits_lookahead
        self.lookahead = 0  # the limited claim's lookahead; 0: one claim's room
        self._deep_due = 0.0  # monotonic time from which a deeper look may start again
        self.wake_at: float | None = None  # the last limited claim's wake_at, for tests
        # Jobs a second leaving this engine's hands (see depth), measured by room().
        self.rate = 0.0
        self._rate_at = time.monotonic()
        # (when, jobs done by then): the samples of the last RATE_SPAN seconds and one before.
        self._rate_samples: deque[tuple[float, int]] = deque(
            [(self._rate_at, 0)])

    def depth(self) -> int:
        """How many jobs beyond the children's capacity this engine holds (its prefetch):
        PREFETCH_HORIZON seconds of its recent rate of work, within [PREFETCH_MIN,
        worker.batch_size]. An engine of tiny jobs claims in large batches, over which the
        claim's fixed cost and the parent's per-claim work are spread (from a standing
        start it gets there within a few RATE_WINDOWs); an engine of long jobs holds few
        beyond what it runs, so it does not strand jobs that an idle engine could run."""
        return max(PREFETCH_MIN, min(self.batch_size, round(self.rate * PREFETCH_HORIZON)))

    def room(self) -> int:
        """How many jobs to claim now; 0 means wait. Claims are batched: below half the
        prefetch depth of room it waits for more, unless the buffer is empty and children
        have free slots, so a busy engine makes few large claims and an idle one still
        reacts at once."""
        if self.buffered_bytes >= self.batch_max_bytes:
            return 0  # the buffer holds a claim's worth of payload already
        self._measure_rate()
        buffered = self.buffered()
        depth = self.depth()
        room = min(self.batch_size, self.capacity() + depth - self.in_flight() - buffered)
        if room >= depth // 2 or (not buffered and room > 0
                                  and self.in_flight() < self.capacity()):
            return room
        return 0

    def _measure_rate(self) -> None:
        """Fold the jobs that left this engine's hands (run, or given back) over the last
        RATE_SPAN seconds (less at the start: since the first sample) into its rate, every
        RATE_WINDOW: at once when faster, so a backlog's first rounds grow the prefetch, and
        decaying over RATE_DECAY seconds when slower, so a short pause does not empty it."""
        now = time.monotonic()
        elapsed = now - self._rate_at
        if elapsed < RATE_WINDOW:
            return
        self._rate_at = now
        done = self.claimed - self.in_flight() - self.buffered()
        samples = self._rate_samples
        while len(samples) > 1 and samples[1][0] <= now - RATE_SPAN:
            samples.popleft()
        since, done_then = samples[0]
        samples.append((now, done))
        current = max(0, done - done_then) / (now - since)
        if current > self.rate:
            self.rate = current
        else:
            self.rate += (1.0 - math.exp(-elapsed / RATE_DECAY)) * (current - self.rate)

    def buffered(self) -> int:
        return len(self.async_buffer) + len(self.sync_buffer)

    def wake(self) -> None:
        self._wake.set()

    def worth_claiming(self) -> bool:
        """Whether slots freed since the last claim can find more jobs: not after a claim
        that came back short (the table had no more), unless that claim took fewer
        serial-queue jobs than could start now. New jobs and freed serial queues wake the
        fetcher on their own (NOTIFY, the completer's flush, the poll)."""
        if not self.drained:
            return True
        if self.limited_capped and self.holdable is not None:
            holdable = self.holdable(self.limited_tasks)
            if holdable is None or holdable > 0:
                return True
        return self.startable is not None and self.startable() > self.serial_limit_used

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._run(), name="fetcher"))
        if self.listen_db is not None:
            self._tasks.append(loop.create_task(self._listen(), name="listener"))

    async def stop(self) -> None:
        """Stop claiming. A claim already sent is let finish (up to CLAIM_FINISH_TIMEOUT):
        cancelling it could leave jobs claimed by this engine that nobody knows about,
        to be rescued later with an attempt spent."""
        self.stopped = True
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._tasks:
            claim_loop, *others = self._tasks
            await cancel_and_wait(others)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(claim_loop), CLAIM_FINISH_TIMEOUT)
            await cancel_and_wait([claim_loop])
        self._tasks.clear()

    def taken(self, nbytes: int) -> None:
        """The child pool took jobs of ``nbytes`` message bytes out of the buffers."""
        self.buffered_bytes -= nbytes

    def take_claims(self, claims: set[tuple[int, int]]) -> list[ClaimedJob]:
        """Take these claims out of the buffers (their cancel was requested); those found.
        Rare, so a pass over the buffers is fine."""
        taken: list[ClaimedJob] = []
        for buffer in (self.async_buffer, self.sync_buffer):
            if not any((j[CLAIMED_ID], j[CLAIMED_LEASE]) in claims for j in buffer):
                continue
            kept = [j for j in buffer if (j[CLAIMED_ID], j[CLAIMED_LEASE]) not in claims]
            taken += [j for j in buffer if (j[CLAIMED_ID], j[CLAIMED_LEASE]) in claims]
            buffer.clear()
            buffer.extend(kept)
        self.buffered_bytes -= sum(map(len, map(_message, taken)))
        return taken

    def take_all(self) -> list[ClaimedJob]:
        jobs = [*self.async_buffer, *self.sync_buffer]
        self.async_buffer.clear()
        self.sync_buffer.clear()
        self.buffered_bytes = 0
        return jobs

    async def _run(self) -> None:
        backoff = RetryBackoff(CLAIM_RETRY_DELAY_INITIAL, CLAIM_RETRY_DELAY_MAX)
        while not self.stopped:
            room = self.room()
            if room <= 0 or self.paused():
                self._wake.clear()
                await self._sleep(self.poll_interval)
                continue
            # Cleared before the claim, so a wake-up that arrives while it runs (a freed slot,
            # a freed serial queue, a NOTIFY) is not lost.
            self._wake.clear()
            try:
                n = await self._claim(room)
                backoff.reset()
            except Exception as exc:  # a claim loop that died would stop the engine
                self.db.broken()
                wait = backoff.next()
                if isinstance(exc, psycopg.Error):
                    logger.warning("claim failed: %s; retrying in %.2fs", exc, wait,
                                   extra={"action": "claim_failed"})
                else:
                    logger.exception("claim failed; retrying in %.2fs", wait,
                                     extra={"action": "claim_failed"})
                await asyncio.sleep(wait)
                continue
            # Short because of the byte limit is not drained: more are waiting.
            self.drained = n < room and not self.cut
            if self.drained:
                await self._sleep(self.poll_interval, listen=True)

    def idle(self) -> bool:
        """Nothing runnable was found by a claim made after the last completion flush."""
        return (self.drained and not self.buffered()
                and self.claimed_after_flush == self.flushes())

    async def _read_controls(self, conn: Any) -> None:
        row = await control_get.run_async(conn, self.q)
        self.paused_queues = row.paused_queues
        self.paused_tasks = row.paused_tasks
        # Limits apply to jobs without a queue, which a queue filter never claims.
        limited = self.own_tasks.intersection(row.limited_tasks or ())
        self.limited = self.queue_filter is None and bool(limited)
        self.limited_tasks = frozenset(limited)
        self.ever_limited = self.ever_limited or self.limited
        self._controls_due = time.monotonic() + self.poll_interval

    async def _claim(self, limit: int) -> int:
        self.claimed_after_flush = self.flushes()
        # Not drained while this claim runs: it may find jobs (--once must not stop now).
        self.drained = False
        async with self.db.session() as conn:
            if time.monotonic() >= self._controls_due:
                await self._read_controls(conn)
            # One autocommit statement: the claim function carries its own lock timeout
            # and generic plans (migration 0010). Only a claim under limits adds a second
            # statement, job_claim_limited, and takes a transaction to carry the settings.
            async with (conn.transaction() if self.limited
                        else contextlib.nullcontext()):
                if self.limited:
                    await transaction_settings_local.run_async(conn, self.q,
                                                               ms=self.lock_timeout_ms)
                rows, cut = await self._claim_rows(conn, limit)
        # Only now, the claim committed: a child may finish a job before it is.
        return self._took(rows, cut)

    async def _claim_rows(self, conn: Any, limit: int) -> tuple[list[Any], bool]:
        """The claim's statements: job_claim, and job_claim_limited under limits."""
        serial = limit if self.startable is None else min(limit, self.startable())
        self.serial_limit_used = serial
        # What the buffers hold counts against the byte limit too, so the parent
        # never holds much more than worker.batch_max_bytes of unstarted payload.
        max_bytes = max(1, self.batch_max_bytes - self.buffered_bytes)
        paused_queues = self.paused_queues
        if self.limited:
            # The parallel queue is the limited claim's: job_claim takes serial queues
            # (first, so a steady parallel backlog never crowds them out).
            paused_queues = [*(paused_queues or ()), PARALLEL_QUEUE]
        rows: list[Any] = await job_claim.run_async(
            conn, self.q, engine=self.engine_id(), limit=limit, serial_limit=serial,
            max_bytes=max_bytes, tasks=self.task_filter, forbidden=self.forbidden_flags,
            queues=self.queue_filter, paused_queues=paused_queues,
            paused_tasks=self.paused_tasks, lock_timeout=self.lock_timeout_ms)
        cut = bool(rows) and rows[0][CLAIM_CUT]
        self.limited_capped = False
        if self.limited and len(rows) < limit:
            # Jobs under a limit are claimed only as far as the children can take them
            # in hand: one waiting in the parent's buffer would count against its key
            # (a rate's start, a concurrency slot) while an engine with free slots
            # found nothing to start, and would start later than its window allowed.
            room = limit - len(rows)
            more: list[Any] = []
            holdable = None if self.holdable is None else self.holdable(self.limited_tasks)
            if holdable is not None:
                room = min(room, holdable - len(rows))
            if room > 0:
                more, limited_cut = await self._claim_limited(
                    conn, room, max(1, max_bytes - sum(map(len, map(_message, rows)))))
                rows.extend(more)
                cut = cut or limited_cut
            # Short for want of slots, not of jobs: a freed slot is worth a claim.
            self.limited_capped = room <= 0 or len(more) == room
        return rows, cut

    def _took(self, rows: list[Any], cut: bool) -> int:
        """Buffer a committed claim's jobs by lane; how many."""
        self.cut = cut
        self.claims += 1
        if self.claims == 1:
            logger.debug("first claim: %d jobs", len(rows), extra={"action": "claim"})
        if rows:
            self.claimed += len(rows)
            jobs = rows
            # Characters of message text: bytes for ASCII, and near enough for a bound.
            self.buffered_bytes += sum(map(len, map(_message, jobs)))
            sync_tasks = self.sync_tasks
            if not sync_tasks:
                self.async_buffer.extend(jobs)
            elif self.sync_only:
                # Every task is sync (a job of an unknown task is answered at once in
                # either lane): no choice to make per row.
                self.sync_buffer.extend(jobs)
            else:
                sync_buffer, async_buffer = self.sync_buffer, self.async_buffer
                for job in jobs:
                    (sync_buffer if job[CLAIMED_TASK] in sync_tasks
                     else async_buffer).append(job)
            self.on_claimed(len(rows))
        return len(rows)

    async def _claim_limited(self, conn: Any, limit: int, max_bytes: int
                             ) -> tuple[list[Any], bool]:
        """The parallel queue's jobs under the limits: (rows, cut), cut meaning claim again
        at once (more runnable, or a deeper look is due)."""
        lookahead = max(limit, min(self.lookahead, self.limits_lookahead))
        rows = await job_claim_limited.run_async(
            conn, self.q, engine=self.engine_id(), limit=limit, lookahead=lookahead,
            max_bytes=max_bytes, tasks=self.task_filter, forbidden=self.forbidden_flags,
            paused_queues=self.paused_queues, paused_tasks=self.paused_tasks)
        status = rows.pop()
        cut = bool(status[LIMITED_CUT])
        self.wake_at = status[LIMITED_WAKE_AT]
        if status[LIMITED_BLOCKED] and self.wake_at is not None:
            self._wake_at(self.wake_at)
        now = time.monotonic()
        if not status[LIMITED_BLOCKED] or len(rows) == limit:
            self.lookahead = 0  # nothing held back, or a full claim: one claim's look
        elif lookahead < self.limits_lookahead and (self.lookahead or now >= self._deep_due):
            # Held-back jobs filled the look: look deeper, now (a deep look costs the
            # database a read of every job it passes, hence at most one series of them
            # per poll interval, or per wake-up by new jobs).
            self.lookahead = min(lookahead * LOOKAHEAD_GROWTH, self.limits_lookahead)
            cut = True
        else:
            self.lookahead = 0
            self._deep_due = now + self.poll_interval
        return rows, cut

    async def _sleep(self, timeout: float, *, listen: bool = False) -> None:
        """Wait for a wake-up, at most ``timeout``. With ``listen`` (the table looked
        drained), also for a notification on the claim connection; a busy fetcher waiting
        for room needs none (it claims once there is room), and a plain wait costs less."""
        if listen and self.listen_here and not self.stopped:
            try:
                await self._sleep_listening(timeout)
                self._listen_backoff.reset()
                return
            except Exception as exc:  # noqa: BLE001 - polling carries on meanwhile
                self.listening = False
                self._listening_on = None
                # Not a whole poll interval: the next claim reconnects and LISTENs again,
                # and until then notifications are lost (only the poll would find jobs).
                timeout = min(timeout, self._listen_backoff.next())
                logger.warning("LISTEN lost (%s); trying again in %.1fs, polling meanwhile",
                               exc, timeout, extra={"action": "listen_lost"})
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _sleep_listening(self, timeout: float) -> None:
        """Wait for a wake-up or a notification on the claim connection, at most
        ``timeout`` seconds."""
        if self._wake.is_set():
            return
        async with self.db.session() as conn:
            if conn is not self._listening_on:
                channel = channel_name(self.q.schema)
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
                self._listening_on = conn
                self.listening = True
                self._missed_notes()
                return
            waiter = asyncio.ensure_future(self._wake.wait())
            notes = asyncio.ensure_future(self._next_notes(conn, timeout))
            try:
                await asyncio.wait({waiter, notes}, timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait([waiter, notes])
            if notes.done() and not notes.cancelled() and notes.exception() is not None:
                raise notes.exception()  # type: ignore[misc]

    async def _next_notes(self, conn: Any, timeout: float) -> None:
        async for note in conn.notifies(timeout=timeout, stop_after=1):
            self._notified(note)

    def _missed_notes(self) -> None:
        """LISTEN is (again) in place: jobs may have been enqueued while it was not, their
        NOTIFY lost. Claim as one would have: looking deep past a held-back backlog (a
        shallow look would end at it, and the next deep one wait a poll interval)."""
        self._deep_due = 0.0
        self.wake()

    def _notified(self, note: Any) -> None:
        if note.payload == LIMITS_NOTICE:
            self.wake()
            return
        if note.payload == CONTROL_NOTICE:
            self._controls_due = 0.0
            self.wake()
            return
        # New jobs (perhaps of keys behind a saturated key's backlog) may be looked for deep.
        self._deep_due = 0.0
        if note.payload:
            if note.payload.startswith(CANCEL_NOTICE):
                if (self.on_cancel_notice is not None
                        and note.payload[len(CANCEL_NOTICE):] == str(self.engine_id())):
                    self.on_cancel_notice()
                return
            try:
                self._wake_at(float(note.payload))
            except ValueError:
                self.wake()
        else:
            self.wake()

    def _wake_at(self, epoch: float) -> None:
        """A job becomes runnable at ``epoch``: wake then rather than at the next poll."""
        delay = epoch - time.time()
        if delay <= 0:
            self.wake()
            return
        if delay > self.poll_interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        # A timer that already fired (its when() past) is no reason to skip a later one.
        if (self._timer is None or self._timer.when() <= now
                or self._timer.when() > now + delay):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(delay, self.wake)

    async def _listen(self) -> None:
        assert self.listen_db is not None
        channel = channel_name(self.q.schema)
        backoff = RetryBackoff(LISTEN_RETRY_DELAY_INITIAL, LISTEN_RETRY_DELAY_MAX)
        while not self.stopped:
            try:
                conn = await self.listen_db.get()
                await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
                self.listening = True
                backoff.reset()
                self._missed_notes()
                async for note in conn.notifies():
                    self._notified(note)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - polling carries on meanwhile
                # If LISTEN itself is refused (a transaction-mode pooler) the connection
                # stays and LISTEN is retried with backoff; polling carries on meanwhile.
                self.listening = False
                self.listen_db.broken()
                logger.warning("LISTEN lost (%s); polling every %.1fs until it is back",
                               exc, self.poll_interval, extra={"action": "listen_lost"})
                await backoff.sleep()
