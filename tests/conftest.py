"""A real PostgreSQL for every test that needs one, made cheap (STYLE.md §8.5).

Which server: ``--test-dsn``, else ``SKIVI_TEST_DSN``, else ``SKIVI_DATABASE_URL``, else
``DATABASE_URL``; with none set, the embedded PostgreSQL in ``<repo>/.pgdata/test`` is started
once per session (and stopped at the end if this session started it). The header of the run
says which. Database tests are never skipped for want of a server: they fail loudly.

How tests get a database:

- a session fixture creates ``skivi_tpl_<pid>`` (the pid keeps two sessions on one server
  apart), migrates it, closes every connection to it, and drops it at the end;
- ``database`` clones it per test (``CREATE DATABASE ... TEMPLATE``) and yields the clone's
  URL: for anything needing commits, LISTEN/NOTIFY, several connections or processes;
- ``conn`` is a connection to one more clone, ``skivi_shared_<pid>``, made once and shared
  by the whole session, in a transaction rolled back at the end (and failing the test if it
  committed): for tests with a single connection that commit nothing, listen to nothing
  and hold no lock another session must see. No clone per test: the cheapest database;
- ``system`` is ``skivi.create_system`` on a clone, stopped at the end; ``conn_system``
  one for ``conn`` tests, whose own connections go nowhere;
- ``make_database`` creates more (an empty one with ``template=None``).

The ``SKIVI_*`` and ``DATABASE_URL`` variables of the calling shell are removed for the session
(after reading the DSN), because Skivi's configuration lets them override what a test asks for.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import skivi
from skivi.db.embedded import embedded_running, start_embedded, stop_embedded
from skivi.db.migrate import migrate
from tests.support.db import (
    DATABASE_PREFIX,
    SCHEMA,
    SHARED_NAME,
    TEMPLATE_NAME,
    MakeDatabase,
    connect,
    create_database,
    drop_database,
    drop_leftovers,
    idle_within,
    is_local,
    redacted,
    rolled_back,
    url_for,
)

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO / ".pgdata" / "test"
EMBEDDED_IDLE_WAIT = 3.0
NOWHERE = "postgresql://skivi-test@127.0.0.1:1/nowhere"  # port 1: refused at once
DSN_ENV_VARS = ("SKIVI_TEST_DSN", "SKIVI_DATABASE_URL", "DATABASE_URL")
# Variables the test-suite itself reads; every other SKIVI_* is hidden from the tests.
TEST_ENV_VARS = ("SKIVI_CHAOS_SOAK", "SKIVI_CHROMEDRIVER", "SKIVI_CHROMIUM",
                 "SKIVI_FLEET_LONG", "SKIVI_REQUIRE_BROWSER", "SKIVI_REQUIRE_DJANGO",
                 "SKIVI_REQUIRE_PGBOUNCER",
                 "SKIVI_REQUIRE_PROMETHEUS", "SKIVI_TEST_DSN", "SKIVI_UPDATE_SCREENSHOTS",
                 "SKIVI_UPDATE_SNAPSHOT")

_counter = itertools.count(1)
_dsn_source: str | None = None
_dsn: str | None = None
_hidden_env: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--test-dsn", default=None,
        help="PostgreSQL server for the database tests (a superuser's URL; default: "
             "SKIVI_TEST_DSN, SKIVI_DATABASE_URL, DATABASE_URL, else an embedded server)")


def pytest_configure(config: pytest.Config) -> None:
    global _dsn, _dsn_source
    option = config.getoption("--test-dsn")
    if option:
        _dsn, _dsn_source = option, "--test-dsn"
    else:
        name = next((n for n in DSN_ENV_VARS if os.environ.get(n)), None)
        if name is not None:
            _dsn, _dsn_source = os.environ[name], name
    for name in sorted(os.environ):
        if (name.startswith("SKIVI_") and name not in TEST_ENV_VARS) or name == "DATABASE_URL":
            _hidden_env.append(name)
            del os.environ[name]


def pytest_report_header(config: pytest.Config) -> list[str]:
    if _dsn is not None:
        lines = [f"database: {redacted(_dsn)} (from {_dsn_source})"]
    else:
        rel = EMBEDDED_DIR.relative_to(REPO)
        lines = [(f"database: embedded PostgreSQL in {rel} (none of --test-dsn, "
                  f"{', '.join(DSN_ENV_VARS)} is set; started on first use)")]
    if _hidden_env:
        lines.append(f"hidden from the tests: {', '.join(_hidden_env)}")
    return lines


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """URL of the PostgreSQL server (a maintenance database, as a superuser)."""
    if _dsn is not None:
        yield _dsn
        return
    was_running = embedded_running(EMBEDDED_DIR)
    url = start_embedded(EMBEDDED_DIR)
    yield url
    # Stop the server if this session started it and nobody else uses it (another session may
    # have joined). Backends of connections closed a moment ago may still be on their way out.
    if not was_running and idle_within(url, EMBEDDED_IDLE_WAIT):
        stop_embedded(EMBEDDED_DIR)


@pytest.fixture(scope="session")
def admin(server_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the maintenance database, for CREATE/DROP DATABASE."""
    try:
        conn = connect(server_dsn)
    except psycopg.OperationalError as exc:
        pytest.fail(f"cannot connect to the test database server {redacted(server_dsn)}: {exc}",
                    pytrace=False)
    with conn:
        yield conn


@pytest.fixture(scope="session")
def template_database(server_dsn: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """Name of a database migrated to the current schema, to clone for each test."""
    drop_leftovers(admin, is_local(server_dsn))
    create_database(admin, TEMPLATE_NAME)
    try:
        with connect(url_for(server_dsn, TEMPLATE_NAME)) as conn:
            migrate(conn, SCHEMA)
        # CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template.
        admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid()", [TEMPLATE_NAME])
        yield TEMPLATE_NAME
    finally:
        drop_database(admin, TEMPLATE_NAME)


@pytest.fixture
def make_database(server_dsn: str, admin: psycopg.Connection[Any],
                  template_database: str) -> Iterator[MakeDatabase]:
    """``make_database(template=<migrated template>)`` creates a database and returns its URL;
    ``template=None`` makes an empty one. Every database made is dropped after the test."""
    made: list[str] = []

    def make(template: str | None = template_database) -> str:
        name = f"{DATABASE_PREFIX}{next(_counter)}"
        create_database(admin, name, template or "template0")
        made.append(name)
        return url_for(server_dsn, name)

    yield make
    for name in made:
        drop_database(admin, name)


@pytest.fixture
def database(make_database: MakeDatabase) -> str:
    """URL of a fresh database, cloned from the migrated template (schema ``skivi``)."""
    return make_database()


@pytest.fixture(scope="session")
def shared_database(server_dsn: str, admin: psycopg.Connection[Any],
                    template_database: str) -> Iterator[str]:
    """URL of a migrated database shared by the session's ``conn`` tests, which never commit
    to it: it stays as migrated, with no row in it."""
    create_database(admin, SHARED_NAME, template_database)
    try:
        yield url_for(server_dsn, SHARED_NAME)
    finally:
        drop_database(admin, SHARED_NAME)


@pytest.fixture
def conn(shared_database: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the session's shared migrated database, in a transaction rolled back
    at the end; the test fails if it committed it."""
    with rolled_back(shared_database) as c:
        yield c


@pytest.fixture(scope="session")
def conn_system() -> Iterator[skivi.System]:
    """A Skivi system for ``conn`` tests, which pass ``conn=conn`` to every call. Its own
    connections would go to a port nothing listens on: a call without ``conn`` fails at
    once instead of committing to the shared database."""
    s = skivi.create_system({"database": {"connection_string": NOWHERE, "connect_timeout": 1}})
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def system(database: str) -> Iterator[skivi.System]:
    """A Skivi system on a fresh migrated database; stopped at the end."""
    s = skivi.create_system({"database": {"connection_string": database}})
    try:
        yield s
    finally:
        s.stop()
