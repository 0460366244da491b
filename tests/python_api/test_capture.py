"""skivi.testing.capture and immediate against the real PostgreSQL: what they record, what
they write (or not), and how they run tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

import skivi
from skivi.testing import capture, drain, immediate
from tests.support.rows import fetch, live_jobs


def test_capture_records_and_writes_when_write_is_true(system: skivi.System) -> None:
    @system.task
    def send_email(to: str, subject: str = "") -> None: ...

    with capture(system) as jobs:
        job = send_email.defer(to="a@b.c", subject="Hi")
        skivi.add_job(system, "other", {"x": 1}, priority=4)
    send_email.defer(to="after@b.c")  # outside the block: not recorded
    assert jobs.tasks() == ["send_email", "other"]
    assert jobs.enqueued("send_email", to="a@b.c")
    assert jobs.enqueued(send_email, subject="Hi")[0].job is None  # written: see `job`
    assert not jobs.enqueued("send_email", to="b@b.c")
    assert not jobs.enqueued("other", to="a@b.c")
    assert jobs.enqueued("other")[0].spec.priority == 4
    assert fetch(system.database_url, "select id from skivi.job_live order by id")[0] == (job.id,)
    assert live_jobs(system.database_url) == 3


def test_capture_writes_nothing_when_write_is_false(system: skivi.System) -> None:
    @system.task(queue_name="mail")
    def remind(at: dt.datetime) -> None: ...

    at = dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with capture(system, write=False) as jobs:
        job = remind.defer(at=at)
        many = remind.defer_many([{"at": at}, {"at": at}])
    assert live_jobs(system.database_url) == 0
    assert job.id < 0 and len({job.id, *(j.id for j in many)}) == 3
    assert (job.queue_name, job.payload) == ("mail", {"at": "2024-05-01T12:00:00+02:00"})
    assert len(jobs.enqueued(remind, at=at)) == 3  # compared as stored
    with pytest.raises(skivi.PayloadError):  # refused payloads raise as usual
        with capture(system, write=False) as refused:
            skivi.add_job(system, "x", {"n": float("inf")})
    assert len(refused) == 0


def test_capture_sees_follow_ups_when_drain_runs_their_parents(system: skivi.System) -> None:
    @system.task
    def notify(who: str) -> None: ...

    @system.task
    def signup(ctx: skivi.JobContext, who: str) -> None:
        notify.defer(who=who)
        ctx.add_job("audit", {"who": who})

    signup.defer(who="ann")
    with capture(system) as jobs:
        drain(system)
    assert jobs.tasks() == ["notify", "audit"]


def test_capture_blocks_nest_when_the_inner_one_does_not_write(system: skivi.System) -> None:
    with capture(system) as outer:
        skivi.add_job(system, "a", {})
        with capture(system, write=False) as inner:
            skivi.add_job(system, "b", {})
    assert (outer.tasks(), inner.tasks()) == (["a", "b"], ["b"])
    assert [r[0] for r in fetch(system.database_url,
                                "select task_identifier from skivi.job_live")] == ["a"]
    assert system.client.interceptors == []


def test_immediate_runs_the_task_at_once_when_deferred(system: skivi.System) -> None:
    seen: list[Any] = []

    @system.task
    def send_email(to: str) -> str:
        seen.append(to)
        return f"sent {to}"

    @system.task
    def signup(ctx: skivi.JobContext, who: str) -> None:
        seen.append(("signup", ctx.job.attempts))
        send_email.defer(to=who)
        seen.append("after")

    with immediate(system) as runs:
        job = signup.defer(who="ann")
        assert seen == [("signup", 1), "ann", "after"]  # depth first, before defer returns
    assert job.id < 0 and live_jobs(system.database_url) == 0
    assert [(r.task, r.outcome, r.value) for r in runs] == [
        ("send_email", "completed", "sent ann"), ("signup", "completed", None)]


def test_immediate_raises_the_handlers_error_when_it_fails(system: skivi.System) -> None:
    @system.task
    def broken(n: int) -> None:
        raise ValueError(f"bad {n}")

    with immediate(system), pytest.raises(ValueError, match="bad 1"):
        broken.defer(n=1)
    with immediate(system, raise_errors=False) as runs:
        broken.defer(n=2)
    assert [(r.outcome, r.error) for r in runs] == [("failed", "bad 2")]
    with immediate(system), pytest.raises(skivi.SkiviError, match="no handler for task 'x'"):
        skivi.add_job(system, "x", {})
    assert live_jobs(system.database_url) == 0


def test_immediate_refuses_when_tasks_enqueue_each_other_too_deep(
        system: skivi.System) -> None:
    @system.task
    def forever(n: int) -> None:
        forever.defer(n=n + 1)

    with immediate(system, max_depth=10), pytest.raises(skivi.SkiviError, match="depth 10"):
        forever.defer(n=0)


def test_immediate_runs_async_tasks_when_deferred_from_sync_or_async_code(
        system: skivi.System) -> None:
    loops: list[Any] = []

    @system.task
    async def fetch_url(url: str) -> str:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return url.upper()

    with immediate(system) as runs:
        fetch_url.defer(url="a")  # sync code: a loop of its own

        async def main() -> Any:
            await fetch_url.defer_async(url="b")  # on this loop
            fetch_url.defer(url="c")  # sync call inside a loop: a thread's loop
            return asyncio.get_running_loop()

        loop = asyncio.run(main())
    assert [r.value for r in runs] == ["A", "B", "C"]
    assert loops[1] is loop and loops[2] is not loop
