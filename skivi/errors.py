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
    │   └── TaskFileError      a task file failed to load; names the file and line
    ├── DatabaseUnavailable    the database could not be reached or refused the login;
    │                          names the host and the cause (also a psycopg.OperationalError)
    ├── ResultTimeout          wait_for gave up before the job finished; names the job and
    │                          its last state (also a TimeoutError)
    ├── DrainLimitReached      skivi.testing.drain ran its max_jobs and jobs were still
    │                          runnable (a task that enqueues itself forever, say)
    ├── EnqueueTimeout         a handler's ctx.add_job, relayed through its engine, was not
    │                          answered in time (also a TimeoutError)
    └── EmbeddedDatabaseError  the embedded PostgreSQL could not be started

Database errors stay psycopg's own (``psycopg.OperationalError`` and friends): callers
already know how to catch them, and wrapping would hide the SQLSTATE. The one exception is
``DatabaseUnavailable``, raised when Skivi's own pool cannot open a connection at all: the
pool only says "timed out" and logs the cause elsewhere, so the error says what libpq said
and where. It subclasses ``psycopg.OperationalError``, so code catching that still does; the
libpq error is its ``__cause__``.

A handler's ``ctx.add_job`` relayed through its engine's parent (``skivi.engine.relay``)
cannot carry psycopg's exception across processes: what the database refused arrives as a
``JobSpecError`` quoting its message and SQLSTATE, a lost or unreachable connection as
``DatabaseUnavailable``, and an enqueue the engine could not run within its bounds as
``EnqueueTimeout``.

What is not an exception: a job whose task has no handler, or whose handler fails, times out
or crashes its process. That is the job's outcome, recorded on the job (``job_history.reason``,
``last_error``), not something the engine raises; and the engine's own failures are its exit
code (see ``skivi.engine``).
"""

from __future__ import annotations

from typing import Any

import psycopg

SHOWN_MAX = 80
"""Most characters of a bad value an error message quotes (see ``shown``)."""

__all__ = [
    "ConfigError",
    "DatabaseUnavailable",
    "DrainLimitReached",
    "EmbeddedDatabaseError",
    "EnqueueTimeout",
    "JobSpecError",
    "MigrationError",
    "PayloadError",
    "RegistryError",
    "ResultTimeout",
    "SchemaNotMigrated",
    "SchemaTooNew",
    "SkiviError",
    "TaskFileError",
]


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters.

    A message quotes the value it refuses so the caller can find it, but a 10 kB queue name
    quoted whole buries the message (and fills logs); past ``limit`` the quote ends with
    ``...`` and says how long the whole value is."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value)} characters)"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        return f"<{type(value).__qualname__} object>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def nul_position(value: object) -> int | None:
    """Index of the first U+0000 in ``value`` if it is a str containing one, else None."""
    if isinstance(value, str):
        at = value.find("\x00")
        return None if at < 0 else at
    return None


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
        self.reason = message
        """What was wrong, without the task and the field."""
        where = f" (field {shown(field)})" if field else ""
        super().__init__(f"payload for task {shown(task)} refused{where}: {message}")


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


class DatabaseUnavailable(SkiviError, psycopg.OperationalError):
    """The database could not be reached, or refused the login."""

    def __init__(self, where: str, cause: str, *, refused: bool = False) -> None:
        self.where = where
        """The server as the connection string names it (host:port, or the socket)."""
        self.cause = cause
        """What libpq said, first line."""
        self.refused = refused
        """True when the server answered and refused this login (authentication, unknown
        role or database): retrying will not help, the configuration must change."""
        what = "refused the connection" if refused else "could not be reached"
        super().__init__(f"the database at {where} {what} "
                         f"(database.connection_string): {cause}")


class ResultTimeout(SkiviError, TimeoutError):
    """A job did not finish in the time given to wait for it."""

    def __init__(self, message: str, last: Any) -> None:
        self.last: Any = last
        """The job's ``skivi.JobResult`` as last seen (waiting, running or failed)."""
        super().__init__(message)


class DrainLimitReached(SkiviError):
    """A test drain ran its limit of jobs and jobs were still runnable."""

    def __init__(self, message: str, runs: list[Any]) -> None:
        self.runs = runs
        """What the drain ran before it stopped (``skivi.testing.JobRun``, in order)."""
        super().__init__(message)


class EnqueueTimeout(SkiviError, TimeoutError):
    """An enqueue relayed through the engine's parent was not answered in time."""


class EmbeddedDatabaseError(SkiviError):
    """The embedded PostgreSQL could not be started."""


for _cls in (
    SkiviError, ConfigError, DatabaseUnavailable, DrainLimitReached, PayloadError,
    JobSpecError,
    MigrationError, SchemaTooNew, RegistryError, TaskFileError, EmbeddedDatabaseError,
    ResultTimeout, EnqueueTimeout,
):
    _cls.__module__ = "skivi"
