"""The probe app's tasks: each reports through the ORM (an Event row) what it saw, so the
tests can tell what ran, where and how."""

import os
import time
from typing import Any

from django.db import connection, transaction
from django.tasks import task as django_task

from skivi.contrib.django import task
from tests.support.django_probe.models import Event


@task
def record(label: str) -> None:
    """A sync handler using the ORM (no event loop may look running to Django)."""
    Event.objects.create(name="record", value={"label": label, "pid": os.getpid()})


@task(max_attempts=1)
def break_connection() -> None:
    """Kills this job's own database session: the next job must get a new connection."""
    Event.objects.create(name="breaking", value=None)
    with connection.cursor() as cur:
        cur.execute("select pg_terminate_backend(pg_backend_pid())")


@task(max_attempts=1)
def defer_inside(label: str, fail: bool) -> None:
    """Enqueues a follow-up inside the handler's own atomic(): it goes or stays with it."""
    with transaction.atomic():
        Event.objects.create(name="defer_inside", value={"label": label})
        record.defer(label=label)
        if fail:
            raise RuntimeError("the handler's transaction rolls back")


@django_task
def add(a: int, b: int) -> int:
    return a + b


@django_task
def refuse(reason: str) -> None:
    raise ValueError(reason)


@django_task(takes_context=True)
def with_context(context: Any, x: int) -> dict[str, Any]:
    return {"attempt": context.attempt, "id": context.task_result.id, "x": x}


@django_task
async def double(x: int) -> int:
    await Event.objects.acreate(name="double", value={"x": x})
    return 2 * x


@django_task
def wait_for_go() -> str:
    """Runs until the test writes a "go" Event (at most 60 s), so it can be seen RUNNING."""
    deadline = time.monotonic() + 60
    while not Event.objects.filter(name="go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no go")
        time.sleep(0.05)
    return "went"


@django_task
def ordered(priority: int) -> None:
    """Records when it ran (the Event's id), to see the claim order."""
    Event.objects.create(name="ordered", value=priority)


@task
def whoami(n: int) -> None:
    """Reports the process and the database session it ran in."""
    with connection.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        backend = cur.fetchone()[0]
    Event.objects.create(name="whoami", value={"pid": os.getpid(), "backend": backend, "n": n})
