"""skivi.testing.drain against the real PostgreSQL: the engine's outcomes (completion,
retry with backoff, exhaustion, partial success, no handler, serial queues), follow-ups,
the limit, the caller's connection, and the async twin."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

import skivi
from skivi.testing import DrainLimitReached, drain, drain_async
from tests.support.engines import run_engine
from tests.support.rows import fetch, live_jobs


def _system(database: str, tasks: Any = None, **worker: Any) -> skivi.System:
    return skivi.create_system({"database": {"connection_string": database},
                                "worker": worker}, tasks)


def test_drain_runs_every_runnable_job_when_called(database: str) -> None:
    system = _system(database)
    try:
        @system.task
        def add(a: int, b: int) -> int:
            return a + b

        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        add.defer(1, 2)
        add.configure(priority=-5).defer(10, 20)
        add.configure(run_at=later).defer(0, 0)  # not runnable yet: stays
        runs = drain(system)
        assert [(r.task, r.payload, r.outcome, r.value, r.attempt) for r in runs] == [
            ("add", {"a": 10, "b": 20}, "completed", 30, 1),
            ("add", {"a": 1, "b": 2}, "completed", 3, 1)]
        assert fetch(database, "select payload from skivi.job_live") == [({"a": 0, "b": 0},)]
        assert fetch(database, "select count(*) from skivi.engine") == [(0,)]  # deregistered
    finally:
        system.stop()


def test_drain_schedules_the_retry_with_the_backoff_when_a_job_fails(database: str) -> None:
    system = _system(database)
    try:
        @system.task(backoff=skivi.Backoff(factor=100.0))
        def flaky(n: int) -> None:
            raise ValueError(f"no {n}")

        job = flaky.defer(n=1)
        before = dt.datetime.now(dt.UTC)
        (run,) = drain(system)
        assert (run.outcome, run.error, run.reason) == ("failed", "no 1", None)
        assert "ValueError: no 1" in (run.traceback or "")
        delay = skivi.Backoff(factor=100.0).delay(1)
        assert run.retry_at is not None
        assert before + dt.timedelta(seconds=delay - 5) < run.retry_at
        assert run.retry_at < before + dt.timedelta(seconds=delay + 5)
        assert fetch(database, "select id, attempts, last_error, run_at, locked_by "
                               "from skivi.job_live") == [(job.id, 1, "no 1", run.retry_at, None)]
        assert drain(system) == []  # the retry waits out its backoff
    finally:
        system.stop()


def test_drain_exhausts_the_job_when_its_attempts_run_out(database: str) -> None:
    system = _system(database)
    try:
        @system.task(max_attempts=3, backoff=skivi.Backoff(factor=1000.0))
        def broken() -> None:
            raise RuntimeError("down")

        job = broken.defer()
        runs = drain(system, run_scheduled=True)  # each retry made runnable at once
        assert [(r.attempt, r.outcome, r.reason) for r in runs] == [
            (1, "failed", None), (2, "failed", None), (3, "exhausted", "max_attempts")]
        assert live_jobs(database) == 0
        assert fetch(database, "select id, outcome, reason, last_error, attempts "
                               "from skivi.job_history") == [
            (job.id, "exhausted", "max_attempts", "down", 3)]
    finally:
        system.stop()


def test_drain_keeps_only_the_failed_items_when_a_batch_job_partly_succeeds(
        database: str) -> None:
    def batch(ctx: skivi.JobContext) -> list[Any]:
        return [ValueError(f"bad {x}") if x % 2 else None for x in ctx.job.payload]

    system = _system(database, {"batch": batch})
    try:
        job = skivi.add_job(system, "batch", [1, 2, 3, 4])
        (run,) = drain(system)
        assert (run.outcome, run.remaining) == ("failed", [1, 3])
        assert run.error is not None and run.error.startswith(
            "partial success: 2 of 4 items failed\nitem 0: bad 1\nitem 2: bad 3")
        assert fetch(database, "select id, payload from skivi.job_live") == [(job.id, [1, 3])]
    finally:
        system.stop()


def test_drain_exhausts_a_job_without_handler_when_tasks_are_exhausted(
        database: str) -> None:
    system = _system(database)
    try:
        skivi.add_job(system, "nobody", {})
        (run,) = drain(system)
        assert (run.outcome, run.reason) == ("exhausted", "no_handler")
        assert fetch(database, "select reason from skivi.job_history") == [("no_handler",)]
    finally:
        system.stop()
    skipping = _system(database, {"known": lambda ctx: None}, unknown_tasks="skip")
    try:
        skivi.add_job(skipping, "nobody", {})
        skivi.add_job(skipping, "known", {})
        assert [r.task for r in drain(skipping)] == ["known"]  # as the engine: left alone
        assert fetch(database, "select task_identifier from skivi.job_live") == [("nobody",)]
    finally:
        skipping.stop()


def test_drain_runs_follow_up_jobs_when_handlers_enqueue_them(database: str) -> None:
    order: list[str] = []
    system = _system(database, {"audit": lambda ctx: order.append("audit")})
    try:
        @system.task
        def notify(who: str) -> None:
            order.append(f"notify {who}")

        @system.task
        def signup(ctx: skivi.JobContext, who: str) -> None:
            order.append(f"signup {who}")
            notify.defer(who=who)  # typed, from inside the job
            ctx.add_job("audit", {"who": who})  # the ctx way

        signup.defer(who="ann")
        runs = drain(system)
        assert [r.task for r in runs] == ["signup", "notify", "audit"]
        assert order == ["signup ann", "notify ann", "audit"]
    finally:
        system.stop()


def test_drain_stops_with_the_runs_when_max_jobs_ran_and_more_are_runnable(
        database: str) -> None:
    system = _system(database)
    try:
        @system.task
        def forever(n: int) -> None:
            forever.defer(n=n + 1)

        forever.defer(n=0)
        with pytest.raises(DrainLimitReached, match="drain ran 5 jobs") as info:
            drain(system, max_jobs=5)
        assert [r.payload["n"] for r in info.value.runs] == [0, 1, 2, 3, 4]
        # The next job was claimed to see it, and given back untouched.
        assert fetch(database, "select payload, attempts, locked_by from skivi.job_live") == [
            ({"n": 5}, 0, None)]
    finally:
        system.stop()


def test_drain_runs_serial_queue_jobs_in_order_when_they_share_a_queue(
        database: str) -> None:
    system = _system(database)
    seen: list[int] = []
    try:
        @system.task(queue_name="q")
        def step(n: int) -> None:
            seen.append(n)

        step.configure(priority=0).defer(n=1)
        step.configure(priority=0).defer(n=2)
        step.configure(queue_name=None, priority=-1).defer(n=0)
        drain(system, queues=None)
        assert seen == [0, 1, 2]
        assert fetch(database, "select job_id, locked_by from skivi.job_queue") == [
            (None, None)]
    finally:
        system.stop()


def test_drain_uses_only_the_callers_connection_when_given_conn(
        conn: psycopg.Connection[Any], conn_system: skivi.System) -> None:
    """conn_system's own connections go nowhere: everything happens on the test's
    rolled-back connection, follow-ups included, and the session is left as found."""
    def first(ctx: skivi.JobContext) -> None:
        ctx.add_job("second", {"from": ctx.job.id})

    system = skivi.create_system(conn_system.config, {"first": first,
                                                      "second": lambda ctx: None})
    try:
        job = skivi.add_job(system, "first", {}, conn=conn)
        runs = drain(system, conn=conn)
        assert [(r.task, r.outcome) for r in runs] == [("first", "completed"),
                                                       ("second", "completed")]
        assert runs[1].payload == {"from": job.id}
        assert live_jobs(conn) == 0
        assert fetch(conn, "select count(*) from pg_locks where locktype = 'advisory' "
                           "and pid = pg_backend_pid()") == [(0,)]
        assert fetch(conn, "select count(*) from skivi.engine") == [(0,)]
    finally:
        system.stop()


def test_drain_async_runs_async_handlers_on_the_callers_loop_when_awaited(
        database: str) -> None:
    system = _system(database)
    loops: list[Any] = []
    try:
        @system.task(timeout=0.2)
        async def slow(s: float) -> str:
            loops.append(asyncio.get_running_loop())
            await asyncio.sleep(s)
            return "done"

        slow.defer(s=0)
        slow.defer(s=5)

        async def main() -> list[Any]:
            runs = await drain_async(system)
            return [runs, asyncio.get_running_loop()]

        runs, loop = asyncio.run(main())
        assert [(r.outcome, r.value) for r in runs] == [("completed", "done"),
                                                        ("failed", None)]
        assert runs[1].error == "timeout: the job ran longer than 0.2 s"
        assert loops == [loop, loop]

        async def inside() -> None:
            drain(system)

        with pytest.raises(skivi.SkiviError, match="drain_async"):
            asyncio.run(inside())
        slow.defer(s=0)
        assert [r.value for r in drain(system)] == ["done"]  # sync drain: its own loop
    finally:
        system.stop()


def test_drain_async_writes_follow_ups_on_the_callers_connection_when_given_conn(
        database: str) -> None:
    system = _system(database)
    try:
        @system.task
        async def child(n: int) -> None: ...

        @system.task
        async def parent(n: int) -> None:
            await child.defer_async(n=n)

        async def main() -> list[Any]:
            async with await psycopg.AsyncConnection.connect(database) as c:
                await parent.configure(conn=c).defer_async(n=1)
                runs = await drain_async(system, conn=c)
                await c.rollback()
                return runs

        runs = asyncio.run(main())
        assert [r.task for r in runs] == ["parent", "child"]
        assert live_jobs(database) == 0  # all of it in the rolled-back transaction
    finally:
        system.stop()


ENGINE_TASKS = '''
import skivi

typed = skivi.Tasks()


@typed.task
def broken(n: int) -> None:
    raise ValueError(f"broken {n}")


@typed.task
def fine(n: int) -> int:
    return n


def batch(ctx):
    return [ValueError(f"bad {x}") if x % 2 else None for x in ctx.job.payload]


TASKS = {**typed, "batch": batch}
'''


def test_drain_leaves_what_the_engine_leaves_when_both_run_the_same_jobs(
        make_database: Any, tmp_path: Path) -> None:
    """The same task file and jobs, run by ``python -m skivi.engine --once`` on one
    database and by ``drain`` on another: the same rows left in job and job_history."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mixed.py").write_text(ENGINE_TASKS)
    states = []
    for runner in ("engine", "drain"):
        url = make_database()
        system = skivi.create_system({"database": {"connection_string": url},
                                      "worker": {"task_directory": str(tmp_path / "tasks"),
                                                 "history": True}})
        try:
            # By name: the typed task's max_attempts is a default of its defer() only.
            skivi.add_jobs(system, [{"task": "broken", "payload": {"n": 1}, "max_attempts": 1},
                                    {"task": "fine", "payload": {"n": 2}},
                                    {"task": "batch", "payload": [1, 2, 3, 4]},
                                    {"task": "ghost", "payload": {}}])
            if runner == "engine":
                done = run_engine([sys.executable, "-m", "skivi.engine", "--database-url",
                                   url, "--tasks", str(tmp_path / "tasks"), "--processes",
                                   "1", "--once"], env={"SKIVI_HISTORY": "true"})
                assert done.returncode == 0, done.stderr
            else:
                assert len(drain(system)) == 4
        finally:
            system.stop()
        states.append((
            fetch(url, "select task_identifier, payload, attempts, last_error "
                       "from skivi.job_live order by task_identifier"),
            fetch(url, "select task_identifier, payload, outcome, reason, last_error, "
                       "attempts from skivi.job_history order by task_identifier")))
    engine, drained = states
    assert drained == engine
    assert [row[0] for row in engine[1]] == ["broken", "fine", "ghost"]  # and not empty
    assert engine[0] == [("batch", [1, 3], 1, "partial success: 2 of 4 items failed\n"
                                              "item 0: bad 1\nitem 2: bad 3")]
