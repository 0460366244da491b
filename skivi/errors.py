"""Skivi's exceptions.

The whole tree (the docstring of each class is its default message)::

    SkiviError
    ├── ConfigError            configuration invalid; names every offending key
    ├── PayloadError           a payload refused at enqueue; names the task and the field
    ├── JobSpecError           an enqueue option refused (max_attempts, job_key_mode, ...)
    ├── MigrationError         schema migration could not be applied
    │   ├── SchemaNotMigrated  the schema lacks migrations this version needs
    │   └── SchemaTooNew       the database was migrated by a newer Skivi
    ├── RegistryError          task registry could not be built
    │   ├── TaskFileError      a task file failed to load; names the file and line
    │   └── TaskNotFound       no handler for a task identifier
    ├── EngineError            the worker engine could not start or run
    └── EmbeddedDatabaseError  the embedded PostgreSQL could not be started

Database errors stay psycopg's own (``psycopg.OperationalError`` and friends): callers
already know how to catch them, and wrapping would hide the SQLSTATE.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "EmbeddedDatabaseError",
    "EngineError",
    "JobSpecError",
    "MigrationError",
    "PayloadError",
    "RegistryError",
    "SchemaNotMigrated",
    "SchemaTooNew",
    "SkiviError",
    "TaskFileError",
    "TaskNotFound",
]


class SkiviError(Exception):
    """Skivi error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(SkiviError):
    """Invalid configuration."""

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems: list[str] = list(problems)
        message = "invalid configuration: " + "; ".join(self.problems)
        super().__init__(message)


class PayloadError(SkiviError):
    """Payload refused at enqueue."""

    def __init__(self, task: str, message: str, field: str | None = None) -> None:
        self.task = task
        self.field = field
        where = f" (field {field!r})" if field else ""
        super().__init__(f"payload for task {task!r} refused{where}: {message}")


class JobSpecError(SkiviError):
    """Job option refused at enqueue."""


class MigrationError(SkiviError):
    """Schema migration failed."""


class SchemaNotMigrated(MigrationError):
    """The schema has not been migrated to this version of Skivi: run `skivi migrate`."""


class SchemaTooNew(MigrationError):
    """The database schema was migrated by a newer version of Skivi."""


class RegistryError(SkiviError):
    """Task registry could not be built."""


class TaskFileError(RegistryError):
    """A task file failed to load."""


class TaskNotFound(RegistryError):
    """No handler for this task identifier."""


class EngineError(SkiviError):
    """The worker engine failed."""


class EmbeddedDatabaseError(SkiviError):
    """The embedded PostgreSQL could not be started."""


for _cls in (
    SkiviError, ConfigError, PayloadError, JobSpecError, MigrationError, SchemaTooNew,
    RegistryError, TaskFileError, TaskNotFound, EngineError, EmbeddedDatabaseError,
):
    _cls.__module__ = "skivi"
