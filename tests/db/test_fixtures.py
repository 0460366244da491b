"""The database fixtures themselves: each test gets its own migrated database; ``conn`` is a
transaction on the session's shared database, rolled back at the end, and a test that
commits it fails; ``system`` works on the test's database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import pq

import skivi
from skivi.db.migrate import pending_migrations
from tests.support.db import SCHEMA, connect, rolled_back


def test_database_is_a_fresh_migrated_clone(database: str) -> None:
    with connect(database) as c:
        assert pending_migrations(c, SCHEMA) == []
        assert c.execute("select count(*) from skivi.job_live").fetchone() == (0,)
        c.execute("select skivi.add_job('left-behind')")


def test_databases_are_not_shared_between_tests(database: str) -> None:
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.job_live").fetchone() == (0,)


def test_conn_is_inside_a_transaction(conn: psycopg.Connection[Any]) -> None:
    assert not conn.autocommit
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
    with conn.transaction():  # a savepoint, not a commit: the transaction is already open
        conn.execute("select skivi.add_job('left-behind')")
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS


def test_conn_sees_a_migrated_database_without_rows_when_an_earlier_test_wrote(
        conn: psycopg.Connection[Any]) -> None:
    assert pending_migrations(conn, SCHEMA) == []
    assert conn.execute("select count(*) from skivi.job_live").fetchone() == (0,)


def test_rolled_back_fails_when_the_body_commits(database: str) -> None:
    with pytest.raises(AssertionError, match="committed"), rolled_back(database) as c:
        c.execute("select skivi.add_job('committed')")
        c.commit()
    with connect(database) as c:
        assert c.execute("select count(*) from skivi.job_live").fetchone() == (1,)


def test_system_works_on_the_test_database(system: skivi.System, database: str) -> None:
    system.start()
    job = skivi.add_job(system, "t", {"n": 1})
    with connect(database) as c:
        row = c.execute("select task_identifier, payload from skivi.job_live where id = %s",
                        [job.id]).fetchone()
    assert row == ("t", {"n": 1})
