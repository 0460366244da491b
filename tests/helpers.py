"""Helpers shared by the tests.

Tests never sleep for a fixed time: they ``wait_for`` a condition, with a deadline, and a
failure says what was awaited (Oban's ``with_backoff``, Graphile's ``sleepUntil``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from skivi.db import pool as dbpool

__all__ = ["APPLICATION_NAME", "SCHEMA", "MakeDatabase", "connect", "login_role", "url_for",
           "wait_for"]

SCHEMA = "skivi"
APPLICATION_NAME = "skivi-test"

MakeDatabase = Callable[..., str]
"""The ``make_database`` fixture: ``make_database(template=...) -> url``."""

T = TypeVar("T")


def url_for(base: str, dbname: str) -> str:
    """``base`` pointed at database ``dbname`` (conninfo-aware: works for socket URIs too)."""
    return make_conninfo(base, dbname=dbname)


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection the way Skivi opens them (``skivi.db.pool.connect``), named for tests."""
    return dbpool.connect(url, autocommit=autocommit, application_name=APPLICATION_NAME)

_roles = itertools.count(1)


@contextlib.contextmanager
def login_role(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A role that may log in and nothing else (no CREATE on any database), named after this
    session's pid; dropped at the end (its databases must be dropped or unused by then)."""
    name = f"skivi_nocreate_{os.getpid()}_{next(_roles)}"
    admin.execute(sql.SQL("create role {} login").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


FIRST_DELAY = 0.005
MAX_DELAY = 0.1


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, what: str = "the condition") -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Polls with short sleeps (5 ms, growing to 100 ms). After ``timeout`` seconds, fails
    with an ``AssertionError`` naming ``what`` was awaited and the last value seen.
    """
    deadline = time.monotonic() + timeout
    delay = FIRST_DELAY
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last value: {value!r})")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, MAX_DELAY)
