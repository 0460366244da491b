"""The django.tasks backend: what it declares, how it stores a task (priority, run_after,
queues, arguments) and the TaskResult it reads back, READY -> RUNNING -> SUCCESSFUL or
FAILED, with real `manage.py skivi_worker` processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from pathlib import Path
from typing import Any

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.test import override_settings
from django.utils import timezone

import skivi
from skivi.contrib.django import SkiviBackend, system
from tests.support.django_harness import fetch, spawn, work
from tests.support.django_probe.models import Event
from tests.support.django_probe.tasks import add, double, ordered, refuse, wait_for_go, with_context
from tests.support.wait import wait_for


def test_the_backend_declares_what_skivi_supports_when_configured(db: str) -> None:
    backend = task_backends["default"]
    assert isinstance(backend, SkiviBackend)
    assert (backend.supports_defer, backend.supports_async_task, backend.supports_get_result,
            backend.supports_priority) == (True, True, True, True)
    assert list(backend.check()) == []


def test_unknown_options_are_refused_when_checked(db: str) -> None:
    tasks = {"default": {"BACKEND": "skivi.contrib.django.SkiviBackend",
                         "OPTIONS": {"max_attempt": 3, "queue_map": {"a": 1}}}}
    with override_settings(TASKS=tasks):
        found = [(m.id, m.msg) for m in task_backends["default"].check()]
        assert [i for i, _ in found] == ["skivi.E003", "skivi.E003"], found
        assert "max_attempt" in found[0][1] and "queue_map" in found[1][1]
        with pytest.raises(InvalidTask, match="max_attempt"):
            add.enqueue(1, 2)


@pytest.mark.parametrize("task", [add, double])
def test_an_enqueued_result_is_as_djangos_backend_tests_expect_when_enqueued(
        db: str, task: Any, caplog: pytest.LogCaptureFixture) -> None:
    # After Django's own tests of its backends (tests/tasks/test_dummy_backend.py).
    with caplog.at_level(logging.DEBUG, logger="django.tasks"):
        result = task.enqueue(1, b=3) if task is add else task.enqueue(x=1)
    assert [r.getMessage() for r in caplog.records if "enqueued" in r.getMessage()
            and result.id in r.getMessage()], caplog.text
    assert result.status == TaskResultStatus.READY and result.is_finished is False
    assert (result.started_at, result.last_attempted_at, result.finished_at) == (
        None, None, None)
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    assert result.task == task and result.attempts == 0 and result.errors == []
    assert task_backends["default"].get_result(result.id) == result
    assert asyncio.run(task_backends["default"].aget_result(result.id)) == result
    varied = task.using(priority=7, queue_name="reports", run_after=timezone.now()
                        + dt.timedelta(hours=1))
    later = varied.enqueue(2, b=0) if task is add else varied.enqueue(x=2)
    back = task.get_result(later.id)
    assert back.task == varied and back == later


def test_aenqueue_validates_as_enqueue_does_when_awaited(db: str) -> None:
    with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid"):
        asyncio.run(add.using(queue_name="unknown_queue").aenqueue(1, 2))


def test_a_task_is_stored_as_a_skivi_job_with_its_options_when_enqueued(db: str) -> None:
    later = timezone.now() + dt.timedelta(hours=1)
    results = [add.enqueue(1, 2), add.using(priority=100).enqueue(3, 4),
               add.using(priority=-100, run_after=later).enqueue(5, b=6),
               add.using(queue_name="reports").enqueue(7, 8)]
    rows = fetch(db, "select id, task_identifier, payload, priority, run_at, queue_name, "
                     "max_attempts from skivi.job_live order by id")
    assert [str(r[0]) for r in rows] == [r.id for r in results]
    assert {r[1] for r in rows} == {"tests.support.django_probe.tasks.add"}
    assert [(r[2]["args"], r[2]["kwargs"]) for r in rows] == [
        ([1, 2], {}), ([3, 4], {}), ([5], {"b": 6}), ([7, 8], {})]
    # What differs from the module-level task, so its results name the task as enqueued.
    assert [r[2].get("using") for r in rows] == [
        None, {"priority": 100}, {"priority": -100, "run_after": later.isoformat()},
        {"queue_name": "reports"}]
    # Django's priority, higher first, is Skivi's negated (lower first).
    assert [r[3] for r in rows] == [0, -100, 100, 0]
    assert rows[2][4] == later
    # "default" is no Skivi queue (parallel); another name is the Skivi queue of that name.
    assert [r[5] for r in rows] == [None, None, None, "reports"]
    assert {r[6] for r in rows} == {1}
    first = results[0]
    assert (first.status, first.args, first.kwargs, first.backend) == (
        TaskResultStatus.READY, [1, 2], {}, "default")
    assert first.enqueued_at is not None


def test_bad_arguments_are_refused_when_enqueued(db: str) -> None:
    with pytest.raises(TypeError, match="Unsupported type"):
        add.enqueue(dt.datetime.now(dt.UTC), 1)
    with pytest.raises(ValueError, match="JSON round trip"):
        add.enqueue(float("nan"), 1)  # JSON has no NaN: it would come back None
    with pytest.raises(skivi.PayloadError):
        add.enqueue("a\x00b", 1)  # Skivi's payload rules: PostgreSQL holds no U+0000
    with pytest.raises(TypeError, match="JSON round trip"):
        add.enqueue({1: "a key JSON makes a string"}, 1)
    with pytest.raises(InvalidTask, match="Queue 'nowhere'"):
        add.using(queue_name="nowhere").enqueue(1, 2)
    with pytest.raises(InvalidTask, match="priority"):
        add.using(priority=101)
    assert fetch(db, "select count(*) from skivi.job_live") == [(0,)]
    # A tuple is a JSON list, as Django's TaskResult says it.
    assert add.enqueue((1,), 2).args == [[1], 2]


def test_a_result_moves_from_ready_to_successful_when_the_worker_runs_it(db: str) -> None:
    varied = add.using(priority=5)
    result = varied.enqueue(2, 3)
    assert add.get_result(result.id).status == TaskResultStatus.READY
    log = work(db)
    # Django's task_started and task_finished, sent in the worker (Django logs them).
    for state in ("RUNNING", "SUCCESSFUL"):
        assert (f"Task id={result.id} path=tests.support.django_probe.tasks.add "
                f"state={state}") in log, log
    done = add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.task == varied  # from the kept result: the job's row is gone
    assert done.return_value == 5
    assert (done.args, done.kwargs, done.errors) == ([2, 3], {}, [])
    assert done.enqueued_at == result.enqueued_at
    assert done.started_at is not None and done.finished_at is not None
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.attempts == 1 and done.is_finished
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5
    fetched = asyncio.run(add.aget_result(result.id))
    assert fetched.return_value == 5
    # Skivi's own view of the same job.
    assert skivi.get_result(system(), int(result.id)).state == "completed"


def test_a_failing_task_is_failed_with_its_error_when_the_worker_runs_it(db: str) -> None:
    result = refuse.enqueue("not today")
    work(db)
    failed = refuse.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert len(failed.errors) == 1
    error = failed.errors[0]
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "not today" in error.traceback
    assert failed.args == ["not today"]
    with pytest.raises(ValueError, match="Task failed"):
        failed.return_value  # noqa: B018 - Django raises for a failed result


def test_context_and_async_tasks_run_when_the_worker_runs_them(db: str) -> None:
    ctx = with_context.enqueue(7)
    doubled = double.enqueue(21)
    work(db)
    got = with_context.get_result(ctx.id)
    assert got.status == TaskResultStatus.SUCCESSFUL, got.errors
    assert got.return_value == {"attempt": 1, "id": ctx.id, "x": 7}
    got = double.get_result(doubled.id)
    assert got.status == TaskResultStatus.SUCCESSFUL, got.errors
    assert got.return_value == 42
    assert Event.objects.filter(name="double").count() == 1


def test_a_running_task_is_running_when_a_worker_holds_it(db: str, tmp_path: Path) -> None:
    result = wait_for_go.enqueue()
    worker = spawn(db, ["skivi_worker", "--processes", "1"], tmp_path / "worker.log")
    try:
        running = wait_for(lambda: (r := wait_for_go.get_result(result.id)).status
                           == TaskResultStatus.RUNNING and r, timeout=60,
                           what="the task to be RUNNING")
        assert running.started_at is not None and running.finished_at is None
        Event.objects.create(name="go")
        done = wait_for(lambda: (r := wait_for_go.get_result(result.id)).is_finished and r,
                        timeout=60, what="the task to finish")
        assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == "went"
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0, (tmp_path / "worker.log").read_text()


def test_an_unknown_id_is_not_found_when_looked_up(db: str) -> None:
    for bad in ("999999", "abc", "-1", "", "1.5"):
        with pytest.raises(TaskResultDoesNotExist):
            add.get_result(bad)
    job = skivi.add_job(system(), "record", {"label": "not a django task"})
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result(str(job.id))


def test_priorities_are_honoured_in_order_when_the_worker_claims(db: str) -> None:
    for p in (-50, 0, 100, 10):
        ordered.using(priority=p).enqueue(p)
    work(db, "--concurrency", "1")
    assert list(Event.objects.filter(name="ordered").order_by("id").values_list(
        "value", flat=True)) == [100, 10, 0, -50]
