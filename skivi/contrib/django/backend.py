"""``SkiviBackend``: a ``django.tasks`` backend whose tasks are Skivi jobs.

::

    TASKS = {"default": {"BACKEND": "skivi.contrib.django.SkiviBackend",
                         "QUEUES": ["default", "emails"],
                         "OPTIONS": {"max_attempts": 1, "store_results": True,
                                     "queue_map": {"emails": "emails"}}}}

``@task`` functions' ``enqueue()`` writes a job of task ``task.module_path`` with the
payload ``{"args": [...], "kwargs": {...}}`` (and ``"using"``: the ``Task.using()``
options that differ from the module-level task's) through the project's system, so in the
caller's transaction (``transaction.atomic()``, ``ATOMIC_REQUESTS``); ``aenqueue()`` does
the same through ``sync_to_async``, as Django's async ORM does. ``manage.py skivi_worker``
runs them. What the backend declares:

    supports_defer        yes: ``run_after`` is the job's ``run_at``. A job runs at or
                          after it: when a worker next claims (at once when it is
                          listening and idle; else within worker.poll_interval)
    supports_async_task   yes: an ``async def`` task runs on the child's event loop
    supports_get_result   yes: ``get_result(id)`` / ``aget_result(id)`` from any process
    supports_priority     yes: Django's -100..100 (higher first) is stored as Skivi's
                          priority negated (Skivi runs lower numbers first), so 100 is
                          Skivi's -100; order holds among jobs claimed together and in the
                          claim index, as for every Skivi job

**Queues.** Django's ``queue_name`` routes; a Skivi queue (``queue_name``) is a *serial*
queue: one job of it runs at a time across every engine. So Django's default queue
(``"default"``) maps to no Skivi queue (jobs run in parallel), and any other name to the
Skivi queue of that name, unless ``OPTIONS["queue_map"]`` says otherwise (``{"emails":
None}`` runs the emails queue's jobs in parallel too). ``QUEUES`` is checked by Django as
for any backend. ``skivi_worker --queues emails`` runs only that Skivi queue's jobs.

**Attempts.** Django's tasks have no retries: ``OPTIONS["max_attempts"]`` defaults to 1,
so an exception makes the result FAILED at once. With more, a failed attempt leaves the
result READY, its errors listed, until a later attempt succeeds or the last fails.

**Results.** ``OPTIONS["store_results"]`` (default True) keeps each task's outcome
``worker.result_retention`` seconds (a day by default; ``skivi.get_result``). The kept
value is ``{"return_value": ..., "started_at": ..., "worker_id": ...}``: what
``TaskResult`` needs beside what Skivi keeps of every job (also ``args``, ``kwargs`` and
``enqueued_at``: a finished job's row is gone unless worker.history keeps it). Statuses
come from Skivi's tables (``job_task_get.sql``):

    READY        waiting, or failed and waiting for its retry (``errors`` has the error)
    RUNNING      claimed by an engine (``started_at``: the claim)
    SUCCESSFUL   completed (``return_value``, ``started_at``, ``finished_at``)
    FAILED       exhausted (``errors``: the last error; its traceback when worker.history
                 keeps it, else its message)

Where Skivi differs from Django's reference backends: a FAILED result's ``args``,
``kwargs`` and ``enqueued_at`` are read from the history (always kept for an exhausted
job), its ``started_at`` is unknown (None); ``worker_ids`` has one entry per attempt, all
the last worker's (Skivi keeps one); ``errors`` holds the last error only;
``last_attempted_at`` is ``started_at``; a result is gone once pruned
(TaskResultDoesNotExist), as is a finished job of a task that keeps no results without
history. Arguments are checked as Django's own ``TaskResult`` normalises
them (``django.utils.json.normalize_json``: a tuple becomes a list, anything JSON cannot
hold raises TypeError), must come back unchanged from JSON (a dict key that is not a
string raises TypeError, a NaN ValueError), then pass Skivi's payload rules (no U+0000, at
most validation.max_payload_bytes: ``skivi.PayloadError``).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterable, Mapping
from inspect import iscoroutinefunction
from typing import Any

import orjson
from django.core import checks
from django.db import connections
from django.tasks import DEFAULT_TASK_QUEUE_NAME, Task, TaskContext, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from skivi.client import add_jobs
from skivi.contrib.django.dbapi import psycopg_connection
from skivi.db.queries import TaskRow, job_task_get
from skivi.engine.child import JobContext
from skivi.job import JobSpec
from skivi.registry import TaskDef

__all__ = ["OPTIONS", "SkiviBackend"]

OPTIONS = frozenset({"max_attempts", "queue_map", "store_results"})
MAX_ATTEMPTS_DEFAULT = 1
STORE_RESULTS_DEFAULT = True

class SkiviBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        self.problems: list[str] = []
        options = dict(self.options)
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            self.problems.append(f"unknown OPTIONS {unknown} (known: {sorted(OPTIONS)})")
        self.max_attempts = options.get("max_attempts", MAX_ATTEMPTS_DEFAULT)
        if type(self.max_attempts) is not int or self.max_attempts < 1:
            self.problems.append(f"OPTIONS['max_attempts'] must be an integer >= 1, got "
                                 f"{self.max_attempts!r}")
            self.max_attempts = MAX_ATTEMPTS_DEFAULT
        self.store_results = options.get("store_results", STORE_RESULTS_DEFAULT)
        if not isinstance(self.store_results, bool):
            self.problems.append(f"OPTIONS['store_results'] must be True or False, got "
                                 f"{self.store_results!r}")
            self.store_results = STORE_RESULTS_DEFAULT
        queue_map = options.get("queue_map", {})
        if not isinstance(queue_map, Mapping) or not all(
                isinstance(k, str) and (v is None or (isinstance(v, str) and v))
                for k, v in queue_map.items()):
            self.problems.append("OPTIONS['queue_map'] must map Django queue names to Skivi "
                                 f"queue names or None, got {queue_map!r}")
            queue_map = {}
        self.queue_map: dict[str, str | None] = dict(queue_map)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        yield from super().check(**kwargs)
        for problem in self.problems:
            yield checks.Error(f"TASKS[{self.alias!r}]: {problem}", id="skivi.E003")

    def skivi_definition(self, task: Task) -> TaskDef:
        """How the engine runs ``task`` (skivi.contrib.django.project registers it under
        ``task.module_path``): its handler, keeping results as OPTIONS say."""
        return TaskDef(_handler(task), store_result=self.store_results)

    def skivi_queue(self, queue_name: str) -> str | None:
        """The Skivi queue of Django's ``queue_name`` (see the module docstring)."""
        if queue_name in self.queue_map:
            return self.queue_map[queue_name]
        return None if queue_name == DEFAULT_TASK_QUEUE_NAME else queue_name

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        from skivi.contrib.django.project import system

        if self.problems:
            raise InvalidTask(f"TASKS[{self.alias!r}]: {'; '.join(self.problems)}")
        self.validate_task(task)
        args, kwargs = _json_round_trip(list(args), dict(kwargs))
        payload: dict[str, Any] = {"args": args, "kwargs": kwargs}
        using = _using(task)
        if using:
            payload["using"] = using
        job = add_jobs(system(), [JobSpec(
            task=task.module_path, payload=payload,
            queue_name=self.skivi_queue(task.queue_name), run_at=task.run_after,
            priority=-task.priority, max_attempts=self.max_attempts)])[0]
        result = TaskResult(
            task=task, id=str(job.id), status=TaskResultStatus.READY,
            enqueued_at=job.created_at, started_at=None, finished_at=None,
            last_attempted_at=None, args=args, kwargs=kwargs, backend=self.alias, errors=[],
            worker_ids=[])
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: Any) -> TaskResult:
        from skivi.contrib.django.project import system

        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        s = system()
        if job_id < 1 or str(job_id) != str(result_id).strip():
            raise TaskResultDoesNotExist(result_id)
        wrapper = connections[conf_alias()]
        row = job_task_get.run(psycopg_connection(wrapper), s.queries, id=job_id)
        if row is None:
            raise TaskResultDoesNotExist(result_id)
        task = _task_of(row.task_identifier)
        if task is None:
            raise TaskResultDoesNotExist(f"{result_id} (a job of task {row.task_identifier!r}, "
                                         "not a django.tasks task)")
        return _result(task, self.alias, str(job_id), row)


def _json_round_trip(args: list[Any], kwargs: dict[str, Any]
                     ) -> tuple[list[Any], dict[str, Any]]:
    """The arguments as the task will get them back: normalised as Django's TaskResult
    normalises them (a tuple is a list), and refused (TypeError, ValueError) unless JSON
    gives them back unchanged (a dict with a key that is not a string would come back
    with a string)."""
    normalized = normalize_json([args, kwargs])
    try:
        back = orjson.loads(orjson.dumps(normalized))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"task arguments must survive a JSON round trip: {exc}") from None
    if back != normalized:
        raise ValueError("task arguments must survive a JSON round trip; these come back "
                         f"as {back!r}")
    return normalized[0], normalized[1]


def conf_alias() -> str:
    from skivi.contrib.django import conf

    return conf.read().alias


def _task_of(identifier: str) -> Task | None:
    try:
        found = import_string(identifier)
    except ImportError:
        return None
    return found if isinstance(found, Task) else None


def _time(text: object) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if isinstance(text, str) else None


def _errors(row: TaskRow) -> list[TaskError]:
    if row.error is None:
        return []
    text = row.traceback or row.error
    # The engine stores the exception's message; the class path travels in front of it
    # (see _handler), so the error names its class however it was kept.
    path, sep, _ = row.error.partition(": ")
    return [TaskError(exception_class_path=path if sep and "." in path else
                      "builtins.Exception", traceback=text)]


USING = ("priority", "queue_name", "run_after", "backend")
"""The options of ``Task.using()``, kept with a job (payload ``using``) where they differ
from the module-level task's, so a result's ``task`` is the task as it was enqueued."""


def _using(task: Task) -> dict[str, Any]:
    base = _task_of(task.module_path)
    out: dict[str, Any] = {}
    for name in USING:
        value = getattr(task, name)
        if base is None or value != getattr(base, name):
            out[name] = value.isoformat() if isinstance(value, dt.datetime) else value
    return {k: v for k, v in out.items() if v is not None}


def _as_enqueued(task: Task, using: object) -> Task:
    if not isinstance(using, dict) or not using:
        return task
    options = {k: v for k, v in using.items() if k in USING}
    if "run_after" in options:
        options["run_after"] = _time(options["run_after"])
    return task.using(**options)


def _result(task: Task, alias: str, result_id: str, row: TaskRow) -> TaskResult:
    payload = orjson.loads(row.payload) if row.payload is not None else None
    value = orjson.loads(row.value) if row.value is not None else None
    kept = value if isinstance(value, dict) else {}
    started = row.started_at or _time(kept.get("started_at"))
    if not isinstance(payload, dict):  # a kept result without history: the kept copy
        payload = kept
    task = _as_enqueued(task, payload.get("using"))
    status = {"waiting": TaskResultStatus.READY, "failed": TaskResultStatus.READY,
              "running": TaskResultStatus.RUNNING, "completed": TaskResultStatus.SUCCESSFUL,
              "exhausted": TaskResultStatus.FAILED}[row.state]
    attempts = row.attempts if row.attempts is not None else (1 if row.finished_at else 0)
    worker = kept.get("worker_id") or "skivi"
    result = TaskResult(
        task=task, id=result_id, status=status,
        enqueued_at=row.created_at or _time(kept.get("enqueued_at")),
        started_at=started, finished_at=row.finished_at, last_attempted_at=started,
        args=payload.get("args", []), kwargs=payload.get("kwargs", {}),
        backend=alias, errors=_errors(row), worker_ids=[worker] * attempts)
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", kept.get("return_value"))
    return result


class TaskFailure(Exception):
    """What a failed ``django.tasks`` task raises to the engine: the original exception's
    message with its class path in front (``myapp.errors.Refused: no``), chained to it."""


def _handler(task: Task) -> Any:
    """The Skivi handler of a ``django.tasks`` task: the payload back into the call, the
    signals Django's backends send, and the value the backend's results read."""
    backend = task.get_backend()

    def running(ctx: JobContext) -> tuple[TaskResult, list[Any], dict[str, Any]]:
        payload = ctx.job.payload
        args = list(payload.get("args", [])) if isinstance(payload, dict) else []
        kwargs = dict(payload.get("kwargs", {})) if isinstance(payload, dict) else {}
        now = timezone.now()
        result = TaskResult(
            task=_as_enqueued(task, payload.get("using") if isinstance(payload, dict)
                              else None), id=str(ctx.job.id), status=TaskResultStatus.RUNNING,
            enqueued_at=ctx.job.created_at, started_at=now, finished_at=None,
            last_attempted_at=now, args=args, kwargs=kwargs, backend=backend.alias,
            errors=[], worker_ids=[_worker_id()] * ctx.job.attempts)
        task_started.send(type(backend), task_result=result)
        if task.takes_context:
            args.insert(0, TaskContext(task_result=result))
        return result, args, kwargs

    def failed(result: TaskResult, exc: BaseException) -> TaskFailure:
        kind = type(exc)
        path = f"{kind.__module__}.{kind.__qualname__}"
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        object.__setattr__(result, "finished_at", timezone.now())
        task_finished.send(type(backend), task_result=result)
        return TaskFailure(f"{path}: {exc}")

    def succeeded(result: TaskResult, value: Any) -> dict[str, Any]:
        value = normalize_json(value)
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        object.__setattr__(result, "_return_value", value)
        task_finished.send(type(backend), task_result=result)
        assert result.started_at is not None and result.enqueued_at is not None
        kept = {"return_value": value, "args": result.args, "kwargs": result.kwargs,
                "enqueued_at": result.enqueued_at.isoformat(),
                "started_at": result.started_at.isoformat(), "worker_id": _worker_id()}
        if isinstance(result.task, Task) and result.task is not task:
            kept["using"] = _using(result.task)
        return kept

    if iscoroutinefunction(task.func):
        async def run_async(ctx: JobContext) -> dict[str, Any]:
            result, args, kwargs = running(ctx)
            try:
                value = normalize_json(await task.func(*args, **kwargs))
            except Exception as exc:
                raise failed(result, exc) from exc
            return succeeded(result, value)

        return run_async

    def run(ctx: JobContext) -> dict[str, Any]:
        result, args, kwargs = running(ctx)
        try:
            value = normalize_json(task.func(*args, **kwargs))
        except Exception as exc:
            raise failed(result, exc) from exc
        return succeeded(result, value)

    return run


def _worker_id() -> str:
    """The running process's worker id (each child has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"
