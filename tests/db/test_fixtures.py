"""The database fixtures themselves: each test gets its own migrated database, ``conn`` is
rolled back, and ``system`` works on the test's database."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import pq

import skivi
from skivi.db.migrate import pending_migrations
from tests.support.db import SCHEMA, connect


def test_database_is_a_fresh_migrated_clone(database: str) -> None:
    with connect(database) as c:
        assert pending_migrations(c, SCHEMA) == []
        assert c.execute("select count(*) from skivi.job").fetchone() == (0,)
        c.execute("select skivi.add_job('left-behind')")


def test_databases_are_not_shared_between_tests(database: str) -> None:
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.job").fetchone() == (0,)


def test_conn_is_inside_a_transaction(conn: psycopg.Connection[Any]) -> None:
    assert not conn.autocommit
    conn.execute("select skivi.add_job('t')")
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS


def test_system_works_on_the_test_database(system: skivi.System, database: str) -> None:
    system.start()
    job = skivi.add_job(system, "t", {"n": 1})
    with connect(database) as c:
        row = c.execute("select task_identifier, payload from skivi.job where id = %s",
                        [job.id]).fetchone()
    assert row == ("t", {"n": 1})
