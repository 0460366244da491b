"""The engine's observer: turns what the supervisor sees into events, metrics and logs.

What the log says about jobs (successes stay silent): each failed attempt at WARNING (job
id, task, attempt of max, the error's summary line, when it runs again); each exhaustion at
ERROR; jobs exhausted because this engine has no handler for their task at most once per
task per NO_HANDLER_LOG_INTERVAL seconds, with how many (a wrong task directory must be
plain to see, without one line per job). A producer sending endless distinct task names
must not grow the engine's memory or its log: :class:`NoHandlerLog` tracks at most
NO_HANDLER_TASKS_MAX task names and folds the rest into one line per interval.

The supervisor calls one method per thing that happened (see each method); the observer
emits the matching event (catalogue: ``skivi.events``) and, when the exporter is on, feeds
``skivi.metrics.EngineMetrics``. It runs in the engine's parent process, on its event loop,
and does no I/O: a completion flush of n results costs O(n) dict building, plus one counter
update per (task, queue, outcome) and one histogram update per task.

Result rows are those of ``skivi.engine.wire``, read by its RESULT_* indices.

:class:`QueueStatsPoller` runs ``job_stats.sql`` every ``interval`` seconds on a connection
of its own and hands the rows to the metrics (queue depth by state, oldest runnable job).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from skivi.control import PARALLEL_QUEUE
from skivi.db.queries import job_stats, pause_list
from skivi.engine import wire
from skivi.engine.completer import (
    RECORDED_ATTEMPTS,
    RECORDED_MAX_ATTEMPTS,
    RECORDED_REASON,
    RECORDED_RUN_AT,
)
from skivi.engine.service import cancel_and_wait, every
from skivi.events import Emitter, EventKind

if TYPE_CHECKING:
    from skivi.db.queries import CancelledRow, Queries
    from skivi.engine.completer import Claim, Recorded
    from skivi.engine.connection import Reconnecting
    from skivi.metrics import EngineMetrics

__all__ = ["STATS_INTERVAL_DEFAULT", "EngineObserver", "NoHandlerLog", "QueueStatsPoller"]

logger = logging.getLogger(__name__)

NO_HANDLER_LOG_INTERVAL = 60.0
# Task names without a handler logged one by one; past this many, they share one line.
NO_HANDLER_TASKS_MAX = 100
# How many names of those others are kept to count them; past it the line says "over N".
NO_HANDLER_OTHER_NAMES_MAX = 1000
NO_HANDLER_EXAMPLES = 3
ERROR_SUMMARY_MAX = 300
STATS_CAP_DEFAULT = 10000
STATS_INTERVAL_DEFAULT = 5.0
STATS_MAX_GROUPS_DEFAULT = 1000

# Result row fields (skivi.engine.wire), short names for the comprehensions below.
_ID = wire.RESULT_ID
_LEASE = wire.RESULT_LEASE
_TASK = wire.RESULT_TASK
_QUEUE = wire.RESULT_QUEUE_NAME
_RUN = wire.RESULT_RUN_SECONDS
_ERROR = wire.RESULT_ERROR
_DELAY = wire.RESULT_DELAY
_FINAL = wire.RESULT_FINAL
_PAYLOAD = wire.RESULT_PAYLOAD
_WAIT = wire.RESULT_WAIT_SECONDS
_TRACEBACK = wire.RESULT_TRACEBACK

_COMPLETED = EventKind.JOB_COMPLETED
_EXHAUSTED = EventKind.JOB_EXHAUSTED
_FAILED = EventKind.JOB_FAILED
_PARTIAL = EventKind.JOB_PARTIAL_SUCCESS


def _accepted(rows: Sequence[Sequence[Any]], done: Set[Claim]) -> Sequence[Sequence[Any]]:
    """The rows whose (id, lease) the database accepted. A flush reports each claim once,
    so when as many were accepted as sent, all were: no per-row lookup on the hot path."""
    if len(done) == len(rows):
        return rows
    return [r for r in rows if (r[_ID], r[_LEASE]) in done]


def error_summary(text: str | None) -> str:
    """The line of a stored error that says what went wrong: the exception line at the end
    of a traceback, else the first line; capped."""
    if not text:
        return "(no error text)"
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no error text)"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    line = line.strip()
    return line if len(line) <= ERROR_SUMMARY_MAX else line[:ERROR_SUMMARY_MAX] + "..."


def _reason(row: Sequence[Any], recorded: Recorded | None) -> str:
    """Why an exhausted row was exhausted: what job_fail_many.sql recorded in job_history
    (it alone sees that a running job lost its key: 'superseded'), else what the child
    said, else 'max_attempts'."""
    if recorded is not None and recorded[RECORDED_REASON] is not None:
        return recorded[RECORDED_REASON]
    return str(row[_FINAL] or "max_attempts")


@dataclass(slots=True)
class _NoHandlerLine:
    """One tracked task: when its line was last logged (-inf: never), and how many of its
    jobs were exhausted since."""

    logged: float
    count: int


class NoHandlerLog:
    """The ``job_no_handler`` log lines: at most one per task per ``interval`` seconds, with
    how many of its jobs were exhausted since its last line.

    Bounded whatever the producers send: at most ``max_tasks`` task names are tracked one by
    one; exhaustions of other tasks while that many are tracked share one line per interval
    ("N jobs of M other tasks without a handler exhausted (e.g. a, b, c)"), counting at most
    ``max_other_names`` distinct names. A tracked task whose last line is over ``interval``
    old and that has nothing to report is forgotten, freeing its place.

    Tracked tasks are kept in the order of their last line (oldest first), so finding the
    lines due, and the tasks to forget, looks only at the tasks that are due: the cost of a
    report does not grow with the number of names ever seen. A task seen for the first time
    (or again after it was forgotten) is logged at the next report.
    """

    def __init__(self, *, interval: float = NO_HANDLER_LOG_INTERVAL,
                 max_tasks: int = NO_HANDLER_TASKS_MAX,
                 max_other_names: int = NO_HANDLER_OTHER_NAMES_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.max_tasks = max_tasks
        self.max_other_names = max_other_names
        self.clock = clock
        self._tasks: OrderedDict[str, _NoHandlerLine] = OrderedDict()
        self._other_count = 0
        self._other_names: dict[str, None] = {}  # an ordered set: its first are the examples
        self._other_more = False  # more names than _other_names holds
        self._other_logged = -float("inf")

    def __bool__(self) -> bool:
        """Anything tracked (a report may have something to log or forget)."""
        return bool(self._tasks) or self._other_count > 0

    @property
    def tracked(self) -> int:
        """How many task names the log holds (tracked tasks and counted other names)."""
        return len(self._tasks) + len(self._other_names)

    def add(self, task: str) -> None:
        """Count one job of ``task`` exhausted for want of a handler."""
        line = self._tasks.get(task)
        if line is not None:
            line.count += 1
        elif len(self._tasks) < self.max_tasks:
            # Never logged: due at once, so it goes in front of the oldest line.
            self._tasks[task] = _NoHandlerLine(-float("inf"), 1)
            self._tasks.move_to_end(task, last=False)
        else:
            self._other_count += 1
            if task not in self._other_names:
                if len(self._other_names) < self.max_other_names:
                    self._other_names[task] = None
                else:
                    self._other_more = True

    def report(self, force: bool = False) -> None:
        """Log each line that is due (every counted one with ``force``) and forget the tasks
        whose last line is over ``interval`` old and that have nothing new."""
        now = self.clock()
        tasks = self._tasks
        due: list[str] = []
        if force:
            due = [task for task, line in tasks.items() if line.count]
        else:
            # Oldest line first: stop at the first task whose interval has not passed.
            forget: list[str] = []
            for task, line in tasks.items():
                if now - line.logged < self.interval:
                    break
                (due if line.count else forget).append(task)
            for task in forget:
                del tasks[task]
        for task in due:
            line = tasks[task]
            count = line.count
            logger.error("%d job(s) of task %r exhausted: this engine has no handler for "
                         "it (is worker.task_directory right?); reported at most once a "
                         "minute per task", count, task,
                         extra={"action": "job_no_handler", "task": task, "count": count})
            line.logged, line.count = now, 0
            # Every line logged now goes to the back: the order stays that of the last line.
            tasks.move_to_end(task)
        if self._other_count and (force or now - self._other_logged >= self.interval):
            names = len(self._other_names)
            examples = ", ".join(repr(t) for t in islice(self._other_names,
                                                          NO_HANDLER_EXAMPLES))
            logger.error("%d job(s) of %s%d other tasks without a handler exhausted (e.g. %s): "
                         "this engine has no handler for them (is worker.task_directory "
                         "right?); %d tasks are reported by name, the others together, at "
                         "most once a minute", self._other_count,
                         "over " if self._other_more else "", names, examples,
                         self.max_tasks,
                         extra={"action": "job_no_handler", "count": self._other_count,
                                "tasks": names})
            self._other_count = 0
            self._other_names = {}
            self._other_more = False
            self._other_logged = now


class EngineObserver:
    """Events and metrics of one engine. ``metrics`` None: events only."""

    def __init__(self, emitter: Emitter, metrics: EngineMetrics | None = None, *,
                 no_handler: NoHandlerLog | None = None) -> None:
        self.emitter = emitter
        self.metrics = metrics
        self.engine_id = 0
        self._down: dict[str, float] = {}
        self.no_handler = no_handler if no_handler is not None else NoHandlerLog()

    # -- lifecycle -------------------------------------------------------------------
    def pool_start(self, engine_id: int, processes: int, concurrency: int,
                   capacity: int) -> None:
        """The engine registered, forked its children and starts claiming; ``capacity`` is
        the job slots of all its children (both lanes, as the watchdog reports later)."""
        self.engine_id = engine_id
        self.emitter.emit(EventKind.POOL_START, {
            "engine_id": engine_id, "pid": os.getpid(), "processes": processes,
            "concurrency": concurrency})
        self.set_gauges(0, capacity, processes)

    def pool_stop(self, engine_id: int, stats: Mapping[str, Any]) -> None:
        """The shutdown finished; ``stats`` are the engine's totals (EngineStats as a dict)."""
        self.emitter.emit(EventKind.POOL_STOP, {
            "engine_id": engine_id, "pid": os.getpid(), **stats})
        self.set_gauges(0, 0, 0)

    # -- jobs ------------------------------------------------------------------------
    def claimed(self, n: int) -> None:
        """One claim query returned ``n`` jobs; empty claims (0) are not recorded."""
        if self.metrics is not None and n:
            self.metrics.claim_batch.observe(n)

    def dispatched(self, n: int) -> None:
        """``n`` jobs were handed to children."""
        if self.metrics is not None and n:
            self.metrics.dispatched.inc(n)

    def flushed(self, completed: Sequence[Sequence[Any]], failed: Sequence[Sequence[Any]],
                done_ids: Set[Claim], outcomes: Mapping[Claim, str],
                recorded: Mapping[Claim, Recorded] | None = None) -> None:
        """A completion flush was written: ``done_ids`` are the (id, lease) of the completed
        rows the database accepted, ``outcomes`` maps each accepted failed row's (id, lease)
        to "failed" or "exhausted". Rows in neither were refused (stale). Emits one event
        per accepted row: job/completed, job/partial-success (a failed row keeping part of
        its payload, not exhausted), job/failed or job/exhausted."""
        emit_many = self.emitter.emit_many
        sent = len(completed)
        completed = _accepted(completed, done_ids)
        keep = self.emitter.kept(_COMPLETED, len(completed))
        if keep:
            emit_many(_COMPLETED, [
                {"job_id": r[_ID], "task": r[_TASK], "queue_name": r[_QUEUE],
                 "run_seconds": r[_RUN], "wait_seconds": r[_WAIT]}
                for r in completed[len(completed) - keep:]])
        if failed:
            recorded = recorded or {}
            retried: list[dict[str, Any]] = []
            partial: list[dict[str, Any]] = []
            exhausted: list[dict[str, Any]] = []
            for r in failed:
                claim = (r[_ID], r[_LEASE])
                outcome = outcomes.get(claim)
                if outcome is None:
                    continue
                data = {"job_id": r[_ID], "task": r[_TASK], "queue_name": r[_QUEUE],
                        "run_seconds": r[_RUN],
                        "wait_seconds": r[_WAIT],
                        "error": r[_ERROR]}
                if outcome == "exhausted":
                    data["reason"] = _reason(r, recorded.get(claim))
                    exhausted.append(data)
                else:
                    data["retry_delay"] = r[_DELAY]
                    (retried if r[_PAYLOAD] is None else partial).append(data)
            emit_many(_FAILED, retried)
            emit_many(_PARTIAL, partial)
            emit_many(_EXHAUSTED, exhausted)
            self._log_failures(failed, outcomes, recorded)
        if self.no_handler:
            # Counts waiting for their interval go out with a later flush, whatever it holds.
            self.no_handler.report()
        if self.metrics is not None:
            self._measure(completed, failed, outcomes, refused=sent - len(completed))

    def _log_failures(self, failed: Sequence[Sequence[Any]], outcomes: Mapping[Claim, str],
                      recorded: Mapping[Claim, Recorded]) -> None:
        no_handler = self.no_handler
        for r in failed:
            claim = (r[_ID], r[_LEASE])
            outcome = outcomes.get(claim)
            if outcome is None:
                continue
            if r[_FINAL] == "no_handler":
                no_handler.add(r[_TASK])
                continue
            found = recorded.get(claim)
            if found is None:
                attempts = max_attempts = run_at = None
            else:
                attempts, max_attempts, run_at = (found[RECORDED_ATTEMPTS],
                                                  found[RECORDED_MAX_ATTEMPTS],
                                                  found[RECORDED_RUN_AT])
            # The traceback's last line names the exception type too; the error is only its
            # message (see 0005_error_details.sql).
            summary = error_summary(r[_TRACEBACK] or r[_ERROR])
            if outcome == "exhausted":
                logger.error("job %s (%s) exhausted after attempt %s of %s (%s): %s",
                             r[_ID], r[_TASK], attempts, max_attempts, _reason(r, found),
                             summary,
                             extra={"action": "job_exhausted", "job_id": r[_ID],
                                    "task": r[_TASK]})
            else:
                when = (f"at {run_at.isoformat(timespec='seconds')}" if run_at is not None
                        else f"in {r[_DELAY]:.1f} s")
                logger.warning("job %s (%s) failed, attempt %s of %s: %s; runs again %s",
                               r[_ID], r[_TASK], attempts, max_attempts, summary, when,
                               extra={"action": "job_failed", "job_id": r[_ID],
                                      "task": r[_TASK]})

    def report_no_handler(self, force: bool = False) -> None:
        """Log the no_handler exhaustions whose line is due (all counted ones with
        ``force``, as at shutdown); see :class:`NoHandlerLog`."""
        self.no_handler.report(force)

    def _measure(self, completed: Sequence[Sequence[Any]], failed: Sequence[Sequence[Any]],
                 outcomes: Mapping[Claim, str], refused: int) -> None:
        """``completed``: the accepted rows only; ``refused``: how many others were sent."""
        assert self.metrics is not None
        # Group the accepted rows by (task, queue, outcome), then take each group's figures
        # with comprehensions: ~0.15 us a row less than one loop doing everything.
        groups: dict[tuple[str, str | None, str], list[Sequence[Any]]] = {}
        for r in completed:
            key = (r[_TASK], r[_QUEUE], "completed")
            group = groups.get(key)
            if group is None:
                groups[key] = [r]
            else:
                group.append(r)
        for r in failed:
            found = outcomes.get((r[_ID], r[_LEASE]))
            if found is not None:
                outcome = ("exhausted" if found == "exhausted"
                           else "failed" if r[_PAYLOAD] is None else "partial")
                key = (r[_TASK], r[_QUEUE], outcome)
                group = groups.get(key)
                if group is None:
                    groups[key] = [r]
                else:
                    group.append(r)
        counts: dict[tuple[str, str, str], int] = {}
        runs: dict[str, list[float]] = {}
        waits: dict[str, list[float]] = {}
        accepted = 0
        for (task, queue, outcome), rows in groups.items():
            counts[(task, queue or "", outcome)] = len(rows)
            accepted += len(rows)
            run = [r[_RUN] for r in rows]
            wait = [r[_WAIT] for r in rows if r[_WAIT] is not None]
            if task in runs:
                runs[task] += run
            else:
                runs[task] = run
            if wait:
                if task in waits:
                    waits[task] += wait
                else:
                    waits[task] = wait
        stale = refused + len(completed) + len(failed) - accepted
        self.metrics.jobs_finished(counts, runs, waits, stale)

    def cancelled(self, rows: Sequence[Sequence[Any]],
                  accepted: Mapping[Claim, CancelledRow]) -> None:
        """Cancelled claims were written (job_cancel_many): ``accepted`` are those the
        database recorded, with their request's why and who. One job/cancelled event and one
        log line each; counted as outcome "cancelled" (the others as stale)."""
        events: list[dict[str, Any]] = []
        counts: dict[tuple[str, str, str], int] = {}
        runs: dict[str, list[float]] = {}
        for r in rows:
            found = accepted.get((r[_ID], r[_LEASE]))
            if found is None:
                continue
            events.append({"job_id": r[_ID], "task": r[_TASK], "queue_name": r[_QUEUE],
                           "run_seconds": r[_RUN], "wait_seconds": r[_WAIT],
                           "error": r[_ERROR], "reason": found.reason,
                           "cancelled_by": found.cancelled_by})
            logger.info("job %s (%s) cancelled by %s%s", r[_ID], r[_TASK], found.cancelled_by,
                        f": {found.reason}" if found.reason else "",
                        extra={"action": "job_cancelled", "job_id": r[_ID], "task": r[_TASK]})
            key = (r[_TASK], r[_QUEUE] or "", "cancelled")
            counts[key] = counts.get(key, 0) + 1
            runs.setdefault(r[_TASK], []).append(r[_RUN])
        self.emitter.emit_many(EventKind.JOB_CANCELLED, events)
        if self.metrics is not None:
            self.metrics.jobs_finished(counts, runs, {}, len(rows) - len(events), batch=False)

    def rescued(self, engines: list[int], retried: int, exhausted: int) -> None:
        """This engine's rescuer made the jobs of dead ``engines`` runnable again."""
        self.emitter.emit(EventKind.JOB_RESCUED, {
            "engines": list(engines), "retried": retried, "exhausted": exhausted})
        if self.metrics is not None:
            if retried:
                self.metrics.rescued.labels("retried").inc(retried)
            if exhausted:
                self.metrics.rescued.labels("exhausted").inc(exhausted)

    # -- processes -------------------------------------------------------------------
    def child_replaced(self, index: int, pid: int, status: str, jobs_failed: int) -> None:
        """Child ``index`` (``pid``) died with ``status`` while the engine ran; its
        ``jobs_failed`` jobs were failed as crashes and a new child was forked."""
        self.emitter.emit(EventKind.CHILD_REPLACED, {
            "index": index, "pid": pid, "status": status, "jobs_failed": jobs_failed})
        if self.metrics is not None:
            self.metrics.child_replacements.inc()

    def set_gauges(self, in_flight: int, capacity: int, children_alive: int) -> None:
        """The current jobs in flight, capacity (slots of live children) and live children."""
        if self.metrics is not None:
            self.metrics.gauges(in_flight, capacity, children_alive)

    # -- database --------------------------------------------------------------------
    def connection_lost(self, name: str, error: BaseException | str) -> None:
        """Connection ``name`` broke (or cannot be opened). Repeated calls while it is down
        emit nothing more."""
        if name in self._down:
            return
        self._down[name] = time.monotonic()
        self.emitter.emit(EventKind.DB_CONNECTION_LOST, {
            "connection": name, "error": str(error)})
        if self.metrics is not None:
            self.metrics.connection_losses.labels(name).inc()
            self.metrics.connection_up.labels(name).set(0)

    def connection_regained(self, name: str) -> None:
        """Connection ``name`` works (again). Emits only after a loss."""
        since = self._down.pop(name, None)
        if self.metrics is not None:
            self.metrics.connection_up.labels(name).set(1)
        if since is None:
            return
        self.emitter.emit(EventKind.DB_CONNECTION_REGAINED, {
            "connection": name, "down_seconds": time.monotonic() - since})

    # -- cron ------------------------------------------------------------------------
    def cron_fired(self, event: Mapping[str, Any]) -> None:
        """The cron process handled a tick: ``event`` is its cron/fired event as the
        scheduler sends it (``{"type": "cron/fired", "data": {...}}``) or just its data."""
        data = dict(event["data"] if "data" in event and "type" in event else event)
        self.emitter.emit(EventKind.CRON_FIRED, data)
        if self.metrics is not None:
            self.metrics.cron_fires.labels(str(data.get("identifier", "")),
                                           str(data.get("reason", "fired"))).inc()


class QueueStatsPoller:
    """Runs job_stats.sql every ``interval`` seconds and feeds the rows to ``metrics``.

    Lifecycle: ``start()`` returns at once (the first poll runs right away); ``stop()`` is
    idempotent, safe before ``start()``, and returns once the poll task is gone. A failed
    poll is logged and retried at the next interval; meanwhile the last figures stay.
    Only the leader engine gets rows (see the query's header): the others export none.
    """

    def __init__(self, db: Reconnecting, queries: Queries, metrics: EngineMetrics,
                 engine_id: Callable[[], int], *, interval: float = STATS_INTERVAL_DEFAULT,
                 cap: int = STATS_CAP_DEFAULT,
                 max_groups: int = STATS_MAX_GROUPS_DEFAULT) -> None:
        self.db = db
        self.q = queries
        self.metrics = metrics
        self.engine_id = engine_id
        self.interval = interval
        self.cap = cap
        self.max_groups = max_groups
        self.polls = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="queue-stats")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])

    async def poll(self) -> bool:
        """One poll; True if this engine is the leader (and exported the figures)."""
        async with self.db.session() as conn:
            rows = await job_stats.run_async(conn, self.q, engine=self.engine_id(),
                                             cap=self.cap, max_groups=self.max_groups)
            pauses = await pause_list.run_async(conn, self.q) if rows else []
        self.polls += 1
        if not rows:
            self.metrics.queue_stats(None)
            return False
        self.metrics.queue_stats([
            (r.queue_name, int(r.waiting), int(r.scheduled), int(r.running), int(r.claimed),
             r.oldest_runnable_age) for r in rows],
            paused=["" if p.name == PARALLEL_QUEUE else p.name for p in pauses
                    if p.kind == "queue"])
        return True

    async def _run(self) -> None:
        await every(self.interval, self._round, db=self.db, what="queue stats poll",
                    action="poll_stats_failed")

    async def _round(self) -> None:
        await self.poll()
