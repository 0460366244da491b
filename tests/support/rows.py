"""One-shot readers of rows, from a database URL (a connection of their own, opened and
closed: for tests whose engines write in other processes) or from a test's connection (the
``conn`` fixture: its own uncommitted rows)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg

from tests.support.db import connect

__all__ = ["Database", "fetch", "live_jobs", "reading"]

Database = str | psycopg.Connection[Any]
"""A database URL, or a connection to use as it is."""


@contextlib.contextmanager
def reading(db: Database) -> Iterator[psycopg.Connection[Any]]:
    """``db`` itself if it is a connection (left open), else a new autocommit connection to
    the URL, closed after."""
    if isinstance(db, psycopg.Connection):
        yield db
        return
    with connect(db) as c:
        yield c


def fetch(db: Database, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with reading(db) as c:
        return c.execute(query, args or None).fetchall()  # type: ignore[arg-type]


def live_jobs(db: Database) -> int:
    return int(fetch(db, "select count(*) from skivi.job_live")[0][0])
