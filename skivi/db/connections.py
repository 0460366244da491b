"""The caller's connection, whatever holds it: what ``conn=`` of an enqueue accepts.

Skivi writes through psycopg 3. A caller may hand over a psycopg ``Connection`` /
``AsyncConnection``, or what wraps one in an ORM, and the job is then written in the
transaction that object is in: it exists if and only if the caller commits, and nothing
here ever commits, rolls back or closes anything.

SQLAlchemy 2 (the ``sqlalchemy`` extra), with the psycopg driver (``postgresql+psycopg://``):

    ``Session``            its current transaction's connection (``session.connection()``,
                           which begins the session's transaction if none is under way, as
                           any statement would), then the DBAPI connection under it
    ``Connection``         its DBAPI connection; if it is not in a transaction, one is begun
                           the way its next statement would (autobegin), so the caller's
                           ``commit()`` commits the job and a rollback or close drops it
    ``AsyncSession``       ``await session.connection()``, then as ``AsyncConnection``
    ``AsyncConnection``    ``await conn.get_raw_connection()``: its psycopg AsyncConnection

A savepoint (``session.begin_nested()``) is just the connection's current state, so a job
written inside one goes when it is rolled back. A session or connection on another driver
(psycopg2, asyncpg, pg8000, SQLite...) raises ``SkiviError`` naming the driver and the URL
scheme to use instead; a sync one given to an async call, or the reverse, says which call
to make.

Django (``skivi.contrib.django``), with psycopg 3 under it:

    ``django.db.connection``, ``connections[alias]``
                           its psycopg connection (made if it is not yet), in whatever
                           Django's transaction management has it in: inside ``atomic()``
                           the job commits or rolls back with the block (savepoints
                           included); outside, it commits at once (Django's autocommit).
                           A connection whose atomic block must roll back first is refused,
                           as Django refuses its own queries there. Django's connections are
                           sync only: the async calls refuse them, saying to use
                           ``sync_to_async``.

SQLAlchemy and Django stay optional: neither is ever imported here. An object can only be
one of theirs if that framework is already imported (``sys.modules``), and only then are
its classes looked at.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeAlias

import psycopg
from psycopg.types.json import JsonbLoader

from skivi.errors import SkiviError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession as SAAsyncSession
    from sqlalchemy.orm import Session as SASession

__all__ = ["AsyncConnectionLike", "ConnectionLike", "async_connection", "jsonb_as_text",
           "sync_connection"]

ConnectionLike: TypeAlias = "psycopg.Connection[Any] | SASession | SAConnection"
"""What ``conn=`` of a sync enqueue accepts."""

AsyncConnectionLike: TypeAlias = (
    "psycopg.AsyncConnection[Any] | SAAsyncSession | SAAsyncConnection")
"""What ``conn=`` of an async enqueue accepts."""

DRIVER = "psycopg"
"""The SQLAlchemy driver name (``dialect.driver``) of psycopg 3, sync and async."""


def sync_connection(conn: object) -> psycopg.Connection[Any]:
    """The psycopg connection to write in for ``conn`` (see the module docstring).

    Raises:
        SkiviError: ``conn`` is an async connection or session, is on another driver than
            psycopg 3, or is nothing Skivi can write through.
    """
    if isinstance(conn, psycopg.Connection):
        return conn
    if isinstance(conn, psycopg.AsyncConnection):
        raise SkiviError("conn is a psycopg AsyncConnection: use add_job_async / "
                         "add_jobs_async with it")
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession as SAAsyncSession
        from sqlalchemy.orm import Session as SASession

        if isinstance(conn, SAAsyncSession | SAAsyncConnection):
            raise SkiviError(f"conn is a SQLAlchemy {type(conn).__name__}: use "
                             "add_job_async / add_jobs_async with it")
        if isinstance(conn, SASession):
            return _dbapi(conn.connection(), "Session")
        if isinstance(conn, SAConnection):
            if not conn.in_transaction():
                conn.begin()  # what its next statement would do (autobegin)
            return _dbapi(conn, "Connection")
    if "django" in sys.modules:
        from skivi.contrib.django.dbapi import django_wrapper, psycopg_connection

        wrapper = django_wrapper(conn)
        if wrapper is not None:
            return psycopg_connection(wrapper)
    raise _unsupported(conn)


async def async_connection(conn: object) -> psycopg.AsyncConnection[Any]:
    """The async twin of ``sync_connection``."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn
    if isinstance(conn, psycopg.Connection):
        raise SkiviError("conn is a psycopg Connection (sync): use add_job / add_jobs "
                         "with it, or give an AsyncConnection")
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
        from sqlalchemy.ext.asyncio import AsyncSession as SAAsyncSession
        from sqlalchemy.orm import Session as SASession

        if isinstance(conn, SASession | SAConnection):
            raise SkiviError(f"conn is a SQLAlchemy {type(conn).__name__} (sync): use "
                             "add_job / add_jobs with it, or give an AsyncSession or "
                             "AsyncConnection")
        what = type(conn).__name__
        if isinstance(conn, SAAsyncSession):
            conn = await conn.connection()
        if isinstance(conn, SAAsyncConnection):
            _check_driver(conn.dialect, what)
            if not conn.in_transaction():
                await conn.begin()  # what its next statement would do (autobegin)
            raw = (await conn.get_raw_connection()).driver_connection
            if not isinstance(raw, psycopg.AsyncConnection):
                raise _wrong_driver(what, type(raw).__module__)
            return raw
    if "django" in sys.modules:
        from skivi.contrib.django.dbapi import django_wrapper

        if django_wrapper(conn) is not None:
            raise SkiviError("conn is a Django database connection, which is sync only: "
                             "use add_job / add_jobs with it (from async code through "
                             "asgiref's sync_to_async), or the system of "
                             "skivi.contrib.django without conn=")
    raise _unsupported(conn)


def jsonb_as_text(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` reads jsonb as its JSON text rather than decoded: Django's
    connections do (its JSONField decodes by itself), so what Skivi reads back from jsonb
    on one is decoded by Skivi."""
    info = conn.adapters.types.get("jsonb")
    if info is None:
        return False
    loader = conn.adapters.get_loader(info.oid, psycopg.pq.Format.TEXT)
    return loader is not None and not issubclass(loader, JsonbLoader)


def _dbapi(conn: SAConnection, what: str) -> psycopg.Connection[Any]:
    _check_driver(conn.dialect, what)
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise _wrong_driver(what, type(raw).__module__)
    return raw


def _check_driver(dialect: Any, what: str) -> None:
    if dialect.name != "postgresql" or dialect.driver != DRIVER:
        raise _wrong_driver(what, f"{dialect.name}+{dialect.driver}")


def _wrong_driver(what: str, driver: str) -> SkiviError:
    return SkiviError(
        f"conn is a SQLAlchemy {what} on the driver {driver!r}: Skivi writes jobs through "
        "psycopg 3, so the engine must be created with a postgresql+psycopg:// URL "
        "(pip install 'psycopg[binary]'; psycopg2 and asyncpg cannot be used)")


def _unsupported(conn: object) -> SkiviError:
    kind = type(conn)
    return SkiviError(
        f"conn is a {kind.__module__}.{kind.__qualname__}: give a psycopg (3) Connection, "
        "a SQLAlchemy Session / Connection (AsyncConnection / AsyncSession for the async "
        "calls) on the postgresql+psycopg driver, or a Django connection "
        "(django.db.connection, connections[alias])")
