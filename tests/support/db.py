"""Databases for the tests: connections opened the way Skivi opens them, a login-only role,
the naming, creating and dropping of the databases the fixtures of tests/conftest.py make (a
template ``skivi_tpl_<pid>`` migrated once per session, clones ``skivi_t_<pid>_<n>``, and the
session's shared ``skivi_shared_<pid>``), and ``rolled_back``, the ``conn`` fixture's
transaction."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from skivi.db import pool as dbpool
from skivi.db.embedded import pid_alive
from tests.support.wait import wait_for

__all__ = ["APPLICATION_NAME", "DATABASE_PREFIX", "SCHEMA", "SHARED_NAME", "TEMPLATE_NAME",
           "MakeDatabase", "connect", "create_database", "drop_database", "drop_leftovers",
           "idle_within", "is_local", "login_role", "redacted", "rolled_back",
           "sqlalchemy_url", "url_for"]

SCHEMA = "skivi"
APPLICATION_NAME = "skivi-test"

PID = os.getpid()
TEMPLATE_NAME = f"skivi_tpl_{PID}"
SHARED_NAME = f"skivi_shared_{PID}"
DATABASE_PREFIX = f"skivi_t_{PID}_"
_OURS = re.compile(r"skivi_(?:tpl|shared|t)_(\d+)(?:_\d+)?")

MakeDatabase = Callable[..., str]
"""The ``make_database`` fixture: ``make_database(template=...) -> url``."""


def url_for(base: str, dbname: str) -> str:
    """``base`` pointed at database ``dbname`` (conninfo-aware: works for socket URIs too)."""
    return make_conninfo(base, dbname=dbname)


def sqlalchemy_url(conninfo: str, driver: str = "psycopg") -> str:
    """The database of ``conninfo`` (a URL or key=value conninfo) as a SQLAlchemy URL,
    ``postgresql+<driver>://user:password@host:port/dbname``."""
    from urllib.parse import quote

    params = conninfo_to_dict(conninfo)
    user = quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    login = f"{user}:{quote(str(password), safe='')}@" if password else (
        f"{user}@" if user else "")
    host = str(params.get("host", ""))
    if host.startswith("/"):  # a socket directory: SQLAlchemy takes it as a query parameter
        return (f"postgresql+{driver}://{login}/{params.get('dbname', '')}"
                f"?host={quote(host, safe='')}&port={params.get('port', 5432)}")
    port = f":{params['port']}" if params.get("port") else ""
    return f"postgresql+{driver}://{login}{host}{port}/{params.get('dbname', '')}"


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection the way Skivi opens them (``skivi.db.pool.connect``), named for tests."""
    return dbpool.connect(url, autocommit=autocommit, application_name=APPLICATION_NAME)


@contextlib.contextmanager
def rolled_back(url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to ``url`` inside a transaction that is rolled back at the end, whatever
    the body did; an ``AssertionError`` then if the body committed it (``conn.commit()``)."""
    c = connect(url, autocommit=False)
    try:
        # Begun now, not at the body's first statement: on an idle connection psycopg's
        # conn.transaction() begins and COMMITS; inside a transaction it is a savepoint.
        # The transaction's id says at the end whether it was committed.
        row = c.execute("select pg_current_xact_id()::text").fetchone()
        assert row is not None
        yield c
        if c.closed:
            return
        c.rollback()
        status = c.execute("select pg_xact_status(%s::xid8)", [row[0]]).fetchone()
        assert status == ("aborted",), (
            f"the test committed its transaction on a rolled-back connection ({status}): "
            "what it wrote stays for the tests after it; use the database fixture")
    finally:
        c.close()


def redacted(dsn: str) -> str:
    """``dsn`` with its password, if any, replaced by ``***``."""
    params = conninfo_to_dict(dsn)
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo("", **params)

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


def create_database(admin: psycopg.Connection[Any], name: str,
                    template: str | None = None) -> None:
    """``CREATE DATABASE name`` (``TEMPLATE template`` when one is given)."""
    if template is None:
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    else:
        admin.execute(sql.SQL("create database {} template {}").format(
            sql.Identifier(name), sql.Identifier(template)))


def drop_database(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def is_local(dsn: str) -> bool:
    """Whether every host of ``dsn`` is this machine (so a session's pid can be checked)."""
    host = conninfo_to_dict(dsn).get("host") or ""
    return all(h in ("", "localhost", "127.0.0.1", "::1") or h.startswith("/")
               for h in str(host).split(","))


def drop_leftovers(admin: psycopg.Connection[Any], local: bool) -> None:
    """Drop databases left by a session of this pid, or (local servers) of a dead one."""
    names = [r[0] for r in admin.execute(
        "select datname from pg_database where datname like 'skivi%'").fetchall()]
    for name in names:
        match = _OURS.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == PID or (local and not pid_alive(pid)):
            drop_database(admin, name)


def idle_within(url: str, timeout: float) -> bool:
    """Whether the server has no client but us within ``timeout`` seconds."""
    with connect(url) as c:
        try:
            wait_for(lambda: c.execute(
                "select count(*) = 0 from pg_stat_activity"
                " where backend_type = 'client backend' and pid <> pg_backend_pid()"
            ).fetchone() == (True,), timeout=timeout, what="other sessions to end")
        except AssertionError:
            return False
    return True
