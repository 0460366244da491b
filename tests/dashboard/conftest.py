"""The dashboard tests' fixtures: per module, a database cloned from the migrated template
and seeded with jobs in every state (tests/support/dashboard.py), the real ``skivi
dashboard`` serving it (and a read-only one), and one headless Chromium for the module."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.dashboard import (
    REQUIRE_BROWSER,
    DashboardProc,
    Seeded,
    browser,
    browser_missing,
    seed,
)
from tests.support.db import DATABASE_PREFIX, create_database, drop_database, url_for

_numbers = itertools.count(90_001)


@pytest.fixture(scope="module")
def dash_url(server_dsn: str, admin: psycopg.Connection[Any],
             template_database: str) -> Iterator[str]:
    """A migrated database of the module's own (its tests change jobs in it)."""
    name = f"{DATABASE_PREFIX}{next(_numbers)}"
    create_database(admin, name, template_database)
    try:
        yield url_for(server_dsn, name)
    finally:
        drop_database(admin, name)


@pytest.fixture(scope="module")
def seeded(dash_url: str) -> Seeded:
    return seed(dash_url)


@pytest.fixture(scope="module")
def dashboard(dash_url: str, seeded: Seeded) -> Iterator[DashboardProc]:
    proc = DashboardProc(dash_url)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def read_only_dashboard(dash_url: str, seeded: Seeded) -> Iterator[DashboardProc]:
    proc = DashboardProc(dash_url, read_only=True)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """One headless Chromium for the module's tests."""
    missing = browser_missing()
    if missing is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"{missing} (SKIVI_REQUIRE_BROWSER=1: the browser tests must run)",
                        pytrace=False)
        pytest.skip(missing)
    with browser() as d:
        yield d
