"""The Django tests: Django 6 (Python >= 3.12, the ``django`` extra), a real PostgreSQL.

``./run-tests`` runs them in a virtualenv of their own (.venv-django); where Django cannot
be imported (the main run, on 3.11) this directory is not collected at all, and the run
says why. With ``SKIVI_REQUIRE_DJANGO=1`` (CI) a missing Django fails instead.

One database for the session (cloned from the migrated template, so Skivi's schema is
there; Django's migrations applied to it once), Django set up in this process on it
(tests/support/django_settings.py: the example project's settings plus the probe app,
tests/support/django_probe), and every
table emptied before each test. Workers run as real ``manage.py skivi_worker`` processes
(tests/support/django_harness.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.django_harness import EXAMPLE, SETTINGS

REQUIRE = os.environ.get("SKIVI_REQUIRE_DJANGO") == "1"

if importlib.util.find_spec("django") is None:
    if REQUIRE:
        raise pytest.UsageError("SKIVI_REQUIRE_DJANGO=1 but Django is not installed: run "
                                "the Django tests in .venv-django (./run-tests does)")
    collect_ignore_glob = ["*"]
else:
    # Set up now, so test modules may import models; the database is given once the
    # session's is made (django_url), before any connection is opened.
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    import django

    django.setup()

TABLES = ("skivi.job", "skivi.job_result", "skivi.job_history", "skivi.job_queue",
          "skivi.job_traceback", "notes_note", "probe_event")


@pytest.fixture(scope="session")
def django_url(server_dsn: str, admin: psycopg.Connection[Any],
               template_database: str) -> Iterator[str]:
    """The session's database, Django set up on it."""
    from asgiref.local import Local
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    from skivi.contrib.django import project
    from tests.support.db import DATABASE_PREFIX, create_database, drop_database, url_for

    name = f"{DATABASE_PREFIX}0"
    create_database(admin, name, template_database)
    url = url_for(server_dsn, name)
    os.environ["DATABASE_URL"] = url
    given = psycopg.conninfo.conninfo_to_dict(url)
    for entry in settings.DATABASES.values():
        entry.update(NAME=given.get("dbname", ""), USER=given.get("user", ""),
                     PASSWORD=given.get("password", ""), HOST=given.get("host", ""),
                     PORT=str(given.get("port", "")))
    # Forget the handler's view of DATABASES, as Django's own test runner does when it
    # points connections at a test database.
    connections.close_all()
    connections.__dict__.pop("settings", None)
    connections._connections = Local(connections.thread_critical)
    project.reset()
    call_command("migrate", verbosity=0)
    try:
        yield url
    finally:
        project.reset()
        connections.close_all()
        drop_database(admin, name)


@pytest.fixture
def db(django_url: str) -> str:
    """The session's database, emptied (URL)."""
    with psycopg.connect(django_url, autocommit=True) as conn:
        conn.execute(f"truncate {', '.join(TABLES)}")
    return django_url
