"""The cron scheduler against a real PostgreSQL, on simulated time.

A ``FakeClock`` stands in for the wall clock: its ``sleep`` moves time forward at once, so a
thousand simulated minutes take seconds. The SQL guard compares tick times (never now()),
so simulated times are what the database decides on. Assertions are on the job rows (one
per ``_cron.ts``) and on the ``cron/fired`` events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import os
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

import skivi
from skivi.cron import CronEntry, parse_crontabs
from skivi.db.queries import CronFireRow, channel_name, cron_fire, cron_known, for_schema
from skivi.engine.scheduler import run_scheduler, scheduler_main
from tests.support.db import SCHEMA, connect, url_for
from tests.support.rows import Database, fetch
from tests.support.wait import wait_for

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)
Q = for_schema(SCHEMA)

Event = dict[str, Any]


class FakeClock:
    """Simulated time shared by any number of schedulers.

    ``sleep(s)`` moves time to ``t + s`` at once, ``t`` being the time when ``sleep`` was
    called (as a real sleep counts from when it starts, however late it is scheduled), and
    never backwards. Once a sleep would go past ``until`` it sets ``stop`` instead, which
    ends every scheduler using the clock. ``pause`` adds a real pause per sleep, for tests
    that wait for something real to happen.
    """

    def __init__(self, start: dt.datetime, until: dt.datetime | None = None,
                 stop: asyncio.Event | None = None, pause: float = 0.0) -> None:
        self.current = start
        self.until = until
        self.stop = stop if stop is not None else asyncio.Event()
        self.pause = pause
        self.sleeps = 0

    def now(self) -> dt.datetime:
        return self.current

    def sleep(self, seconds: float) -> Awaitable[None]:
        self.sleeps += 1
        target = self.current + dt.timedelta(seconds=seconds)
        return self._advance(target)

    async def _advance(self, target: dt.datetime) -> None:
        if self.until is not None and target > self.until:
            self.stop.set()
        else:
            self.current = max(self.current, target)
        await asyncio.sleep(self.pause)


class SkewedClock:
    """One scheduler's view of a shared ``FakeClock``, off by an offset that ``jump`` moves
    (a host whose clock is wrong, and is corrected back and forth)."""

    def __init__(self, base: FakeClock, offset: dt.timedelta) -> None:
        self.base = base
        self.offset = offset

    def now(self) -> dt.datetime:
        return self.base.now() + self.offset

    def sleep(self, seconds: float) -> Awaitable[None]:
        return self.base.sleep(seconds)


def cron(*raw: dict[str, Any]) -> list[CronEntry]:
    return parse_crontabs(list(raw))


def run(system: skivi.System, entries: Sequence[CronEntry], clock: FakeClock, *,
        on_fired: Callable[[Event], None] | None = None) -> list[Event]:
    """One scheduler on ``clock`` until the clock stops it; returns its events."""
    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)
        if on_fired is not None:
            on_fired(event)

    async def main() -> None:
        await asyncio.wait_for(
            run_scheduler(system.instance, entries, clock=clock.now, sleep=clock.sleep,
                          on_fired=record, stop=clock.stop), timeout=120)

    asyncio.run(main())
    return events


def cron_jobs(db: Database) -> list[dict[str, Any]]:
    """Every job, in id order, with its tick and backfill flag taken from the payload."""
    rows = fetch(db, "select id, task_identifier, payload, queue_name, priority, max_attempts,"
                     " run_at, key from skivi.job_live order by id")
    return [{"id": r[0], "task": r[1], "payload": r[2], "queue_name": r[3], "priority": r[4],
             "max_attempts": r[5], "run_at": r[6], "key": r[7],
             "ts": dt.datetime.fromisoformat(r[2]["_cron"]["ts"]),
             "backfilled": r[2]["_cron"]["backfilled"]} for r in rows]


def minutes(first: int, last: int, base: dt.datetime = T0) -> list[dt.datetime]:
    return [base + n * MINUTE for n in range(first, last + 1)]


def last_execution(db: Database, identifier: str) -> dt.datetime | None:
    rows = fetch(db, "select last_execution from skivi.cron where identifier = %s", identifier)
    return rows[0][0] if rows else None


# --- the statements on their own ----------------------------------------------------------------


def fire(conn: psycopg.Connection[Any], *ticks: dict[str, Any]) -> list[CronFireRow]:
    return cron_fire.run(conn, Q, ticks=orjson.dumps(list(ticks)).decode())


def tick(identifier: str, ts: dt.datetime, **extra: Any) -> dict[str, Any]:
    return {"identifier": identifier, "ts": ts.isoformat(), "task": "t",
            "payload": {"_cron": {"ts": ts.isoformat(), "backfilled": False}},
            "job_key": f"cron:{identifier}", **extra}


def test_cron_fire_claims_a_tick_once_when_sent_again_or_older(
        conn: psycopg.Connection[Any]) -> None:
    cron_known.run(conn, Q, identifiers=["a"], now=T0)
    first = fire(conn, tick("a", T0 + MINUTE, job_key=None))
    assert [r[:4] for r in first] == [("a", T0 + MINUTE, True, "inserted")]
    assert fire(conn, tick("a", T0 + MINUTE, job_key=None))[0][2:] == (False, None, None)
    assert fire(conn, tick("a", T0 + 30 * dt.timedelta(seconds=1)))[0][2] is False
    assert last_execution(conn, "a") == T0 + MINUTE
    assert len(cron_jobs(conn)) == 1


def test_cron_fire_reports_the_holder_when_the_job_key_is_taken(
        conn: psycopg.Connection[Any]) -> None:
    inserted = fire(conn, tick("a", T0 + MINUTE))
    held = fire(conn, tick("a", T0 + 2 * MINUTE))
    assert inserted[0][2:4] == (True, "inserted")
    assert held[0][2:] == (True, "deduplicated", inserted[0][4])
    assert last_execution(conn, "a") == T0 + 2 * MINUTE  # the tick is used up


def test_cron_fire_refuses_ticks_up_to_known_since_when_entry_is_new(
        conn: psycopg.Connection[Any]) -> None:
    rows = cron_known.run(conn, Q, identifiers=["new"], now=T0)
    assert rows == [("new", T0, None, True)]
    again = cron_known.run(conn, Q, identifiers=["new"], now=T0 + MINUTE)
    assert again == [("new", T0, None, False)]
    assert fire(conn, tick("new", T0 - MINUTE))[0][2] is False
    assert fire(conn, tick("new", T0))[0][2] is False
    assert fire(conn, tick("new", T0 + MINUTE))[0][2] is True


def test_cron_fire_answers_each_identifier_when_batch_mixes_outcomes(
        conn: psycopg.Connection[Any]) -> None:
    cron_known.run(conn, Q, identifiers=["a", "b", "c"], now=T0)
    fire(conn, tick("b", T0 + 2 * MINUTE))
    rows = fire(conn, tick("c", T0 + MINUTE, queue_name="serial"), tick("b", T0 + MINUTE),
                tick("a", T0 + MINUTE))
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("a", True, "inserted"), ("b", False, None), ("c", True, "inserted")]
    assert conn.execute("select queue_name from skivi.job_queue").fetchall() == [("serial",)]


# --- the scheduler ------------------------------------------------------------------------------


def test_three_schedulers_enqueue_each_tick_once_when_racing_over_1000_minutes(
        system: skivi.System, database: str) -> None:
    entries = cron({"identifier": "every-minute", "schedule": "* * * * *",
                    "spec": {"job_key": None}})
    clock = FakeClock(T0, until=T0 + 1000 * MINUTE)
    events: list[list[Event]] = [[], [], []]

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(
            run_scheduler(system.instance, entries, clock=clock.now, sleep=clock.sleep,
                          on_fired=events[i].append, stop=clock.stop) for i in range(3))),
            timeout=240)

    asyncio.run(main())
    jobs = cron_jobs(database)
    assert Counter(j["ts"] for j in jobs) == Counter(minutes(1, 1000))
    fired = [e["data"]["ts"] for evs in events for e in evs if e["data"]["reason"] == "fired"]
    assert sorted(fired) == sorted(j["payload"]["_cron"]["ts"] for j in jobs)
    others = [e["data"] for evs in events for e in evs if e["data"]["reason"] != "fired"]
    assert all(d["reason"] == "already_fired" and d["skipped"] and d["job_id"] is None
               for d in others)
    winners = [evs for evs in events if any(e["data"]["reason"] == "fired" for e in evs)]
    assert len(winners) >= 2, "the schedulers did not race"
    assert last_execution(database, "every-minute") == T0 + 1000 * MINUTE


def test_schedulers_enqueue_each_tick_once_when_their_clocks_jump(system: skivi.System,
                                                                  database: str) -> None:
    # Three hosts whose clocks are off by up to 5 minutes either way, corrected back and
    # forth at random between sleeps. The window covers the largest jump, so no tick is
    # lost to a jump, and the guard keeps every tick to one job.
    entries = cron({"identifier": "jumpy", "schedule": "* * * * *", "backfill": "15m",
                    "spec": {"job_key": None}})
    base = FakeClock(T0, until=T0 + 300 * MINUTE)
    rng = random.Random(5)
    views = [SkewedClock(base, dt.timedelta(0)) for _ in range(3)]

    def jumping(view: SkewedClock) -> Callable[[float], Awaitable[None]]:
        def sleep(seconds: float) -> Awaitable[None]:
            view.offset = dt.timedelta(seconds=rng.randint(-300, 300))
            return base.sleep(seconds)
        return sleep

    async def main() -> None:
        await asyncio.wait_for(asyncio.gather(*(
            run_scheduler(system.instance, entries, clock=v.now, sleep=jumping(v), stop=base.stop)
            for v in views)), timeout=240)

    asyncio.run(main())
    ticks = Counter(j["ts"] for j in cron_jobs(database))
    assert max(ticks.values()) == 1
    assert set(minutes(1, 280)) <= set(ticks)


def test_restart_backfills_only_the_last_hour_oldest_first_when_stopped_for_three_hours(
        system: skivi.System, database: str) -> None:
    entries = cron({"identifier": "fill", "schedule": "* * * * *", "backfill": "1h",
                    "spec": {"job_key": None}})
    run(system, entries, FakeClock(T0, until=T0 + 10 * MINUTE + dt.timedelta(seconds=30)))
    assert [j["ts"] for j in cron_jobs(database)] == minutes(1, 10)

    restart = T0 + 10 * MINUTE + dt.timedelta(hours=3, seconds=30)
    events = run(system, entries, FakeClock(restart, until=restart + dt.timedelta(seconds=20)))
    new = cron_jobs(database)[10:]
    # The window is (restart - 1h, restart]: 60 ticks, from 2:11 to 3:10 after T0.
    assert [j["ts"] for j in new] == minutes(131, 190)
    assert [j["run_at"] for j in new] == minutes(131, 190)
    # The last one is only 30 s late, within the grace: a regular run, not a backfill.
    assert [j["backfilled"] for j in new] == [True] * 59 + [False]
    assert [e["data"]["ts"] for e in events] == [j["payload"]["_cron"]["ts"] for j in new]
    assert [e["data"]["backfilled"] for e in events] == [True] * 59 + [False]
    assert all(e["data"]["reason"] == "fired" for e in events)


def test_restart_skips_ticks_older_than_grace_when_entry_has_no_backfill(
        system: skivi.System, database: str) -> None:
    entries = cron({"identifier": "nofill", "schedule": "* * * * *",
                    "spec": {"job_key": None}})
    run(system, entries, FakeClock(T0, until=T0 + 5 * MINUTE + dt.timedelta(seconds=30)))
    # Restarted at 00:31:01: the 00:30 tick is 61 s late (skipped), 00:31 only 1 s (fired).
    restart = T0 + 31 * MINUTE + dt.timedelta(seconds=1)
    events = run(system, entries, FakeClock(restart, until=restart + 2 * MINUTE))
    assert [j["ts"] for j in cron_jobs(database)] == minutes(1, 5) + minutes(31, 33)
    assert [e["data"]["backfilled"] for e in events] == [False, False, False]


def test_tick_is_skipped_when_previous_run_is_still_queued_or_running(
        system: skivi.System, database: str) -> None:
    entries = cron({"identifier": "slow", "schedule": "* * * * *", "task": "report"})

    def worker(event: Event) -> None:
        # Plays the worker: claims the job after the second tick, finishes it (completed
        # jobs are deleted) after the third.
        ts = event["data"]["ts"]
        with connect(database) as c:
            if ts == "2024-01-01T00:02:00Z":
                # Claimed, as a claim does it: moved to job_running.
                c.execute("with m as (delete from skivi.job returning *) "
                          "insert into skivi.job_running select id, task_identifier, queue_name, "
                          "payload, priority, run_at, attempts, max_attempts, last_error, key, "
                          "flags, 1, now(), lease, created_at, updated_at, created_by from m")
            elif ts == "2024-01-01T00:03:00Z":
                c.execute("delete from skivi.job_running")

    events = run(system, entries, FakeClock(T0, until=T0 + 5 * MINUTE), on_fired=worker)
    data = [e["data"] for e in events]
    first_job, second_job = data[0]["job_id"], data[3]["job_id"]
    assert [(d["ts"], d["reason"], d["skipped"], d["job_id"]) for d in data] == [
        ("2024-01-01T00:01:00Z", "fired", False, first_job),
        ("2024-01-01T00:02:00Z", "previous_run_active", True, first_job),  # queued
        ("2024-01-01T00:03:00Z", "previous_run_active", True, first_job),  # running
        ("2024-01-01T00:04:00Z", "fired", False, second_job),
        ("2024-01-01T00:05:00Z", "previous_run_active", True, second_job),
    ]
    assert second_job != first_job
    [job] = cron_jobs(database)
    assert job["id"] == second_job and job["ts"] == T0 + 4 * MINUTE
    assert job["key"] == "cron:slow"
    assert last_execution(database, "slow") == T0 + 5 * MINUTE


def test_tick_replaces_the_waiting_job_when_entry_has_an_explicit_job_key(
        system: skivi.System, database: str) -> None:
    # Graphile's ?jobKey=: an explicit key without a mode replaces. The 04:00 run is still
    # waiting (say retrying) at 08:00: the 08:00 tick takes its place instead of being skipped.
    entries = cron({"identifier": "report", "schedule": "0 4,8 * * *",
                    "spec": {"job_key": "daily-report"}})
    events = run(system, entries, FakeClock(T0, until=T0 + dt.timedelta(hours=9)))
    data = [e["data"] for e in events]
    assert [(d["ts"], d["reason"], d["skipped"]) for d in data] == [
        ("2024-01-01T04:00:00Z", "fired", False),
        ("2024-01-01T08:00:00Z", "fired", False),
    ]
    [job] = cron_jobs(database)
    assert job["key"] == "daily-report"
    assert job["ts"] == T0 + dt.timedelta(hours=8)  # the 08:00 run replaced the 04:00 one
    assert data[0]["job_id"] == data[1]["job_id"] == job["id"]


def test_fired_event_and_job_carry_every_field_when_spec_given(system: skivi.System,
                                                               database: str) -> None:
    entries = cron({"identifier": "daily-report", "schedule": "30 0 * * *", "task": "report",
                    "payload": {"kind": "daily"}, "timezone": "Europe/Berlin",
                    "spec": {"queue_name": "maintenance", "priority": 3, "max_attempts": 2}})
    with connect(database) as listener:
        listener.execute(sql.SQL("listen {}").format(sql.Identifier(channel_name("skivi"))))
        events = run(system, entries, FakeClock(T0 - dt.timedelta(hours=1),
                                                until=T0 + dt.timedelta(hours=2)))
        notes = list(listener.notifies(timeout=5.0, stop_after=1))
    # 00:30 in Berlin (UTC+1 in winter) is 23:30 UTC.
    tick_at = T0 - dt.timedelta(minutes=30)
    [job] = cron_jobs(database)
    assert events == [{"type": "cron/fired", "data": {
        "identifier": "daily-report", "task": "report", "ts": "2023-12-31T23:30:00Z",
        "backfilled": False, "skipped": False, "reason": "fired", "job_id": job["id"]}}]
    assert job["task"] == "report"
    assert job["payload"] == {"kind": "daily",
                              "_cron": {"ts": "2023-12-31T23:30:00Z", "backfilled": False}}
    assert (job["queue_name"], job["priority"], job["max_attempts"]) == ("maintenance", 3, 2)
    assert job["run_at"] == tick_at
    assert job["key"] == "cron:daily-report"
    assert [n.payload for n in notes] == [""]  # runnable now: its tick has passed
    with connect(database) as c:
        assert c.execute("select queue_name from skivi.job_queue").fetchall() == [
            ("maintenance",)]


def test_new_entry_is_not_backfilled_when_added_after_downtime(system: skivi.System,
                                                               database: str) -> None:
    old = {"identifier": "old", "schedule": "* * * * *", "backfill": "1h",
           "spec": {"job_key": None}}
    run(system, cron(old), FakeClock(T0, until=T0 + 10 * MINUTE + dt.timedelta(seconds=30)))
    restart = T0 + dt.timedelta(hours=2, seconds=90)
    new = {**old, "identifier": "new"}
    events = run(system, cron(old, new),
                 FakeClock(restart, until=restart + dt.timedelta(minutes=2)))
    fired_new = [e["data"] for e in events if e["data"]["identifier"] == "new"]
    assert [(d["ts"], d["backfilled"]) for d in fired_new] == [
        ("2024-01-01T02:02:00Z", False), ("2024-01-01T02:03:00Z", False)]
    backfilled_old = [e for e in events
                      if e["data"]["identifier"] == "old" and e["data"]["backfilled"]]
    assert len(backfilled_old) == 59
    with connect(database) as c:
        assert c.execute("select known_since from skivi.cron where identifier = 'new'"
                         ).fetchone() == (restart,)


def test_restart_never_fires_a_tick_twice_when_its_clock_restarts_earlier(
        system: skivi.System, database: str) -> None:
    entries = cron({"identifier": "again", "schedule": "* * * * *", "backfill": "1h",
                    "spec": {"job_key": None}})
    run(system, entries, FakeClock(T0, until=T0 + 10 * MINUTE + dt.timedelta(seconds=30)))
    # The same ticks again: a second process started with a clock 5 minutes behind.
    events = run(system, entries, FakeClock(T0 + 5 * MINUTE, until=T0 + 15 * MINUTE))
    assert [e["data"]["ts"] for e in events] == [
        f"2024-01-01T00:{m}:00Z" for m in range(11, 16)]
    assert Counter(j["ts"] for j in cron_jobs(database)) == Counter(minutes(1, 15))


def test_scheduler_keeps_every_tick_when_its_connection_is_terminated(
        system: skivi.System, database: str, caplog: pytest.LogCaptureFixture) -> None:
    entries = cron({"identifier": "sturdy", "schedule": "* * * * *",
                    "spec": {"job_key": None}})

    def terminate(event: Event) -> None:
        if event["data"]["ts"] in ("2024-01-01T00:05:00Z", "2024-01-01T00:12:00Z",
                                   "2024-01-01T00:20:00Z"):
            with connect(database) as c:
                c.execute("select pg_terminate_backend(pid) from pg_stat_activity"
                          " where application_name = 'skivi-cron'")

    with caplog.at_level(logging.WARNING, logger="skivi.engine.scheduler"):
        run(system, entries, FakeClock(T0, until=T0 + 30 * MINUTE), on_fired=terminate)
    assert Counter(j["ts"] for j in cron_jobs(database)) == Counter(minutes(1, 30))
    errors = [r for r in caplog.records if getattr(r, "action", None) == "fire_cron"]
    assert len(errors) == 3


@pytest.fixture
def absent_database(server_dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A database name that does not exist yet (dropped at the end if a test created it)."""
    name = f"skivi_t_{os.getpid()}_{random.randrange(10**6, 10**7)}"
    yield name
    admin.execute(sql.SQL("drop database if exists {} with (force)").format(
        sql.Identifier(name)))


def test_scheduler_registers_when_the_database_appears_after_start(
        server_dsn: str, admin: psycopg.Connection[Any], template_database: str,
        absent_database: str) -> None:
    url = url_for(server_dsn, absent_database)
    system = skivi.create_system({"database": {"connection_string": url}})
    entries = cron({"identifier": "patient", "schedule": "* * * * *"})
    clock = FakeClock(T0, pause=0.01)
    events: list[Event] = []

    async def main() -> None:
        task = asyncio.create_task(run_scheduler(
            system.instance, entries, clock=clock.now, sleep=clock.sleep, on_fired=events.append,
            stop=clock.stop))
        while clock.sleeps < 3:  # three failed attempts, each followed by a backoff
            await asyncio.sleep(0.01)
        assert not events
        await asyncio.to_thread(admin.execute, sql.SQL("create database {} template {}").format(
            sql.Identifier(absent_database), sql.Identifier(template_database)))
        while not events:
            await asyncio.sleep(0.01)
        clock.stop.set()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert events[0]["data"]["reason"] == "fired"
    assert len(cron_jobs(url)) == 1


def test_scheduler_refuses_to_start_when_entries_cannot_be_enqueued(
        database: str) -> None:
    system = skivi.create_system({
        "database": {"connection_string": database},
        "validation": {"tasks": {"strict": {"type": "object", "additionalProperties": False,
                                            "properties": {"kind": {"type": "string"}}}}}})
    strict = cron({"identifier": "strict", "schedule": "* * * * *", "payload": {"kind": "x"}})
    with pytest.raises(skivi.ConfigError, match="cron 'strict': payload:"):
        asyncio.run(run_scheduler(system.instance, strict))
    twice = cron({"identifier": "a", "schedule": "* * * * *"})
    with pytest.raises(skivi.ConfigError, match="identifier 'a' is defined more than once"):
        asyncio.run(run_scheduler(system.instance, twice + twice))
    with connect(database) as c:  # refused before touching the database
        assert c.execute("select count(*) from skivi.cron").fetchone() == (0,)


def _scheduler_process(system: skivi.System, entries: list[CronEntry]) -> None:
    scheduler_main(system, entries)


def test_scheduler_main_fires_and_exits_cleanly_when_sent_sigterm(system: skivi.System,
                                                                  database: str) -> None:
    entries = cron({"identifier": "second", "schedule": "* * * * * *",
                    "spec": {"job_key": None}})
    process = multiprocessing.get_context("fork").Process(
        target=_scheduler_process, args=(system, entries))
    process.start()
    try:
        wait_for(lambda: len(cron_jobs(database)) >= 2, timeout=15,
                 what="the cron process to enqueue two ticks")
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        process.join(timeout=15)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join()
    ticks = [j["ts"] for j in cron_jobs(database)]
    assert len(ticks) == len(set(ticks))
    assert all(t.microsecond == 0 for t in ticks)
