"""Typed tasks against the real PostgreSQL: what ``defer`` and its kin write, in whose
transaction, validated as any payload, and run by the real engine (sync and async, a
follow-up deferred from inside a job)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

import skivi
import skivi.client
from skivi.testing import drain
from tests.support.db import connect
from tests.support.engines import run_engine
from tests.support.rows import fetch, live_jobs
from tests.support.wait import wait_for


def _rows(db: Any) -> list[tuple[Any, ...]]:
    return fetch(db, "select task_identifier, payload, queue_name, priority, max_attempts, "
                     "key, flags from skivi.job_live order by id")


def test_defer_stores_the_arguments_and_options_when_called(system: skivi.System) -> None:
    @system.task(queue_name="mail", priority=2, max_attempts=4, flags=["smtp"],
                 job_key=lambda to, **_: f"mail:{to}")
    def send_email(to: str, subject: str = "") -> None: ...

    job = send_email.defer("a@b.c", subject="Hi")
    assert isinstance(job, skivi.Job) and job.id > 0
    assert (job.task_identifier, job.payload, job.key) == ("send_email",
                                                           {"to": "a@b.c", "subject": "Hi"},
                                                           "mail:a@b.c")
    assert _rows(system.database_url) == [
        ("send_email", {"to": "a@b.c", "subject": "Hi"}, "mail", 2, 4, "mail:a@b.c",
         ["smtp"])]


def test_defer_stores_what_add_job_stores_when_given_the_same_arguments(
        system: skivi.System) -> None:
    @system.task
    def send_email(to: str, subject: str = "") -> None: ...

    send_email.defer(to="a@b.c", subject="Hi")
    skivi.add_job(system, "send_email", {"to": "a@b.c", "subject": "Hi"})
    with connect(system.database_url) as c:
        c.execute("select skivi.add_job('send_email', '{\"to\": \"a@b.c\", "
                  "\"subject\": \"Hi\"}'::jsonb)")
    payloads = [r[1] for r in _rows(system.database_url)]
    assert payloads == [{"to": "a@b.c", "subject": "Hi"}] * 3
    runs = drain(system)  # and each runs the function alike
    assert [r.outcome for r in runs] == ["completed"] * 3


def test_configure_writes_in_the_callers_transaction_when_given_conn(
        system: skivi.System) -> None:
    @system.task
    def send_email(to: str) -> None: ...

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with connect(system.database_url, autocommit=False) as c:
        send_email.configure(conn=c, run_at=later, priority=-1).defer(to="rolled")
        assert live_jobs(c) == 1
        c.rollback()
        job = send_email.configure(conn=c, run_at=later, priority=-1).defer(to="kept")
        assert live_jobs(system.database_url) == 0  # not committed yet: nothing seen
        c.commit()
    rows = fetch(system.database_url, "select id, payload, run_at, priority from skivi.job_live")
    assert rows == [(job.id, {"to": "kept"}, later, -1)]


def test_defer_async_writes_in_the_callers_transaction_when_given_conn(
        system: skivi.System) -> None:
    @system.task
    async def send_email(to: str) -> None: ...

    async def main() -> skivi.Job:
        job = await send_email.defer_async(to="pooled")
        async with await psycopg.AsyncConnection.connect(system.database_url) as c:
            await send_email.configure(conn=c).defer_async(to="rolled")
            await c.rollback()
            await send_email.configure(conn=c).defer_many_async([{"to": "x"}, {"to": "y"}])
            await c.commit()
        return job

    job = asyncio.run(main())
    payloads = [r[1] for r in _rows(system.database_url)]
    assert job.payload == {"to": "pooled"}
    assert payloads == [{"to": "pooled"}, {"to": "x"}, {"to": "y"}]


def test_defer_many_enqueues_in_one_statement_when_given_many_calls(
        system: skivi.System, monkeypatch: pytest.MonkeyPatch) -> None:
    @system.task(priority=5)
    def send_email(to: str) -> None: ...

    @system.task
    def resize(path: str, width: int = 100) -> None: ...

    sent: list[str] = []
    for name in ("job_insert_many", "job_insert_keyed_many"):
        statement = getattr(skivi.client, name)

        class Counting:
            def __init__(self, inner: Any, name: str) -> None:
                self.inner, self.name = inner, name

            def execute(self, *args: Any, **kwargs: Any) -> Any:
                sent.append(self.name)
                return self.inner.execute(*args, **kwargs)

            def fetch(self, cur: Any) -> Any:
                return self.inner.fetch(cur)

        monkeypatch.setattr(skivi.client, name, Counting(statement, name))
    jobs = send_email.defer_many([{"to": f"u{i}@x"} for i in range(3)]
                                 + [send_email.spec(to="typed@x")])
    assert sent == ["job_insert_many"]
    assert [j.payload["to"] for j in jobs] == ["u0@x", "u1@x", "u2@x", "typed@x"]
    assert {j.priority for j in jobs} == {5}
    sent.clear()
    mixed = skivi.add_jobs(system, [send_email.spec(to="m@x"), resize.spec("a.png", 3)])
    assert sent == ["job_insert_many"]
    assert [(j.task_identifier, j.payload) for j in mixed] == [
        ("send_email", {"to": "m@x"}), ("resize", {"path": "a.png", "width": 3})]
    with pytest.raises(TypeError, match="defer_many item 1: task 'send_email'"):
        send_email.defer_many([{"to": "a"}, {"too": "b"}])
    with pytest.raises(skivi.SkiviError, match="item 0 is a job of task 'resize'"):
        send_email.defer_many([resize.spec("a.png")])
    assert live_jobs(system.database_url) == 6  # the refused calls wrote nothing


def test_defer_is_validated_like_any_payload_when_the_task_has_a_schema(
        database: str) -> None:
    tasks = skivi.Tasks()

    @tasks.task
    def send_email(to: str) -> None: ...

    @tasks.task
    def measure(x: float) -> None: ...

    schema = {"type": "object", "required": ["to"],
              "properties": {"to": {"type": "string", "pattern": "@"}}}
    system = skivi.create_system({"database": {"connection_string": database},
                                  "validation": {"tasks": {"send_email": schema}}}, tasks)
    try:
        with pytest.raises(skivi.PayloadError, match="send_email"):
            send_email.defer(to="no-at-sign")
        with pytest.raises(skivi.PayloadError, match="NaN"):
            measure.defer(x=float("nan"))  # no schema needed for this one
        send_email.defer(to="a@b.c")
        assert [r[1] for r in _rows(database)] == [{"to": "a@b.c"}]
    finally:
        system.stop()


def test_typed_tasks_run_in_the_engine_when_sync_async_and_deferring(
        database: str, tmp_path: Path) -> None:
    """The real engine (``python -m skivi.engine --once``) with a task file whose TASKS is a
    collection: a sync task, an async task taking the context that defers a follow-up from
    inside its job (the collection is not bound: the job's own engine is used)."""
    with connect(database) as c:
        c.execute("create table typed_log (task text, value text, pid int)")
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "typed.py").write_text(textwrap.dedent(f"""
        import asyncio, datetime as dt, os
        import psycopg
        import skivi

        TASKS = skivi.Tasks()
        URL = {database!r}

        def log(task, value):
            with psycopg.connect(URL, autocommit=True) as c:
                c.execute("insert into typed_log values (%s, %s, %s)",
                          (task, value, os.getpid()))

        @TASKS.task
        def record(n: int, at: dt.datetime) -> None:
            assert isinstance(at, dt.datetime), type(at)
            log("record", f"{{n}}@{{at.isoformat()}}")

        @TASKS.task(max_attempts=1)
        async def fetch(ctx: skivi.JobContext, url: str) -> None:
            await asyncio.sleep(0)
            log("fetch", f"{{url}} job {{ctx.job.id}}")
            record.defer(n=len(url), at=dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc))
    """))
    system = skivi.create_system({"database": {"connection_string": database}})
    try:
        skivi.add_job(system, "fetch", {"url": "abc"})
        skivi.add_job(system, "record", {"n": 1, "at": "2024-01-02T03:04:05+00:00"})
    finally:
        system.stop()
    done = run_engine([*_engine(database, tasks_dir), "--once"])
    assert done.returncode == 0, done.stderr
    logged = fetch(database, "select task, value from typed_log order by task, value")
    fetched = [v for t, v in logged if t == "fetch"]
    assert len(fetched) == 1 and fetched[0].startswith("abc job ")
    assert [v for t, v in logged if t == "record"] == ["1@2024-01-02T03:04:05+00:00",
                                                        "3@2024-05-01T00:00:00+00:00"]
    assert live_jobs(database) == 0
    assert fetch(database, "select count(*) from skivi.job_history") == [(0,)]


def _engine(database: str, tasks: Path) -> list[str]:
    return [sys.executable, "-m", "skivi.engine", "--database-url", database, "--tasks",
            str(tasks), "--processes", "1", "--log-level", "WARNING"]


def test_system_task_runs_in_the_engine_started_by_the_system_when_forked(
        database: str) -> None:
    """``@system.task`` functions run in the engine ``start()`` forks (closures included),
    and a follow-up deferred inside one goes through the child's own connections."""
    system = skivi.create_system({"database": {"connection_string": database}})
    seen: list[int] = []

    @system.task
    def double(n: int) -> None:
        with psycopg.connect(database, autocommit=True) as c:
            c.execute("insert into skivi_test_log values (%s)", (n * 2,))
        seen.append(n)  # the application's list, forked: the child appends to its copy
        if n < 4:
            double.defer(n=n * 2)

    with connect(database) as c:
        c.execute("create table skivi_test_log (value int)")
    try:
        # Deferred before start(), so the application's pool exists when the engine forks:
        # a follow-up inside the job must use the child's connections, not that pool.
        double.defer(n=1)
        system.start()
        wait_for(lambda: len(fetch(database, "select * from skivi_test_log")) == 3,
                 timeout=30)
    finally:
        system.stop()
    assert sorted(v for (v,) in fetch(database, "select value from skivi_test_log")) == [
        2, 4, 8]
    assert seen == []  # it ran in the engine's process, not here


def test_a_typed_task_keeps_its_return_value_when_declared_with_store_result(
        database: str) -> None:
    system = skivi.create_system({"database": {"connection_string": database}})
    try:
        @system.task(store_result=True)
        def add(a: int, b: int) -> int:
            return a + b

        job = add.defer(2, 3)
        [run] = skivi.testing.drain(system)
        assert run.outcome == "completed"
        result = skivi.get_result(system, job.id)
        assert (result.state, result.value) == ("completed", 5)
    finally:
        system.stop()
