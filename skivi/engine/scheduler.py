"""The cron process: turns cron entries into jobs, each tick exactly once across engines.

Every engine may run one; they need no leader. The database decides which scheduler fires
a tick (``cron_fire.sql``: an upsert of ``cron.last_execution`` guarded by "newer than",
joined with the enqueue in one statement), so N schedulers with the same crontab enqueue
each tick once, and a restarted one never fires a tick twice. The scheduler's own state
is only a cursor per entry: the last tick it has dealt with.

States::

    registering --(cron_known.sql ok)--> planning --(ticks due)--> firing --+
        ^  |                               ^  |                            |
        |  +--(db error: backoff)          |  +--(none due: sleep until    |
        |                                  |      the next tick)           |
        |                                  +-------(batch ok)--------------+
        |                                  +--(db error: backoff, replan)--+
    stop: at any point between statements; the statement in flight completes.

* **registering**: records new identifiers (known since this scheduler's clock, so never
  backfilled) and reads each known entry's last_execution. Retried with backoff until the
  database answers: a scheduler started during an outage waits for it.
* **planning**: for each entry, the ticks after its cursor up to now. A tick at most
  ``grace`` seconds late (``GRACE_DEFAULT``) is a regular run (``backfilled`` false): a
  short stall, a database blip or a quick restart never loses a tick. A later one is fired
  with ``backfilled`` true if it is within the entry's backfill window, and skipped (logged)
  otherwise. At start the cursor is the entry's last_execution (or known_since), so
  downtime is planned exactly like a long stall.
* **firing**: one ``cron_fire`` statement per batch, each batch holding at most one tick per
  entry (the upsert cannot touch a row twice), oldest first, so a backlog fills in order.
  Cursors move only past ticks the database answered for; after an error the same ticks
  are planned again, and the guard makes any that did commit come back as already fired.
* **sleeping**: until the earliest next tick, at most ``SLEEP_MAX`` seconds at a time so
  a wall-clock jump is noticed within that time.

Events (``on_fired``), one per tick sent to the database::

    {"type": "cron/fired",
     "data": {"identifier": str, "task": str, "ts": "2024-01-01T02:00:00Z",
              "backfilled": bool, "skipped": bool,
              "reason": "fired" | "already_fired" | "previous_run_active",
              "job_id": int | None}}

``reason``: ``fired``, a job was enqueued (or, with job_key_mode replace, a pending one
updated) and ``job_id`` is it; ``already_fired``, another scheduler (or this entry's
earlier run) had fired this tick or a later one, ``job_id`` is None; ``previous_run_active``,
the entry's job key is still held by the previous run (queued, retrying or running), nothing
was added, and ``job_id`` is that previous run's job. Ticks skipped for being outside the
backfill window are logged, not emitted.

Time: ``clock`` and ``sleep`` are injected, and the SQL guard compares tick times, never the
database's now(), so tests drive simulated minutes without waiting. A job's run_at is its
tick (see cron_fire.sql).

Writes: the cron process only inserts jobs and moves ``cron.last_execution`` forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from skivi.cron import CronEntry, due_between, ensure_unique, next_tick
from skivi.db.queries import cron_fire, cron_known
from skivi.db.retry import JITTER_BELOW, RetryBackoff
from skivi.engine.connection import Reconnecting
from skivi.errors import ConfigError, PayloadError

if TYPE_CHECKING:
    from skivi.instance import Instance

__all__ = [
    "CRON_FIRED",
    "GRACE_DEFAULT",
    "Scheduler",
    "run_scheduler",
    "scheduler_main",
    "utcnow",
]

logger = logging.getLogger(__name__)

CRON_FIRED = "cron/fired"
APPLICATION_NAME = "skivi-cron"
GRACE_DEFAULT = 60.0
"""Seconds a tick may be late and still run as a regular (not backfilled) tick."""
SLEEP_MAX = 60.0
RETRY_DELAY_INITIAL = 0.1
RETRY_DELAY_MAX = 10.0

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]
OnFired = Callable[[dict[str, Any]], None]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(ts: dt.datetime) -> str:
    spec = "seconds" if ts.microsecond == 0 else "microseconds"
    return ts.astimezone(dt.UTC).isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Tick:
    entry: CronEntry
    ts: dt.datetime
    backfilled: bool

    def wire(self) -> dict[str, Any]:
        """The tick as cron_fire.sql reads it."""
        e = self.entry
        ts = _iso(self.ts)
        out: dict[str, Any] = {
            "identifier": e.identifier, "ts": ts, "task": e.task,
            "payload": {**e.payload, "_cron": {"ts": ts, "backfilled": self.backfilled}},
            "job_key": e.job_key, "job_key_mode": e.job_key_mode,
        }
        for option in ("queue_name", "priority", "max_attempts"):
            if option in e.spec:
                out[option] = e.spec[option]
        return out


class Scheduler:
    """One cron process's loop; see the module docstring. Use :func:`run_scheduler`."""

    def __init__(self, instance: Instance, entries: Sequence[CronEntry], *,
                 clock: Clock = utcnow, sleep: Sleep = asyncio.sleep,
                 on_fired: OnFired | None = None, stop: asyncio.Event | None = None,
                 grace: float = GRACE_DEFAULT) -> None:
        self.instance = instance
        self.entries = list(entries)
        self.clock = clock
        self.sleep = sleep
        self.on_fired = on_fired
        self.stop = stop if stop is not None else asyncio.Event()
        self.grace = dt.timedelta(seconds=grace)
        self.queries = instance.queries
        # Connected on first use, one attempt at a time: this loop paces the retries (and
        # stays stoppable while the database is away).
        self.db = Reconnecting(
            instance.database_url, APPLICATION_NAME,
            connect_timeout=instance.config.database.connect_timeout,
            prepared_statements=instance.config.database.prepared_statements)
        self._retry = RetryBackoff(RETRY_DELAY_INITIAL, RETRY_DELAY_MAX, jitter=JITTER_BELOW)

    def check(self) -> None:
        """Refuse entries this system cannot enqueue: duplicate identifiers, or payloads the
        task's schema (validation.tasks) or the size limit refuses.

        Raises:
            ConfigError: naming every problem.
        """
        ensure_unique(self.entries)
        problems: list[str] = []
        for e in self.entries:
            sample = _Tick(e, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), False).wire()["payload"]
            try:
                self.instance.payload_gate.check(e.task, sample)
            except PayloadError as exc:
                problems.append(f"cron {e.identifier!r}: payload: {exc}")
        if problems:
            raise ConfigError(problems)

    async def run(self) -> None:
        self.check()
        if not self.entries:
            logger.info("no cron entries; the scheduler has nothing to do",
                        extra={"action": "start_scheduler"})
            return
        try:
            cursors = await self._register()
            while cursors is not None and not self.stop.is_set():
                now = self.clock()
                plan = self._plan(cursors, now)
                if plan and not await self._fire(plan, cursors):
                    if not await self._backoff():
                        break
                    continue
                if self.stop.is_set():
                    break
                self._retry.reset()
                for e in self.entries:
                    cursors[e.identifier] = max(cursors[e.identifier], now)
                wake = min(next_tick(e, cursors[e.identifier]) for e in self.entries)
                delay = min((wake - self.clock()).total_seconds(), SLEEP_MAX)
                if delay > 0 and not await self._pause(delay):
                    break
        finally:
            await self._close()
            logger.info("cron scheduler stopped", extra={"action": "stop_scheduler"})

    # --- states ---------------------------------------------------------------------------------

    async def _register(self) -> dict[str, dt.datetime] | None:
        """Register the entries; return each one's cursor, or None if stopped meanwhile."""
        identifiers = sorted(e.identifier for e in self.entries)
        while not self.stop.is_set():
            now = self.clock()
            try:
                conn = await self._connection()
                rows = await cron_known.run_async(conn, self.queries, identifiers=identifiers,
                                                  now=now)
            except psycopg.Error as exc:
                await self._failed(exc, "register_cron")
                if not await self._backoff():
                    return None
                continue
            self._retry.reset()
            known = {r.identifier: r for r in rows}
            cursors: dict[str, dt.datetime] = {}
            created = 0
            for e in self.entries:
                row = known.get(e.identifier)
                if row is None or row.created:
                    # New: its history starts now; nothing before is ever fired.
                    created += 1
                    cursors[e.identifier] = row.known_since if row is not None else now
                else:
                    cursors[e.identifier] = (row.last_execution if row.last_execution
                                             is not None else row.known_since)
            logger.info("cron scheduler started: %d entries, %d new", len(self.entries),
                        created, extra={"action": "start_scheduler"})
            return cursors
        return None

    def _plan(self, cursors: dict[str, dt.datetime], now: dt.datetime
              ) -> dict[str, list[_Tick]]:
        """The ticks to send, per entry, oldest first. Moves the cursor of an entry past
        ticks too old to fire (outside its backfill window), logging them."""
        plan: dict[str, list[_Tick]] = {}
        for e in self.entries:
            cursor = cursors[e.identifier]
            window = max(self.grace, dt.timedelta(seconds=e.backfill or 0.0))
            floor = now - window
            if cursor < floor:
                if next_tick(e, cursor) <= floor:
                    logger.warning(
                        "cron %s: skipping ticks missed between %s and %s (outside its "
                        "backfill window)", e.identifier, _iso(cursor), _iso(floor),
                        extra={"action": "skip_missed_ticks", "identifier": e.identifier})
                cursor = cursors[e.identifier] = floor
            ticks = [_Tick(e, ts, now - ts > self.grace) for ts in due_between(e, cursor, now)]
            if ticks:
                plan[e.identifier] = ticks
                backfilled = sum(t.backfilled for t in ticks)
                if backfilled:
                    logger.info("cron %s: backfilling %d missed ticks from %s",
                                e.identifier, backfilled, _iso(ticks[0].ts),
                                extra={"action": "backfill_cron", "identifier": e.identifier})
        return plan

    async def _fire(self, plan: dict[str, list[_Tick]], cursors: dict[str, dt.datetime]
                    ) -> bool:
        """Send the plan, one tick per entry per statement; False after a database error."""
        for i in range(max(len(ticks) for ticks in plan.values())):
            if self.stop.is_set():
                return True
            batch = sorted((ticks[i] for ticks in plan.values() if len(ticks) > i),
                           key=lambda t: t.entry.identifier)
            ticks = orjson.dumps([t.wire() for t in batch]).decode()
            try:
                conn = await self._connection()
                rows = {r.identifier: r
                        for r in await cron_fire.run_async(conn, self.queries, ticks=ticks)}
            except psycopg.Error as exc:
                await self._failed(exc, "fire_cron")
                return False
            for tick in batch:
                fired = rows[tick.entry.identifier]
                cursors[tick.entry.identifier] = tick.ts
                self._emit(tick, fired.claimed, fired.outcome, fired.job_id)
        return True

    def _emit(self, tick: _Tick, claimed: bool, outcome: str | None, job_id: int | None
              ) -> None:
        e = tick.entry
        if not claimed:
            reason = "already_fired"
        elif outcome == "deduplicated":
            reason = "previous_run_active"
        else:
            reason = "fired"
        ts = _iso(tick.ts)
        if reason == "previous_run_active":
            logger.info("cron %s: tick %s skipped, previous run (job %s) still active",
                        e.identifier, ts, job_id,
                        extra={"action": "skip_cron_tick", "identifier": e.identifier})
        else:
            logger.debug("cron %s: tick %s %s (job %s)", e.identifier, ts, reason, job_id,
                         extra={"action": "fire_cron", "identifier": e.identifier})
        if self.on_fired is None:
            return
        event = {"type": CRON_FIRED, "data": {
            "identifier": e.identifier, "task": e.task, "ts": ts,
            "backfilled": tick.backfilled, "skipped": reason != "fired", "reason": reason,
            "job_id": job_id if claimed else None}}
        try:
            self.on_fired(event)
        except Exception:  # an observer's bug must not stop cron
            logger.exception("cron event handler failed", extra={"action": "emit_event"})

    # --- database and time ----------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        return await self.db.get(retry=False)

    async def _failed(self, exc: psycopg.Error, action: str) -> None:
        # A connection left unusable (a failover, a terminated backend) is dropped; the
        # next statement connects again.
        logger.warning("cron scheduler: database error (%s: %s); retrying",
                       type(exc).__name__, str(exc).strip(), extra={"action": action})
        self.db.broken()

    async def _backoff(self) -> bool:
        """Wait before retrying (RETRY_DELAY_INITIAL doubling up to RETRY_DELAY_MAX, each
        wait times uniform(0.5, 1.0)); False if stopped."""
        return await self._pause(self._retry.next())

    async def _pause(self, seconds: float) -> bool:
        """The injected sleep, cut short by stop; False if stopped."""
        if self.stop.is_set():
            return False
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        return not self.stop.is_set()

    async def _close(self) -> None:
        await self.db.close()


async def run_scheduler(instance: Instance, entries: Sequence[CronEntry], *,
                        clock: Clock = utcnow, sleep: Sleep = asyncio.sleep,
                        on_fired: OnFired | None = None, stop: asyncio.Event | None = None,
                        grace: float = GRACE_DEFAULT) -> None:
    """Run the cron loop until ``stop`` is set (or the task is cancelled).

    Database errors are logged and retried with backoff, never raised. Returns at once when
    ``entries`` is empty.

    Raises:
        ConfigError: duplicate identifiers, an entry payload the system's payload gate
            refuses, or no database configured. Fatal: restarting will not help.
    """
    await Scheduler(instance, entries, clock=clock, sleep=sleep, on_fired=on_fired, stop=stop,
                    grace=grace).run()


def scheduler_main(instance: Instance, entries: Sequence[CronEntry], *,
                   on_fired: OnFired | None = None) -> None:
    """Entry point of the cron process: run the loop on uvloop until SIGTERM or SIGINT.

    Returns after a clean stop; raises ConfigError like :func:`run_scheduler`.
    """
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_scheduler(instance, entries, on_fired=on_fired, stop=stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    uvloop.run(main())
