"""The completer: owns every job-state write that finishes a claim.

Results from the children arrive here one batch at a time and are written in batches: one
``job_complete_many`` statement for successes, one ``job_fail_many`` for failures (retries
and exhaustions), one ``job_release_many`` for jobs handed back unstarted, and, only when
some job's cancel was requested, one ``job_cancel_many`` for those. A flush happens
when ``worker.completion_batch_size`` results wait, or ``worker.completion_interval``
seconds after the first one arrived, whichever comes first (River's job completer,
Graphile Worker's completeJobBatchDelay). A flush of successes alone is one autocommit
statement (``complete_claims``, migration 0011, carries the lock timeout); any other runs its
statements in one transaction.

States:
    idle       nothing pending; waits for results.
    batching   results pending; flushes on size or on the batching window.
    failing    the database refused or the connection dropped: pending results stay in
               memory, the connection is rebuilt, the flush is retried with jittered
               backoff. While more than ``worker.max_result_buffer`` results wait,
               ``backpressure`` is true and the fetcher stops claiming.
    stopping   ``drain()`` flushes until nothing is pending (or its deadline passes).

Every statement is guarded by (engine, id, lease) in SQL, so a flush retried after an
ambiguous failure, or a result for a job that was rescued meanwhile, changes nothing.

Kept results (a task's ``store_result``, ``worker.store_results``). The return values of
jobs of tasks that keep them arrive apart from their rows (``keep``, from the children's
VALUES frames) and wait in ``values`` by claim. A flush whose batch holds a completed claim
with a value, or a failed row of a keeping task (its exhaustion keeps its last error), runs
one more statement, ``job_result_store_many``, in the same transaction, for the claims the
finishing statements accepted. A batch of other jobs, which is every batch when no task keeps
results, sends exactly the statements it sent before results existed: ``values`` is empty
and ``keeping_results`` too, and both are only tested for emptiness once per flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from skivi.db.queries import (
    COMPLETED_ID,
    COMPLETED_LEASE,
    FAILED_ATTEMPTS,
    FAILED_ID,
    FAILED_LEASE,
    FAILED_MAX_ATTEMPTS,
    FAILED_OUTCOME,
    FAILED_REASON,
    FAILED_RUN_AT,
    CancelledRow,
    Queries,
    job_cancel_many,
    job_complete_many,
    job_fail_many,
    job_release_many,
    job_result_store_many,
    limit_key_drop_many,
    limit_key_held_many,
    transaction_settings_local,
)
from skivi.db.retry import JITTER_AROUND, RetryBackoff
from skivi.engine.connection import Reconnecting
from skivi.engine.service import cancel_and_wait
from skivi.engine.wire import (
    RESULT_ATTEMPT,
    RESULT_CANCELLED,
    RESULT_CODE,
    RESULT_COMPLETED,
    RESULT_DELAY,
    RESULT_ERROR,
    RESULT_FAILED,
    RESULT_FINAL,
    RESULT_ID,
    RESULT_LEASE,
    RESULT_PAYLOAD,
    RESULT_TASK,
    RESULT_TRACEBACK,
    VALUE_ERROR,
    VALUE_ID,
    VALUE_JSON,
    VALUE_LEASE,
    VALUE_TASK,
)

__all__ = ["RECORDED_ATTEMPTS", "RECORDED_MAX_ATTEMPTS", "RECORDED_REASON", "RECORDED_RUN_AT",
           "Completer", "Flushed"]

logger = logging.getLogger(__name__)

Claim = tuple[int, int]  # (job id, lease): one claim of one job
# A failed claim as the database recorded it (see job_fail_many.sql), read by these indices.
Recorded = tuple[int, int, Any, str | None]
RECORDED_ATTEMPTS: Final = 0
RECORDED_MAX_ATTEMPTS: Final = 1
RECORDED_RUN_AT: Final = 2  # when it runs again; None for an exhausted job
RECORDED_REASON: Final = 3  # the exhaustion's reason as job_history has it; None for a failed job

# A failed flush is retried after these many seconds, doubling, each wait jittered by
# uniform(0.5, 1.5) (skivi.db.retry).
FLUSH_RETRY_DELAY_INITIAL = 0.05
FLUSH_RETRY_DELAY_MAX = 5.0

# The most a NOTIFY payload holds is 8000 bytes; past this the ids are left out (see
# job_result_store_many.sql).
NOTICE_MAX = 7900


@dataclass(frozen=True, slots=True)
class Flushed:
    """What one completion flush wrote: one record per flush, handed to the observer."""

    completed: list[list[Any]]  # the completed result rows sent (see wire)
    failed: list[list[Any]]  # the failed result rows sent
    done: set[Claim]  # the completed claims the database accepted (the rest were stale)
    outcomes: dict[Claim, str]  # each accepted failed claim: "failed" or "exhausted"
    recorded: dict[Claim, Recorded]  # what the database recorded for each failed claim
    cancelled: list[list[Any]] = dataclasses.field(default_factory=list)
    """The cancelled result rows sent (RESULT_CANCELLED)."""
    cancels: dict[Claim, CancelledRow] = dataclasses.field(default_factory=dict)
    """Each accepted cancelled claim: what the database recorded (its request's why, who)."""


FlushHook = Callable[[Flushed], None]


class Completer:
    def __init__(self, db: Reconnecting, queries: Queries, *, engine_id: Callable[[], int],
                 batch_size: int, interval: float, max_buffer: int, history: bool,
                 on_flushed: FlushHook | None = None,
                 keeping_results: frozenset[str] = frozenset(),
                 lock_timeout: float = 1.5,
                 frees_keys: Callable[[], bool] = lambda: False) -> None:
        self.db = db
        self._lock_timeout_ms = str(max(1, round(lock_timeout * 1000)))
        self.q = queries
        self.engine_id = engine_id
        self.batch_size = batch_size
        self.interval = interval
        self.max_buffer = max_buffer
        self.history = history
        self.on_flushed = on_flushed
        self.keeping_results = keeping_results
        """The tasks whose jobs keep their results (exhausted ones: their last error)."""
        self.frees_keys = frees_keys
        """Whether claims may hold limit keys (the engine claims under limits): each flush
        then gives back those of the claims it finishes, in its transaction."""
        self.values: dict[Claim, tuple[str, str | None, str | None]] = {}
        """Claim -> (task, value JSON, error) of completed jobs whose values came first."""
        self.results_stored = 0
        self.completed: list[list[Any]] = []
        self.failed: list[list[Any]] = []
        self.released: list[tuple[int, int]] = []
        self.cancelled: list[list[Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._first_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flush = 0  # results taken by the flush being written: still unconfirmed
        self.flushes = 0

    @property
    def pending(self) -> int:
        return (len(self.completed) + len(self.failed) + len(self.released)
                + len(self.cancelled))

    @property
    def unwritten(self) -> int:
        """Results not yet confirmed written: pending ones and those of a flush under way."""
        return self.pending + self._in_flush

    @property
    def backpressure(self) -> bool:
        # What a flush in progress holds counts too: if the database is away, it comes back.
        return self.pending + self._in_flush >= self.max_buffer

    def add(self, results: Sequence[list[Any]]) -> None:
        """Take a batch of result rows (see ``wire``)."""
        was_empty = not self.pending
        if was_empty:
            self._first_at = time.monotonic()
        for r in results:
            code = r[RESULT_CODE]
            if code == RESULT_COMPLETED:
                self.completed.append(r)
            elif code == RESULT_FAILED:
                self.failed.append(r)
            elif code == RESULT_CANCELLED:
                self.cancelled.append(r)
            else:
                self.released.append((r[RESULT_ID], r[RESULT_LEASE]))
        self._idle.clear()
        self._nudge(was_empty)

    def keep(self, values: Sequence[Sequence[Any]]) -> None:
        """Take the return values of jobs whose rows come next (a VALUES frame, see
        ``wire``). A claim that already has one keeps it (the parent settling a dead child
        says a value was lost only when none came)."""
        for v in values:
            self.values.setdefault((v[VALUE_ID], v[VALUE_LEASE]),
                                   (v[VALUE_TASK], v[VALUE_JSON], v[VALUE_ERROR]))

    def release(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Give back claimed jobs that never started."""
        if not pairs:
            return
        was_empty = not self.pending
        if was_empty:
            self._first_at = time.monotonic()
        self.released.extend(pairs)
        self._idle.clear()
        self._nudge(was_empty)

    def _nudge(self, was_empty: bool) -> None:
        # Only what changes the writer's plan wakes it: the first result (its interval
        # starts) and a full batch. Between the two it sleeps out the interval, instead of
        # waking for every frame a child sends only to wait again.
        if was_empty or len(self.completed) + len(self.failed) >= self.batch_size:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="completer")

    async def _run(self) -> None:
        backoff = RetryBackoff(FLUSH_RETRY_DELAY_INITIAL, FLUSH_RETRY_DELAY_MAX,
                               jitter=JITTER_AROUND)
        while True:
            if not self.pending:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self.completed) + len(self.failed) < self.batch_size and not self._closing:
                wait = self._first_at + self.interval - time.monotonic()
                if wait > 0:
                    self._wake.clear()
                    try:
                        async with asyncio.timeout(wait):  # no task per wait, as wait_for has
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    if len(self.completed) + len(self.failed) < self.batch_size and \
                            time.monotonic() < self._first_at + self.interval:
                        continue
            try:
                await self.flush()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - kept and retried, never dropped
                wait = backoff.next()
                logger.warning("completion flush failed (%d results kept, retrying in %.2fs): %s",
                               self.pending, wait, exc,
                               extra={"action": "retry_flush", "pending": self.pending})
                await asyncio.sleep(wait)

    async def flush(self) -> None:
        """Write everything pending, one statement per kind. On failure, nothing is lost:
        the batches go back in front of whatever arrived meanwhile."""
        completed, self.completed = self.completed, []
        failed, self.failed = self.failed, []
        released, self.released = self.released, []
        cancelled, self.cancelled = self.cancelled, []
        self._in_flush = len(completed) + len(failed) + len(released) + len(cancelled)
        self._first_at = time.monotonic()
        engine = self.engine_id()
        done_ids: set[Claim] = set()
        outcomes: dict[Claim, str] = {}
        recorded: dict[Claim, Recorded] = {}
        cancels: dict[Claim, CancelledRow] = {}
        # Only when results are kept at all: may this flush keep some?
        keeping = bool((completed and self.values) or (failed and self.keeping_results))
        # Successes alone (the drain's common flush) are one autocommit statement, which is
        # its own transaction and carries its own lock timeout (complete_claims, migration
        # 0011): one round trip instead of four.
        alone = not (failed or released or cancelled or keeping or self.frees_keys())
        try:
            async with self.db.session() as conn, (
                    contextlib.nullcontext() if alone else conn.transaction()):
                # All or nothing, so a retried flush reports exactly what it did; and never
                # stuck behind another session's lock for long, since the heartbeat waits
                # for this connection (a timed-out flush is retried, nothing lost).
                if not alone:
                    await transaction_settings_local.run_async(conn, self.q,
                                                               ms=self._lock_timeout_ms)
                done_ids, outcomes, recorded = await self._write(conn, engine, completed,
                                                                 failed, released)
                if cancelled:
                    cancels = await self._cancel(conn, engine, cancelled)
        except BaseException:
            self.db.broken()
            # Put back what was not confirmed; guarded statements make a replay harmless.
            self.completed[:0] = completed
            self.failed[:0] = failed
            self.released[:0] = released
            self.cancelled[:0] = cancelled
            raise
        finally:
            self._in_flush = 0
        if keeping and self.values:
            # Written (or stale): either way done with. Dropped only now, so a failed flush
            # keeps them for its retry.
            for r in completed:
                self.values.pop((r[RESULT_ID], r[RESULT_LEASE]), None)
        if cancelled and self.values:
            for r in cancelled:  # a completed row made cancelled may have sent its value
                self.values.pop((r[RESULT_ID], r[RESULT_LEASE]), None)
        self.flushes += 1
        if self.on_flushed is not None:
            try:
                self.on_flushed(Flushed(completed, failed, done_ids, outcomes, recorded,
                                        cancelled, cancels))
            except Exception:
                logger.exception("completion observer failed", extra={"action": "observe"})

    async def _write(self, conn: Any, engine: int, completed: list[list[Any]],
                     failed: list[list[Any]], released: list[tuple[int, int]],
                     ) -> tuple[set[Claim], dict[Claim, str], dict[Claim, Recorded]]:
        # Keyed by (id, lease), not id: one batch can hold two claims of the same job (an
        # engine that lost a job to a rescuer and claimed it again), only one accepted.
        done_ids: set[Claim] = set()
        outcomes: dict[Claim, str] = {}
        recorded: dict[Claim, Recorded] = {}
        held: str | None = None
        if self.frees_keys():
            # Before the statements below, which finish (delete) the rows it reads: the
            # concurrency keys every claim of the flush holds, whatever becomes of it (a
            # stale claim's lease matches no row). Given back last, below.
            held = await limit_key_held_many.run_async(
                conn, self.q,
                ids=_int_array(itertools.chain((r[RESULT_ID] for r in completed),
                                               (r[RESULT_ID] for r in failed),
                                               (c[0] for c in released))),
                leases=_int_array(itertools.chain((r[RESULT_LEASE] for r in completed),
                                                  (r[RESULT_LEASE] for r in failed),
                                                  (c[1] for c in released))))
        if completed:
            rows = await job_complete_many.run_async(
                conn, self.q, engine=engine, ids=_int_array(r[RESULT_ID] for r in completed),
                leases=_int_array(r[RESULT_LEASE] for r in completed), history=self.history,
                lock_timeout=self._lock_timeout_ms)
            done_ids = {(row[COMPLETED_ID], row[COMPLETED_LEASE]) for row in rows}
        if failed:
            for row in await job_fail_many.run_async(
                    conn, self.q, engine=engine,
                    ids=[r[RESULT_ID] for r in failed],
                    leases=[r[RESULT_LEASE] for r in failed],
                    errors=[r[RESULT_ERROR] for r in failed],
                    delays=[float(r[RESULT_DELAY]) for r in failed],
                    finals=[r[RESULT_FINAL] for r in failed],
                    payloads=[r[RESULT_PAYLOAD] for r in failed],
                    attempts=[r[RESULT_ATTEMPT] for r in failed],
                    tracebacks=[r[RESULT_TRACEBACK] for r in failed]):
                claim = (row[FAILED_ID], row[FAILED_LEASE])
                outcomes[claim] = row[FAILED_OUTCOME]
                recorded[claim] = (row[FAILED_ATTEMPTS], row[FAILED_MAX_ATTEMPTS],
                                   row[FAILED_RUN_AT], row[FAILED_REASON])
        if (completed and self.values) or (failed and self.keeping_results):
            await self._store_results(conn, completed, failed, done_ids, outcomes)
        if released:
            # Its answer (the ids released) is not needed, so it is left unread.
            await job_release_many.execute_async(
                conn, self.q, engine=engine, ids=_int_array(job_id for job_id, _ in released),
                leases=_int_array(lease for _, lease in released))
        if held is not None:
            # Last: the key rows stay locked only to the commit (claims skip locked ones).
            await limit_key_drop_many.execute_async(conn, self.q, holds=held)
        return done_ids, outcomes, recorded

    async def _cancel(self, conn: Any, engine: int, cancelled: list[list[Any]],
                      ) -> dict[Claim, CancelledRow]:
        """Record the cancelled claims (job_cancel_many); those the database accepted."""
        rows = await job_cancel_many.run_async(
            conn, self.q, engine=engine, ids=[r[RESULT_ID] for r in cancelled],
            leases=[r[RESULT_LEASE] for r in cancelled],
            errors=[r[RESULT_ERROR] for r in cancelled],
            tracebacks=[r[RESULT_TRACEBACK] for r in cancelled])
        return {(row.id, row.lease): row for row in rows}

    async def _store_results(self, conn: Any, completed: list[list[Any]],
                             failed: list[list[Any]], done_ids: set[Claim],
                             outcomes: dict[Claim, str]) -> None:
        """Keep the results of this batch's jobs of keeping tasks that the statements before
        accepted: completed ones with their values, exhausted ones with their last error."""
        ids: list[int] = []
        tasks: list[str] = []
        kinds: list[str] = []
        vals: list[str | None] = []
        errors: list[str | None] = []
        values = self.values
        for r in completed:
            claim = (r[RESULT_ID], r[RESULT_LEASE])
            kept = values.get(claim)
            if kept is not None and claim in done_ids:
                ids.append(claim[0])
                tasks.append(kept[0])
                kinds.append("completed")
                vals.append(kept[1])
                errors.append(kept[2])
        keeping = self.keeping_results
        for r in failed:
            claim = (r[RESULT_ID], r[RESULT_LEASE])
            if r[RESULT_TASK] in keeping and outcomes.get(claim) == "exhausted":
                ids.append(claim[0])
                tasks.append(r[RESULT_TASK])
                kinds.append("exhausted")
                vals.append(None)
                errors.append(r[RESULT_ERROR])
        if not ids:
            return
        notice = ",".join(map(str, ids))
        await job_result_store_many.run_async(
            conn, self.q, ids=ids, tasks=tasks, outcomes=kinds, vals=vals, errors=errors,
            notice=notice if len(notice) <= NOTICE_MAX else "")
        self.results_stored += len(ids)

    async def drain(self, timeout: float) -> bool:
        """Flush until nothing is pending; False if the deadline passed first."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            if self._task is not None and self._task.done():
                self._task = None
        return True

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await cancel_and_wait([self._task])


def _int_array(values: Iterable[int]) -> str:
    """A bigint[] literal: far cheaper to build than adapting a list element by element,
    and the statement casts it (``%(ids)s::bigint[]``)."""
    return "{" + ",".join(map(str, values)) + "}"
