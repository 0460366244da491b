"""job_stats.sql (the engine's queue-depth poll) on rows an ordinary enqueue never writes."""

from __future__ import annotations

import math
from typing import Any

import psycopg

from skivi.db.queries import engine_register, for_schema, job_stats
from tests.support.db import SCHEMA


def test_job_stats_reports_an_infinite_age_when_a_runnable_job_has_run_at_minus_infinity(
        conn: psycopg.Connection[Any]) -> None:
    # now() - '-infinity' is an error in PostgreSQL: one such row failed every poll, and the
    # depth metrics went stale.
    q = for_schema(SCHEMA)
    # The engine's liveness lock is a session lock: released when conn closes.
    engine = engine_register.run(conn, q, hostname="host", pid=1,
                                 version="test", lease_timeout=30.0, processes=1,
                                 concurrency=1)
    conn.execute("insert into skivi.job (task_identifier, run_at) values "
                 "('t', '-infinity'), ('t', 'infinity'), ('t', now())")
    conn.execute("insert into skivi.job (task_identifier, queue_name, run_at) values "
                 "('t', 'q', '-infinity')")
    rows = job_stats.run(conn, q, engine=engine, cap=10000, max_groups=100)
    by_queue = {r.queue_name: r for r in rows}
    assert (by_queue[""].waiting, by_queue[""].scheduled) == (2, 1)
    assert by_queue[""].oldest_runnable_age == math.inf
    assert by_queue["q"].oldest_runnable_age == math.inf
