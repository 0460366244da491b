"""What the dashboard reads and changes, through the named queries only.

Reading: every page's statements run in one read-only transaction (``BEGIN READ ONLY``,
psycopg's ``read_only``), so a page can never write, whatever a statement does. Changing:
each action is one of the statements the ``skivi`` command's actions use
(``job_retry_many``, ``job_reschedule_many``, ``job_permanently_fail_many``,
``job_remove_many``, ``job_history_retry_many``), so the SQL admin functions' rules hold
(running jobs are never changed, and each skipped id says why), and a bulk action over a
filter hands them the ids ``dashboard_job_match`` / ``dashboard_history_match`` find, at most
``BULK_MAX`` per action.

The connections are the dashboard's own small pool (``application_name`` skivi-dashboard),
made on first use in the event loop that serves the app (an app mounted in another one gets
no lifespan events of its own), never preparing statements: the dashboard's statements are
planned with their parameters, so their ``is null or`` filters fold away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from skivi.cli.context import TimestamptzOrText
from skivi.cron import CronEntry, next_tick
from skivi.db import pool as dbpool
from skivi.db.queries import (
    ChangeRow,
    CronListRow,
    DashboardHistoryListRow,
    DashboardHistoryRateRow,
    DashboardJobCountsRow,
    DashboardJobListRow,
    DashboardQueueRow,
    EngineListRow,
    HistoryRetryRow,
    JobHistoryRow,
    JobListRow,
    PauseRow,
    Queries,
    dashboard_cron_list,
    dashboard_history_list,
    dashboard_history_match,
    dashboard_history_rate,
    dashboard_job_counts,
    dashboard_job_estimate,
    dashboard_job_list_newest,
    dashboard_job_list_oldest,
    dashboard_job_match,
    dashboard_queue_list,
    engine_list,
    job_cancel_request_many,
    job_history_list,
    job_history_retry_many,
    job_list,
    job_permanently_fail_many,
    job_remove_many,
    job_reschedule_many,
    job_retry_many,
    pause_list,
)
from skivi.instance import Instance

__all__ = ["BULK_MAX", "COUNT_CAP", "PAGE_SIZE", "SCAN_MAX", "Counts", "CronView",
           "HistoryFilter", "JobFilter", "Page", "Store"]

APPLICATION_NAME = "skivi-dashboard"
POOL_MAX_SIZE = 4
"""Connections of the dashboard's pool: pages are a few short statements each."""
PAGE_SIZE = 50
"""Rows per page of the jobs and history lists."""
SCAN_MAX = 20_000
"""Most rows one page of a list reads (see dashboard_job_list_newest.sql)."""
COUNT_CAP = 50_000
"""Above this many pending jobs the overview shows the planner's estimates (as Oban Web)."""
QUEUE_CAP = 10_000
"""Most index entries counted per queue, priority and state on the queues page."""
QUEUE_GROUPS_MAX = 500
"""Most (queue, priority) groups the queues page reads."""
BULK_MAX = 10_000
"""Most jobs one bulk action over a filter changes (repeat it for more)."""
CRON_MAX = 1_000
RATE_WINDOW = 3600.0
"""Seconds of history the overview's throughput and failure rate cover."""

JOB_STATES = ("waiting", "scheduled", "failed", "running", "claimed")
HISTORY_OUTCOMES = ("completed", "exhausted")
HISTORY_REASONS = ("max_attempts", "no_handler", "permanently_failed", "superseded")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    """The jobs list's filter (each None: no filter) and order."""

    task: str | None = None
    queue: str | None = None
    state: str | None = None
    key: str | None = None
    search: str | None = None
    newest: bool = True

    @property
    def locked(self) -> bool | None:
        """The filter job_live splits on (job_running): the claimed states, or the others."""
        if self.state is None:
            return None
        return self.state in ("running", "claimed")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.task, self.queue, self.state, self.key,
                                           self.search))


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryFilter:
    task: str | None = None
    outcome: str | None = None
    reason: str | None = None
    search: str | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.task, self.outcome, self.reason,
                                           self.search))


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its rows, where the next page starts (None: the end), and whether
    that is because the bounded scan stopped before the page filled (``partial``)."""

    rows: Sequence[DashboardJobListRow | DashboardHistoryListRow]
    next_row: DashboardJobListRow | DashboardHistoryListRow | None
    partial: bool


def _page(rows: Sequence[DashboardJobListRow | DashboardHistoryListRow]) -> Page:
    matched = [r for r in rows if r.matched]
    if len(matched) > PAGE_SIZE:
        return Page(matched[:PAGE_SIZE], matched[PAGE_SIZE - 1], False)
    boundary = next((r for r in rows if r.boundary), None)
    return Page(matched, boundary, boundary is not None)


@dataclasses.dataclass(frozen=True, slots=True)
class Counts:
    """The overview's live job counts: exact, or (``estimated``) the planner's."""

    waiting: int
    scheduled: int
    failed: int
    running: int
    claimed: int
    estimated: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CronView:
    identifier: str
    configured: CronEntry | None
    known: CronListRow | None
    next_tick: dt.datetime | None


def _estimates(plan: Any) -> tuple[int, int, int]:
    """The "Plan Rows" of the Append's children in dashboard_job_estimate.sql's plan."""
    top = plan[0]["Plan"]
    children = top.get("Plans", [])
    rows = [int(c.get("Plan Rows", 0)) for c in children]
    if len(rows) != 3:
        raise RuntimeError(f"dashboard_job_estimate: expected 3 subplans, got {len(rows)}")
    return rows[0], rows[1], rows[2]


class Store:
    """The dashboard's database side, for one instance (its schema and queries)."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self._pools: dict[asyncio.AbstractEventLoop,
                          asyncio.Task[AsyncConnectionPool[Any]]] = {}

    @property
    def q(self) -> Queries:
        return self.instance.queries

    async def _pool(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        opening = self._pools.get(loop)
        if opening is None:
            # One task per loop opens the pool; requests arriving meanwhile await the same
            # task rather than open a second pool (or use this one before it is open).
            opening = self._pools[loop] = loop.create_task(self._open_pool())
        try:
            return await asyncio.shield(opening)
        except BaseException:
            if opening.done() and self._pools.get(loop) is opening:
                del self._pools[loop]  # the next request tries again
            raise

    async def _open_pool(self) -> AsyncConnectionPool[Any]:
        url = self.instance.database_url
        timeout = self.instance.config.database.connect_timeout
        await dbpool.check_reachable_async(url, application_name=APPLICATION_NAME,
                                           connect_timeout=timeout)
        pool = dbpool.make_async_pool(url, max_size=POOL_MAX_SIZE,
                                      application_name=APPLICATION_NAME,
                                      connect_timeout=timeout, prepared_statements=False)
        await pool.open()
        return pool

    async def close(self) -> None:
        openings, self._pools = list(self._pools.values()), {}
        for opening in openings:
            if opening.done() and not opening.cancelled() and opening.exception() is None:
                await opening.result().close()

    async def _run(self, read_only: bool,
                   work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        pool = await self._pool()
        async with pool.connection() as conn:
            # Infinity and out-of-range times (rows written from SQL) read as text, not as
            # an error failing the whole page (as the skivi command reads them).
            conn.adapters.register_loader("timestamptz", TimestamptzOrText)
            await conn.set_read_only(read_only)
            async with conn.transaction():
                return await work(conn)

    def read(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]
             ) -> Awaitable[T]:
        """Run ``work`` in a read-only transaction."""
        return self._run(True, work)

    def write(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]
              ) -> Awaitable[T]:
        return self._run(False, work)

    # -- pages ------------------------------------------------------------------------------

    async def counts(self, conn: psycopg.AsyncConnection[Any]) -> Counts:
        row: DashboardJobCountsRow = await dashboard_job_counts.run_async(
            conn, self.q, cap=COUNT_CAP)
        if not row.truncated:
            return Counts(row.waiting, row.scheduled, row.failed, row.running, row.claimed,
                          False)
        waiting, scheduled, failed = _estimates(
            await dashboard_job_estimate.run_async(conn, self.q))
        # The claimed states are exact (job_running holds only what engines hold) unless
        # their own cap was reached, which the estimates cannot help with.
        return Counts(max(waiting, row.waiting), max(scheduled, row.scheduled),
                      max(failed, row.failed), row.running, row.claimed, True)

    async def rate(self, conn: psycopg.AsyncConnection[Any]) -> DashboardHistoryRateRow:
        return await dashboard_history_rate.run_async(conn, self.q, window=RATE_WINDOW,
                                                      cap=COUNT_CAP)

    async def queues(self, conn: psycopg.AsyncConnection[Any]) -> list[DashboardQueueRow]:
        return await dashboard_queue_list.run_async(conn, self.q, cap=QUEUE_CAP,
                                                    max_groups=QUEUE_GROUPS_MAX)

    async def pauses(self, conn: psycopg.AsyncConnection[Any]) -> list[PauseRow]:
        return await pause_list.run_async(conn, self.q)

    async def engines(self, conn: psycopg.AsyncConnection[Any]) -> list[EngineListRow]:
        return await engine_list.run_async(conn, self.q)

    async def jobs(self, conn: psycopg.AsyncConnection[Any], f: JobFilter,
                   cursor: int | None) -> Page:
        common: dict[str, Any] = dict(task=f.task, queue=f.queue, key=f.key, search=f.search,
                                      state=f.state, locked=f.locked, scan=SCAN_MAX,
                                      limit=PAGE_SIZE + 1)
        if f.newest:
            rows = await dashboard_job_list_newest.run_async(conn, self.q, before=cursor,
                                                             **common)
        else:
            rows = await dashboard_job_list_oldest.run_async(conn, self.q, after=cursor,
                                                             **common)
        return _page(rows)

    async def history(self, conn: psycopg.AsyncConnection[Any], f: HistoryFilter,
                      cursor: tuple[dt.datetime, int] | None) -> Page:
        rows = await dashboard_history_list.run_async(
            conn, self.q, before_at=None if cursor is None else cursor[0],
            before_id=None if cursor is None else cursor[1], task=f.task, outcome=f.outcome,
            reason=f.reason, search=f.search, scan=SCAN_MAX, limit=PAGE_SIZE + 1)
        return _page(rows)

    async def job(self, conn: psycopg.AsyncConnection[Any], job_id: int
                  ) -> tuple[JobListRow | None, JobHistoryRow | None]:
        """The live job of that id, else its history row (one of them, or neither)."""
        live = await job_list.run_async(conn, self.q, id=job_id, limit=1, payload=True)
        if live:
            return live[0], None
        done = await job_history_list.run_async(conn, self.q, id=job_id, limit=1,
                                                payload=True)
        return None, done[0] if done else None

    async def cron(self, conn: psycopg.AsyncConnection[Any]) -> list[CronView]:
        known = {r.identifier: r for r in
                 await dashboard_cron_list.run_async(conn, self.q, limit=CRON_MAX)}
        now = dt.datetime.now(dt.UTC)
        views = [CronView(e.identifier, e, known.get(e.identifier), next_tick(e, now))
                 for e in self.instance.cron_entries]
        configured = {e.identifier for e in self.instance.cron_entries}
        views += [CronView(i, None, r, None) for i, r in sorted(known.items())
                  if i not in configured]
        return views

    async def match_jobs(self, conn: psycopg.AsyncConnection[Any], f: JobFilter,
                         limit: int) -> list[int]:
        return await dashboard_job_match.run_async(conn, self.q, task=f.task, queue=f.queue,
                                                   key=f.key, search=f.search, state=f.state,
                                                   limit=limit)

    async def match_history(self, conn: psycopg.AsyncConnection[Any], f: HistoryFilter,
                            limit: int) -> list[int]:
        return await dashboard_history_match.run_async(conn, self.q, task=f.task,
                                                       reason=f.reason, search=f.search,
                                                       limit=limit)

    # -- actions ----------------------------------------------------------------------------

    async def act(self, conn: psycopg.AsyncConnection[Any], action: str, ids: list[int], *,
                  run_at: dt.datetime | None = None, reason: str | None = None,
                  by: str | None = None) -> list[ChangeRow] | list[HistoryRetryRow]:
        """Apply one action to ``ids``: what happened to each, in order. ``by``: who asks
        (recorded by a cancel)."""
        q = self.q
        if action == "cancel":
            return await job_cancel_request_many.run_async(conn, q, ids=ids, reason=reason,
                                                           cancelled_by=by)
        if action == "run_now":
            return await job_retry_many.run_async(conn, q, ids=ids)
        if action == "reschedule":
            return await job_reschedule_many.run_async(conn, q, ids=ids, run_at=run_at)
        if action == "fail":
            return await job_permanently_fail_many.run_async(conn, q, ids=ids, reason=reason)
        if action == "remove":
            return await job_remove_many.run_async(conn, q, ids=ids)
        if action == "retry":
            return await job_history_retry_many.run_async(conn, q, ids=ids)
        raise ValueError(f"unknown action {action!r}")
