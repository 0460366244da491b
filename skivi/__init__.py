"""Skivi: a PostgreSQL-backed job queue and multiprocessing worker engine.

Jobs are rows in your own database, in their own schema, so a job can be enqueued in the
same transaction as the change that causes it.
"""

from skivi.client import add_job, add_job_async, add_jobs, add_jobs_async
from skivi.config import Config, load_config
from skivi.errors import (
    ConfigError,
    DatabaseUnavailable,
    EmbeddedDatabaseError,
    JobSpecError,
    MigrationError,
    PayloadError,
    RegistryError,
    SchemaTooNew,
    SkiviError,
    TaskFileError,
)
from skivi.events import EventKind
from skivi.job import EnqueueOutcome, Job, JobKeyMode, JobSpec
from skivi.system import System, create_system

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseUnavailable",
    "EmbeddedDatabaseError",
    "EnqueueOutcome",
    "EventKind",
    "Job",
    "JobKeyMode",
    "JobSpec",
    "JobSpecError",
    "MigrationError",
    "PayloadError",
    "RegistryError",
    "SchemaTooNew",
    "SkiviError",
    "System",
    "TaskFileError",
    "__version__",
    "add_job",
    "add_job_async",
    "add_jobs",
    "add_jobs_async",
    "create_system",
    "load_config",
]
