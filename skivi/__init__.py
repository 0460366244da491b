"""Skivi: a PostgreSQL-backed job queue and multiprocessing worker engine.

Jobs are rows in your own database, in their own schema, so a job can be enqueued in the
same transaction as the change that causes it.

What a task's author uses, besides ``create_system`` and ``add_job``:

- ``JobContext``: the one argument every handler receives, ``handler(ctx)``; ``ctx.job`` (the
  job's id, payload, attempts, ...), ``ctx.logger`` (bound to the job) and ``ctx.add_job`` /
  ``ctx.add_job_async`` (follow-up jobs). For annotations: handlers get it, never build it.
- ``task``: per-task options on a handler, as a wrapper (``task(fn, timeout=30)``) or a
  decorator (``@task(backoff=...)``, or bare ``@task``), in a tasks mapping or a task file's
  ``TASKS``.
- ``get_result`` / ``get_result_async`` / ``wait_for`` / ``wait_for_sync``: what became of a
  job (``JobResult``: its ``ResultState``, value or last error); values are kept for tasks
  with ``store_result=True`` or with ``worker.store_results`` (see ``skivi.results``).
- ``Tasks`` and ``System.task``: typed tasks, functions taking their own arguments and
  enqueued by calling ``defer`` (``send_email.defer(to=...)``); see ``skivi.tasks``.
  ``TypedTask`` is their type, for annotations.
- ``cancel_jobs`` / ``cancel_jobs_async``: cancel jobs, waiting ones at once, running ones
  where they run (``CancelResult``: each job's ``CancelOutcome``); see ``skivi.cancel``.
- ``pause_queue`` / ``resume_queue`` / ``pause_task`` / ``resume_task`` / ``paused``:
  operational pauses, honoured by every engine (``skivi.control``); ``Limit``: a
  concurrency or rate limit by key, on a typed task (``limits=``) or as ``[[limits]]`` in
  the configuration (``skivi.limit``).
- ``Backoff``: a task's retry schedule (``task(fn, backoff=Backoff(factor=0.5,
  max_delay=600))``); the default is Graphile Worker's ``exp(min(attempts, 10))`` seconds.
"""

from skivi.cancel import CancelOutcome, CancelResult, cancel_jobs, cancel_jobs_async
from skivi.client import add_job, add_job_async, add_jobs, add_jobs_async
from skivi.config import Config, load_config
from skivi.control import (
    PARALLEL_QUEUE,
    Pause,
    pause_queue,
    pause_task,
    paused,
    resume_queue,
    resume_task,
)
from skivi.engine.child import JobContext
from skivi.errors import (
    ConfigError,
    DatabaseUnavailable,
    DrainLimitReached,
    EmbeddedDatabaseError,
    EnqueueTimeout,
    JobSpecError,
    MigrationError,
    PayloadError,
    RegistryError,
    ResultTimeout,
    SchemaNotMigrated,
    SchemaTooNew,
    SkiviError,
    TaskFileError,
)
from skivi.events import EventKind
from skivi.job import EnqueueOutcome, Job, JobKeyMode, JobSpec
from skivi.limit import Limit
from skivi.registry import task
from skivi.results import (
    JobResult,
    ResultState,
    get_result,
    get_result_async,
    wait_for,
    wait_for_sync,
)
from skivi.retry import Backoff
from skivi.system import System, create_system
from skivi.tasks import Tasks, TypedTask

__version__ = "0.1.0"

__all__ = [
    "PARALLEL_QUEUE",
    "Backoff",
    "CancelOutcome",
    "CancelResult",
    "Config",
    "ConfigError",
    "DatabaseUnavailable",
    "DrainLimitReached",
    "EmbeddedDatabaseError",
    "EnqueueOutcome",
    "EnqueueTimeout",
    "EventKind",
    "Job",
    "JobContext",
    "JobKeyMode",
    "JobResult",
    "JobSpec",
    "JobSpecError",
    "Limit",
    "MigrationError",
    "Pause",
    "PayloadError",
    "RegistryError",
    "ResultState",
    "ResultTimeout",
    "SchemaNotMigrated",
    "SchemaTooNew",
    "SkiviError",
    "System",
    "TaskFileError",
    "Tasks",
    "TypedTask",
    "__version__",
    "add_job",
    "add_job_async",
    "add_jobs",
    "add_jobs_async",
    "cancel_jobs",
    "cancel_jobs_async",
    "create_system",
    "get_result",
    "get_result_async",
    "load_config",
    "pause_queue",
    "pause_task",
    "paused",
    "resume_queue",
    "resume_task",
    "task",
    "wait_for",
    "wait_for_sync",
]
